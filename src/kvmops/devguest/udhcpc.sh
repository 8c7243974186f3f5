#!/bin/sh
# busybox udhcpc's event script in the kvmops tiny guest: applies an IPv4 lease to
# $interface (only IPv4 addresses are touched: the SLAAC IPv6 ones stay).
case "$1" in
    deconfig)
        ip -4 addr flush dev "$interface" scope global 2>/dev/null
        ip link set "$interface" up
        ;;
    bound|renew)
        ip -4 addr flush dev "$interface" scope global 2>/dev/null
        ip addr add "$ip/${mask:-24}" ${broadcast:+broadcast "$broadcast"} dev "$interface"
        if [ -n "$router" ]; then
            ip route del default dev "$interface" 2>/dev/null
            for r in $router; do
                ip route add default via "$r" dev "$interface" && break
            done
        fi
        if [ -n "$dns" ]; then
            # this lease's servers; IPv6 ones (from DHCPv6, dhcp6.sh) stay
            {
                for d in $dns; do echo "nameserver $d"; done
                grep '^nameserver .*:' /etc/resolv.conf 2>/dev/null
            } > /etc/resolv.conf.new
            mv /etc/resolv.conf.new /etc/resolv.conf
        fi
        echo "kvmops-guest: dhcp $interface $ip/${mask:-24}" > /dev/console 2>/dev/null
        ;;
esac
exit 0
