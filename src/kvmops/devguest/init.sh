#!/bin/sh
# /init of the kvmops tiny test guest (PID 1). Rendered by kvmops.devguest.build;
# the double-at placeholders are filled in at build time.
#
# Rules: never write to, format or mount /dev/vda (tests own that disk raw);
# print progress markers on the console; end by exec'ing qemu-ga.
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
export HOME=/root
umask 022

say() { echo "kvmops-guest: $*" > /dev/console 2>/dev/null || echo "kvmops-guest: $*"; }

mkdir -p /proc /sys /dev /run /tmp /data
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm /dev/virtio-ports
mount -t devpts devpts /dev/pts
mount -t tmpfs -o mode=1777 tmpfs /dev/shm
mount -t tmpfs -o mode=0755 tmpfs /run
chmod 1777 /tmp
hostname -F /etc/hostname
say "init started (kernel $(uname -r))"

MODDIR=@@MODDIR@@
for m in @@MODULES@@; do
    insmod "$MODDIR/$m.ko" || say "insmod $m failed"
done
say "modules loaded"

# Networking: every NIC up; IPv4 from DHCP (busybox udhcpc, in the background so the
# boot does not wait for a server) and IPv6 from router advertisements (SLAAC: the
# kernel does it once the link is up and accept_ra is on), plus DHCPv6 when the router
# advertisement asks for it (dhcp6_start). NICs hot-plugged later are picked up by a
# slow watcher loop (the guest has no udev).
ip link set lo up 2>/dev/null
# DHCPv6 by dhcpcd, in the background, bounded: first a probe that only listens for a
# router advertisement and notes its M/O flags (dhcp6.sh; nothing configured, the
# kernel's SLAAC untouched); then, for M (managed), a lease of an address, for O only
# (other configuration), an information request; without either flag (SLAAC only, or
# no IPv6 router at all) nothing more runs. Each step gives up after its timeout; a
# leased address is renewed by the dhcpcd left running. dhcpcd's messages go to
# /run/dhcp6.NIC.log.
dhcp6_start() {
    command -v dhcpcd >/dev/null 2>&1 || return 0
    rm -f "/run/ra6.$1"
    sleep 2   # let qemu-ga start first: dhcpcd's start costs CPU under TCG
    # One probe at a time: 'dhcpcd --test' runs share a pid file (a second one exits at
    # once). Bounded: a probe ends within its timeout, and the wait gives up after 90 s.
    locked=0 i=0
    while [ "$i" -lt 90 ]; do
        if mkdir /run/dhcp6-probe.lock 2>/dev/null; then locked=1; break; fi
        i=$((i + 1))
        sleep 1
    done
    dhcpcd -f /etc/dhcpcd.conf -c @@DHCP6_HOOK@@ -6 --test -t @@RA_TIMEOUT@@ "$1"
    [ "$locked" = 1 ] && rmdir /run/dhcp6-probe.lock
    case "$(cat "/run/ra6.$1" 2>/dev/null)" in
        *M*) mode=--ia_na ;;
        *O*) mode=--inform6 ;;
        *) return 0 ;;
    esac
    say "dhcp6 $1: router advertisement flags $(cat "/run/ra6.$1"), dhcpcd $mode"
    dhcpcd -f /etc/dhcpcd.conf -c @@DHCP6_HOOK@@ -6 --noipv6rs $mode -t @@DHCP6_TIMEOUT@@ "$1"
}
net_up() {
    # marked by name and ifindex: a NIC unplugged and plugged again is new
    mark="/run/net-$1.$(cat "/sys/class/net/$1/ifindex" 2>/dev/null)"
    [ -e "$mark" ] && return 0
    : > "$mark"
    [ -r "/run/udhcpc.$1.pid" ] && kill "$(cat "/run/udhcpc.$1.pid")" 2>/dev/null
    echo 1 > "/proc/sys/net/ipv6/conf/$1/accept_ra" 2>/dev/null
    echo 1 > "/proc/sys/net/ipv6/conf/$1/autoconf" 2>/dev/null
    ip link set "$1" up || say "ip link set $1 up failed"
    udhcpc -f -i "$1" -s /usr/share/udhcpc/default.script -t 4 -T 2 -A 3 \
        -p "/run/udhcpc.$1.pid" >/dev/null 2>&1 </dev/null &
    dhcp6_start "$1" >"/run/dhcp6.$1.log" 2>&1 </dev/null &
    say "network $1 up ($(cat "/sys/class/net/$1/address" 2>/dev/null))"
}
net_scan() {
    for n in /sys/class/net/*; do
        i=${n##*/}
        case "$i" in lo|'*') continue ;; esac
        [ -e "$n/device" ] || continue   # physical (virtual) NICs only, not VLANs/bridges
        net_up "$i"
    done
}
net_scan
( while :; do sleep 2; net_scan; done ) </dev/null >/dev/null 2>&1 &

