"""DHCPv6 end to end on the real libvirtd with a tiny guest that has two NICs:

- on an isolated ``--ipv6-mode dhcpv6-stateful`` network (router advertisements with
  the M flag; libvirt's dnsmasq leases addresses from the DHCPv6 range): the guest's
  dhcpcd leases an IPv6 address from the range (``guest ip --json`` with ``leased``,
  ``net leases``, the guest's own ``ip``) and no SLAAC address;
- on an isolated ``--ipv6-mode dhcpv6-stateless`` network (libvirt's dnsmasq with the
  ``ra-stateless`` range kvmops adds: RAs with the A and O flags, DHCPv6 for other
  configuration only): the guest's IPv6 address there is its SLAAC (EUI-64) one, not
  leased; the RA it heard had the O flag and not the M flag, its dhcpcd asked for
  information only and wrote the network's DHCPv6 name server into
  ``/etc/resolv.conf``, and the network leased no IPv6 address.

The networks carry SESSION_PREFIX; they use 192.168.232.0/24 +
fd00:232::/64 (stateful) and 192.168.238.0/24 + fd00:238::/64 (stateless), which no other
test uses. All traffic stays on the isolated networks. The networks and the guest are
removed even when a test fails."""

from __future__ import annotations

import contextlib
import ipaddress
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from kvmops.host import networks as host_networks
from kvmops.host.connection import Host
from kvmops.vm.lifecycle import new_mac
from tests.conftest import SESSION_PREFIX, run_cli
from tests.integration.conftest import remove_vm

V4_STATEFUL = ipaddress.IPv4Network("192.168.232.0/24")
PREFIX_STATEFUL = ipaddress.IPv6Network("fd00:232::/64")
DHCP6_FIRST, DHCP6_LAST = (ipaddress.IPv6Address("fd00:232::100"),
                           ipaddress.IPv6Address("fd00:232::1ff"))
V4_STATELESS = ipaddress.IPv4Network("192.168.238.0/24")
PREFIX_STATELESS = ipaddress.IPv6Network("fd00:238::/64")
DNS6 = "fd00:238::1"  # the network's own dnsmasq: named by the DHCPv6 information reply
BOOT_TIMEOUT = 240.0  # TCG boots slower under load; a deadline, never an assertion on time
ADDRESS_TIMEOUT = 120.0  # the guest probes for the RA, then solicits: up to a minute


@dataclass
class Lab:
    stateful: str  # network names
    stateless: str
    vm: str
    mac_stateful: str
    mac_stateless: str


def _json(*args: str) -> Any:
    result = run_cli(*args)
    assert result.code == 0, (args, result.stderr)
    return json.loads(result.stdout)


def _wait_agent(vm: str, deadline: float) -> None:
    while True:
        if run_cli("guest", "ping", vm, timeout=60).code == 0:
            return
        assert time.monotonic() < deadline, f"the guest agent of {vm} never answered"
        time.sleep(2)


def _addresses(vm: str, mac: str) -> list[dict[str, Any]]:
    for iface in _json("guest", "ip", vm, "--json"):
        if (iface["mac"] or "").lower() == mac.lower():
            return list(iface["addresses"])
    return []


def _wait_addresses(vm: str, mac: str, v4net: ipaddress.IPv4Network,
                    prefix: ipaddress.IPv6Network
                    ) -> tuple[dict[str, Any], dict[str, Any], list[dict[str, Any]]]:
    """(IPv4 entry, IPv6 entry in ``prefix``, all entries) of NIC ``mac`` in ``guest ip
    --json``, once the guest's agent reports both (not only a network's lease: the guest
    has configured them)."""
    deadline = time.monotonic() + ADDRESS_TIMEOUT
    while True:
        found = _addresses(vm, mac)
        v4 = [a for a in found if a["family"] == "ipv4" and a["source"] == "agent"
              and ipaddress.ip_address(a["address"]) in v4net]
        v6 = [a for a in found if a["family"] == "ipv6" and a["source"] == "agent"
              and ipaddress.ip_address(a["address"]) in prefix]
        if v4 and v6:
            return v4[0], v6[0], found
        assert time.monotonic() < deadline, f"no IPv4+IPv6 on {vm}'s NIC {mac}: {found}"
        time.sleep(2)


def _guest_sh(vm: str, script: str) -> str:
    result = run_cli("guest", "exec", vm, "--", "/bin/sh", "-c", script)
    assert result.code == 0, (script, result.stdout, result.stderr)
    return result.stdout


def _eui64(prefix: ipaddress.IPv6Network, mac: str) -> ipaddress.IPv6Address:
    """The SLAAC address the kernel builds from ``mac`` (modified EUI-64, RFC 4291)."""
    octets = [int(x, 16) for x in mac.split(":")]
    octets[0] ^= 0x02
    iid = bytes([*octets[:3], 0xFF, 0xFE, *octets[3:]])
    return prefix.network_address + int.from_bytes(iid, "big")


