"""A NAT network end to end, inside test namespaces (the ``nshost`` fixture): the
namespaced libvirtd's host namespace has an ``uplink`` veth (192.168.234.2) to an
upstream namespace (192.168.234.1, its default route). ``kvmops net create --mode nat``
through the namespaced libvirtd's URI makes 192.168.235.0/24 + fd00:235::/64; a tiny
guest created with ``vm create --nic network=NAME`` through that URI gets an IPv4 lease
in the DHCP range and a SLAAC address in the prefix (``guest ip --json``), and pings the
upstream address through the NAT: an nftables counter in the upstream namespace sees the
echo requests arrive from the NAT's outside address and none from the guest's subnet.
IPv6 is routed, not masqueraded: the guest's pings to fd00:234::1 arrive from its prefix.

Traffic never leaves the test namespaces: the network's bridge, dnsmasq, the firewall
rules, the guest's tap and the upstream all live in them (checked: none of it is in the
machine's own namespace or known to its libvirtd). Only 192.168.234/235 and
fd00:234/235 are used; everything is removed even when a test fails."""

from __future__ import annotations

import contextlib
import ipaddress
import json
import re
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from kvmops.devguest.build import GuestImage
from kvmops.vm.lifecycle import new_mac
from tests.conftest import SESSION_PREFIX, run_cli
from tests.integration.conftest import remove_vm
from tests.integration.nshost import NsHost

SUBNET4 = ipaddress.ip_network("192.168.235.0/24")
DHCP_FIRST, DHCP_LAST = (ipaddress.IPv4Address("192.168.235.10"),
                         ipaddress.IPv4Address("192.168.235.50"))
PREFIX6 = ipaddress.ip_network("fd00:235::/64")
BOOT_TIMEOUT = 240  # TCG boots slower under load; a deadline, never an assertion on time
ADDRESS_TIMEOUT = 90.0
PINGS = 3


@dataclass
class NatLab:
    nshost: NsHost
    network: str
    vm: str
    mac: str


def _json(nshost: NsHost, *args: str) -> Any:
    result = nshost.run_cli(*args)
    assert result.code == 0, (args, result.stderr)
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def nat_lab(nshost: NsHost, tiny_guest: GuestImage, images_dir: Path) -> Iterator[NatLab]:
    """The NAT network and one booted tiny guest on it, both on the namespaced libvirtd;
    removed at the end whatever happened."""
    network = f"{SESSION_PREFIX}nat"
    vm = f"{SESSION_PREFIX}natvm"
    mac = new_mac(set())
    try:
        created = nshost.run_cli("net", "create", network, "--mode", "nat",
                                 "--ipv4", "192.168.235.1/24",
                                 "--dhcp", f"{DHCP_FIRST}-{DHCP_LAST}",
                                 "--ipv6", "fd00:235::1/64")
        assert created.code == 0, created.stderr
        created = nshost.run_cli(
            "vm", "create", vm, "--memory", "256M", "--vcpus", "1",
            "--kernel", str(tiny_guest.kernel), "--initrd", str(tiny_guest.initrd),
            "--cmdline", "console=ttyS0", "--disk", "size=64M",
            "--images-dir", str(images_dir), "--nic", f"network={network},mac={mac}")
        assert created.code == 0, created.stderr
        started = nshost.run_cli("vm", "start", vm, "--wait-agent", str(BOOT_TIMEOUT))
        assert started.code == 0, (started.stderr, nshost.log_tail())
        yield NatLab(nshost, network, vm, mac)
    finally:
        with nshost.connect() as conn:
            remove_vm(conn, vm)
        nshost.run_cli("net", "delete", network)


def _wait_addresses(lab: NatLab) -> tuple[ipaddress.IPv4Address, ipaddress.IPv6Address]:
    """The guest's DHCP IPv4 and SLAAC IPv6 address on its NIC, as ``guest ip`` shows."""
    deadline = time.monotonic() + ADDRESS_TIMEOUT
    while True:
        found = [a for iface in _json(lab.nshost, "guest", "ip", lab.vm, "--json")
                 if (iface["mac"] or "").lower() == lab.mac.lower() for a in iface["addresses"]]
        v4 = [ipaddress.ip_address(a["address"]) for a in found if a["family"] == "ipv4"]
        v6 = [ipaddress.ip_address(a["address"]) for a in found
              if a["family"] == "ipv6" and ipaddress.ip_address(a["address"]) in PREFIX6]
        if v4 and v6:
            assert isinstance(v4[0], ipaddress.IPv4Address)
            assert isinstance(v6[0], ipaddress.IPv6Address)
            return v4[0], v6[0]
        assert time.monotonic() < deadline, f"no IPv4+IPv6 on {lab.vm}'s NIC: {found}"
        time.sleep(2)


