#!/bin/sh
# /usr/sbin/chpasswd of the kvmops tiny guest (busybox-static lacks the applet).
# Reads "user:password" lines on stdin, like shadow's chpasswd; with -e the
# password is already crypt(3)-hashed. qemu-ga's guest-set-user-password uses it.
encrypted=0
for arg in "$@"; do
    case "$arg" in
        -e|--encrypted) encrypted=1 ;;
        *) echo "chpasswd: unsupported option $arg" >&2; exit 2 ;;
    esac
done
status=0
while IFS= read -r line || [ -n "$line" ]; do
    [ -n "$line" ] || continue
    user=${line%%:*}
    pass=${line#*:}
    if [ "$encrypted" = 1 ]; then
        hash=$pass
    else
        hash=$(printf '%s' "$pass" | mkpasswd -m sha512 -P 0) || { status=1; continue; }
    fi
    if ! KV_USER=$user KV_HASH=$hash awk -F: 'BEGIN { OFS = ":" }
        $1 == ENVIRON["KV_USER"] { $2 = ENVIRON["KV_HASH"]; found = 1 }
        { print }
        END { exit !found }' /etc/shadow > /etc/shadow.new; then
        rm -f /etc/shadow.new
        echo "chpasswd: user '$user' does not exist" >&2
        status=1
        continue
    fi
    chmod 0640 /etc/shadow.new
    mv /etc/shadow.new /etc/shadow
done
exit $status
