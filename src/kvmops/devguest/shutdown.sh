#!/bin/sh
# /sbin/shutdown of the kvmops tiny guest. qemu-ga's guest-shutdown runs
# "shutdown -P|-H|-r +0 <message>"; there is no init system to ask, so power
# off (or halt / reboot) the kernel directly after syncing. Done in the
# background so this script, and the agent waiting for it, exit cleanly first.
action=poweroff
for arg in "$@"; do
    case "$arg" in
        -r) action=reboot ;;
        -H) action=halt ;;
        -h|-P) action=poweroff ;;
    esac
done
echo "kvmops-guest: shutdown ($action)" > /dev/console 2>/dev/null
sync
( sleep 0.3; sync; busybox "$action" -f ) > /dev/null 2>&1 < /dev/null &
exit 0