def test_nat_network_guest_gets_lease_and_slaac(nat_lab: NatLab) -> None:
    info = _json(nat_lab.nshost, "net", "info", nat_lab.network, "--json")
    assert (info["mode"], info["active"]) == ("nat", True)
    v4, v6 = _wait_addresses(nat_lab)
    assert v4 in SUBNET4 and DHCP_FIRST <= v4 <= DHCP_LAST, v4
    assert v6 in PREFIX6, v6
    # The lease is the namespaced dnsmasq's, as that libvirtd reports it.
    leases = _json(nat_lab.nshost, "net", "leases", nat_lab.network, "--json")
    assert {(lease["ip"], (lease["mac"] or "").lower()) for lease in leases} >= \
        {(str(v4), nat_lab.mac.lower())}, leases


def test_nat_network_lives_only_in_the_namespaces(nat_lab: NatLab) -> None:
    """The network's bridge and addresses are in the namespaced host, not in the
    machine's own namespace, and the machine's libvirtd does not know the network."""
    bridge = _json(nat_lab.nshost, "net", "info", nat_lab.network, "--json")["bridge"]
    inside = json.loads(nat_lab.nshost.run("ip", "-j", "addr", "show", "dev", bridge).stdout)
    assert "192.168.235.1" in {a["local"] for link in inside for a in link["addr_info"]}
    own = json.loads(subprocess.run(["ip", "-j", "addr"], capture_output=True, text=True,
                                    check=True, timeout=30).stdout)
    own_addresses = {ipaddress.ip_address(a["local"]) for link in own
                     for a in link.get("addr_info", [])}
    used = (SUBNET4, ipaddress.ip_network("192.168.234.0/24"), PREFIX6,
            ipaddress.ip_network("fd00:234::/64"))
    assert not [a for a in own_addresses for net in used if a in net]
    machine = run_cli("net", "list", "--json")
    assert machine.code == 0, machine.stderr
    assert nat_lab.network not in {n["name"] for n in json.loads(machine.stdout)}


COUNTERS = """\
table inet kvtcount {
  chain input {
    type filter hook input priority 0; policy accept;
    ip saddr %(outside)s icmp type echo-request counter comment "outside"
    ip saddr %(subnet)s counter comment "guest-subnet"
    ip6 saddr %(prefix6)s icmpv6 type echo-request counter comment "guest-prefix6"
  }
}
"""


def _counters(nshost: NsHost) -> dict[str, int]:
    listed = json.loads(nshost.run("nft", "-j", "list", "table", "inet", "kvtcount",
                                   where="upstream").stdout)
    counts = {}
    for item in listed["nftables"]:
        rule = item.get("rule")
        if rule and "comment" in rule:
            packets = [e["counter"]["packets"] for e in rule["expr"] if "counter" in e]
            counts[rule["comment"]] = packets[0]
    return counts


def _fresh_counters(nshost: NsHost) -> None:
    with contextlib.suppress(AssertionError):
        nshost.run("nft", "delete", "table", "inet", "kvtcount", where="upstream")
    nshost.run("nft", "-f", "-", where="upstream", input=COUNTERS % {
        "outside": nshost.outside4, "subnet": SUBNET4, "prefix6": PREFIX6})
    assert _counters(nshost) == {"outside": 0, "guest-subnet": 0, "guest-prefix6": 0}


def _ping(lab: NatLab, address: str) -> int:
    """Ping ``address`` from the guest (bounded); the number of replies (at least 1)."""
    flag = "-6 " if ":" in address else ""
    result = lab.nshost.run_cli("guest", "exec", lab.vm, "--", "/bin/sh", "-c",
                                f"ping {flag}-c {PINGS} -W 2 {address}", timeout=120)
    assert result.code == 0, (result.stdout, result.stderr)
    match = re.search(r"(\d+) packets transmitted, (\d+) packets received", result.stdout)
    assert match, result.stdout
    received = int(match.group(2))
    assert received >= 1, result.stdout
    return received


def test_guest_reaches_upstream_through_nat(nat_lab: NatLab) -> None:
    """The guest pings the upstream namespace; the echo requests arrive there from the
    NAT's outside address (masqueraded), none from the guest's own subnet."""
    nshost = nat_lab.nshost
    _wait_addresses(nat_lab)  # DHCP done: the guest has its default route
    _fresh_counters(nshost)
    received = _ping(nat_lab, nshost.upstream4)
    counts = _counters(nshost)
    assert counts["guest-subnet"] == 0, counts
    assert received <= counts["outside"] <= PINGS, counts


def test_guest_reaches_upstream_over_routed_ipv6(nat_lab: NatLab) -> None:
    """libvirt's NAT network routes IPv6 (no masquerading): with the upstream's route
    back to the prefix through the host namespace, the guest's pings arrive there from
    its own SLAAC address's prefix."""
    nshost = nat_lab.nshost
    _wait_addresses(nat_lab)  # the router advertisement came: the guest has its route
    nshost.run("ip", "-6", "route", "replace", str(PREFIX6), "via", nshost.outside6,
               where="upstream")
    _fresh_counters(nshost)
    received = _ping(nat_lab, nshost.upstream6)
    counts = _counters(nshost)
    assert (counts["outside"], counts["guest-subnet"]) == (0, 0), counts
    assert received <= counts["guest-prefix6"] <= PINGS, counts