AGENT_PORT=/dev/virtio-ports/@@AGENT_PORT@@

# udev would make /dev/virtio-ports/<name>; do it by hand from sysfs.
link_ports() {
    for p in /sys/class/virtio-ports/*; do
        [ -r "$p/name" ] || continue
        n=$(cat "$p/name")
        [ -n "$n" ] || continue
        [ -e "/dev/${p##*/}" ] || continue
        ln -sfn "../${p##*/}" "/dev/virtio-ports/$n"
    done
}

# The ext4 label of a whole disk, read from the superblock (magic 0xEF53 at
# byte 1080, 16-byte volume name at 1144); empty if it is not ext2/3/4.
ext_label() {
    magic=$(dd if="$1" bs=1 skip=1080 count=2 2>/dev/null | od -An -tx1 | tr -d ' \n')
    [ "$magic" = "53ef" ] || return 0
    dd if="$1" bs=1 skip=1144 count=16 2>/dev/null | tr -d '\000'
}

mount_data() {
    for s in /sys/block/vd?; do
        [ -e "$s" ] || continue
        d=${s##*/}
        [ "$d" = vda ] && continue   # never touch vda
        [ -b "/dev/$d" ] || continue
        [ "$(ext_label "/dev/$d")" = "@@DATA_LABEL@@" ] || continue
        opts=rw
        [ "$(cat "$s/ro" 2>/dev/null)" = 1 ] && opts=ro
        if mount -t ext4 -o "$opts" "/dev/$d" /data; then
            say "mounted /dev/$d ($opts) on /data"
        else
            say "mounting /dev/$d on /data failed"
        fi
        return 0
    done
    say "no data disk labelled @@DATA_LABEL@@"
}
mount_data

# The tools disk (tools.ext4: fio, sysbench; attached read-only, shared by VMs): mounted
# read-only on @@TOOLS_MOUNT@@ and each of its bin/* linked into /usr/bin, on qemu-ga's
# PATH (the wrappers run the disk's own loader and libraries). Found by its label.
mount_tools() {
    for s in /sys/block/vd?; do
        [ -e "$s" ] || continue
        d=${s##*/}
        [ "$d" = vda ] && continue   # never touch vda
        [ -b "/dev/$d" ] || continue
        [ "$(ext_label "/dev/$d")" = "@@TOOLS_LABEL@@" ] || continue
        mkdir -p @@TOOLS_MOUNT@@
        if ! mount -t ext4 -o ro "/dev/$d" @@TOOLS_MOUNT@@; then
            say "mounting /dev/$d on @@TOOLS_MOUNT@@ failed"
            return 0
        fi
        for t in @@TOOLS_MOUNT@@/bin/*; do
            [ -e "$t" ] && [ ! -e "/usr/bin/${t##*/}" ] && ln -s "$t" "/usr/bin/${t##*/}"
        done
        say "mounted /dev/$d (ro) on @@TOOLS_MOUNT@@: $(cd @@TOOLS_MOUNT@@/bin && echo *)"
        return 0
    done
}
mount_tools

i=0
while :; do
    link_ports
    [ -e "$AGENT_PORT" ] && break
    i=$((i + 1))
    # ~10 s, then keep polling slowly: the channel may be hot-plugged later.
    if [ "$i" -eq 100 ]; then
        say "waiting for $AGENT_PORT (no virtio-serial port of that name yet)"
    fi
    if [ "$i" -lt 100 ]; then sleep 0.1; else sleep 1; fi
done

# A root shell on the serial console (ttyS0), started again whenever it exits: what
# 'kvmops vm console' and the web serial console talk to.
serial_shell() {
    while :; do
        # setsid -c makes ttyS0 the controlling terminal (not cttyhack: with a second
        # console= it would pick that one)
        setsid -c env PS1='kvmops-tiny:$PWD# ' /bin/sh -i </dev/ttyS0 >/dev/ttyS0 2>&1
        sleep 1
    done
}
[ -c /dev/ttyS0 ] && serial_shell &

say "starting qemu-ga"
exec qemu-ga -m virtio-serial -p "$AGENT_PORT" -t /run -f /run/qemu-ga.pid