def _remove_network(host: Host, name: str) -> None:
    with contextlib.suppress(Exception):
        host_networks.stop(host, name)
    with contextlib.suppress(Exception):
        host_networks.undefine(host, name)


@pytest.fixture(scope="module")
def lab(vm_factory: Callable[..., str], host: Host) -> Iterator[Lab]:
    """Both networks and one booted guest with a NIC on each; removed at the end."""
    stateful, stateless = f"{SESSION_PREFIX}dh6", f"{SESSION_PREFIX}dh6s"
    vm: str | None = None
    try:
        created = run_cli("net", "create", stateful, "--mode", "isolated",
                          "--ipv4", "192.168.232.1/24",
                          "--dhcp", "192.168.232.10-192.168.232.50",
                          "--ipv6", "fd00:232::1/64", "--ipv6-mode", "dhcpv6-stateful",
                          "--dhcp6", f"{DHCP6_FIRST}-{DHCP6_LAST}")
        assert created.code == 0, created.stderr
        created = run_cli("net", "create", stateless, "--mode", "isolated",
                          "--ipv4", "192.168.238.1/24",
                          "--dhcp", "192.168.238.10-192.168.238.50",
                          "--ipv6", "fd00:238::1/64", "--ipv6-mode", "dhcpv6-stateless")
        assert created.code == 0, created.stderr
        mac_stateful, mac_stateless = new_mac(set()), new_mac(set())
        vm = vm_factory("--nic", f"network={stateful},mac={mac_stateful}",
                        "--nic", f"network={stateless},mac={mac_stateless}")
        started = run_cli("vm", "start", vm)
        assert started.code == 0, started.stderr
        _wait_agent(vm, time.monotonic() + BOOT_TIMEOUT)
        yield Lab(stateful, stateless, vm, mac_stateful, mac_stateless)
    finally:
        if vm is not None:
            remove_vm(host, vm)
        _remove_network(host, stateful)
        _remove_network(host, stateless)


def test_guest_leases_an_ipv6_address_from_the_dhcpv6_range(lab: Lab) -> None:
    v4, v6, found = _wait_addresses(lab.vm, lab.mac_stateful, V4_STATEFUL, PREFIX_STATEFUL)
    address = ipaddress.IPv6Address(v6["address"])
    assert DHCP6_FIRST <= address <= DHCP6_LAST, found
    # Stateful: the RA has no autonomous flag, so the range's address is the only one
    # in the prefix (no SLAAC address beside it).
    in_prefix = [a["address"] for a in found if a["family"] == "ipv6"
                 and ipaddress.ip_address(a["address"]) in PREFIX_STATEFUL]
    assert in_prefix == [v6["address"]], found
    assert (v6["source"], v6["leased"]) == ("agent", True), v6
    assert v4["leased"] is True, v4
    # The network's DHCP server leased it, to this NIC.
    leases = _json("net", "leases", lab.stateful, "--json")
    ipv6_leases = [lease for lease in leases if lease["family"] == "ipv6"]
    assert [lease["ip"] for lease in ipv6_leases] == [str(address)], leases
    assert ipv6_leases[0]["mac"] in (lab.mac_stateful, None), leases
    assert any(lease["ip"] == v4["address"] and lease["mac"] == lab.mac_stateful
               for lease in leases), leases
    # The guest itself has the address (dhcpcd added it), not only the agent's report.
    assert f"inet6 {address}/128" in _guest_sh(lab.vm, "ip -6 -o addr show")


def test_stateless_lan_gives_slaac_address_and_dhcpv6_information(lab: Lab) -> None:
    _v4, v6, found = _wait_addresses(lab.vm, lab.mac_stateless, V4_STATELESS,
                                     PREFIX_STATELESS)
    # The address is the kernel's SLAAC one (EUI-64 of the NIC's MAC), no leased one.
    in_prefix = {a["address"] for a in found if a["family"] == "ipv6"
                 and ipaddress.ip_address(a["address"]) in PREFIX_STATELESS}
    assert in_prefix == {str(_eui64(PREFIX_STATELESS, lab.mac_stateless))}, found
    assert v6["leased"] is False, v6
    # The RA the guest heard had the O flag and not M (the guest's dhcpcd probe wrote
    # its flags), so it asked for information only: the network's DHCPv6 name server
    # is in its resolv.conf, and the network leased no IPv6 address.
    iface = _guest_sh(lab.vm, f"grep -l {lab.mac_stateless} /sys/class/net/*/address"
                      ).split("/")[4]
    deadline = time.monotonic() + ADDRESS_TIMEOUT
    while f"nameserver {DNS6}" not in _guest_sh(lab.vm, "cat /etc/resolv.conf"):
        assert time.monotonic() < deadline, _guest_sh(lab.vm, "cat /etc/resolv.conf")
        time.sleep(2)
    flags = _guest_sh(lab.vm, f"cat /run/ra6.{iface}")
    assert "O" in flags and "M" not in flags, flags
    leases = _json("net", "leases", lab.stateless, "--json")
    assert [lease for lease in leases if lease["family"] == "ipv6"] == [], leases
