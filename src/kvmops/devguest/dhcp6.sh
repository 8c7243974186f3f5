#!/bin/sh
# dhcpcd's event script (dhcpcd -c) in the kvmops tiny guest. dhcpcd runs here for
# DHCPv6 only (the kernel keeps doing router advertisements and SLAAC, busybox udhcpc
# IPv4), in two steps that /init's dhcp6_start runs for each NIC:
# 1. 'dhcpcd --test' only listens for a router advertisement: when one comes (reason
#    TEST, or ROUTERADVERT, with nd1_from set) this script writes the RA's flags (M:
#    managed, O: other configuration) to $KVMOPS_RUN/ra6.$interface and stops that
#    probe at once (left alone, it would go on to lease an address it never applies);
# 2. 'dhcpcd --ia_na' (M: lease an address) or '--inform6' (O only: DNS and the like)
#    configures the NIC; on a lease this script applies the name servers and prints a
#    marker on the console. dhcpcd adds and removes the leased address itself.
# (The KVMOPS_* overrides are for the unit test that runs this script on the host.)
run=${KVMOPS_RUN:-/run}
resolv=${KVMOPS_RESOLV:-/etc/resolv.conf}
console=${KVMOPS_CONSOLE:-/dev/console}

say() { echo "kvmops-guest: $*" >> "$console" 2>/dev/null; }

case "$reason" in
    TEST|ROUTERADVERT)
        [ -n "$nd1_from" ] || exit 0   # not a router advertisement
        # nd1_flags, nd2_flags, ...: one per router heard; the union of their letters
        flags=$(env | sed -n 's/^nd[0-9][0-9]*_flags=//p' | tr -d '\n')
        echo "$flags" > "$run/ra6.$interface.tmp" && mv "$run/ra6.$interface.tmp" "$run/ra6.$interface"
        [ -n "$pid" ] && kill "$pid" 2>/dev/null
        ;;
    BOUND6|REBOOT6|RENEW6|REBIND6|INFORM6)
        for s in $new_dhcp6_name_servers; do
            grep -qx "nameserver $s" "$resolv" 2>/dev/null || echo "nameserver $s" >> "$resolv"
        done
        say "dhcp6 $interface ${new_dhcp6_ia_na1_ia_addr1:-information} ($reason)"
        ;;
esac
exit 0
