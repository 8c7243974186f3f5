"""vNICs end to end on the real libvirtd with tiny guests: two guests created with
``vm create --nic network=NET`` on an isolated test network get an IPv4 lease in the
DHCP range and a SLAAC IPv6 address in the prefix (``guest ip --json``), reach each
other (ping through ``guest exec``; the traffic stays on the isolated bridge), and a NIC
hot-plugged into a running guest appears in it, gets its link set down and up, and is
removed. Bad ``--nic`` input and a MAC another VM has are refused in one line.

The network carries SESSION_PREFIX and 192.168.253.0/24 + fd00:253::/64 (no other test
uses them); it and the guests are removed even when a test fails."""

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
from tests.conftest import SESSION_PREFIX, assert_one_line_error, run_cli
from tests.integration.conftest import remove_vm

SUBNET4 = ipaddress.ip_network("192.168.253.0/24")
DHCP_FIRST, DHCP_LAST = (ipaddress.ip_address("192.168.253.10"),
                         ipaddress.ip_address("192.168.253.50"))
PREFIX6 = ipaddress.ip_network("fd00:253::/64")
BOOT_TIMEOUT = 240.0  # TCG boots slower under load; a deadline, never an assertion on time
ADDRESS_TIMEOUT = 90.0


@dataclass
class Lab:
    network: str
    vm1: str
    vm2: str
    mac2: str


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


def _wait_addresses(vm: str, mac: str) -> tuple[ipaddress.IPv4Address, ipaddress.IPv6Address]:
    """The guest's IPv4 address from DHCP and its SLAAC IPv6 one on the NIC ``mac``,
    as ``guest ip`` shows them (waits for DHCP and the router advertisement)."""
    deadline = time.monotonic() + ADDRESS_TIMEOUT
    while True:
        found = _addresses(vm, mac)
        v4 = [ipaddress.ip_address(a["address"]) for a in found if a["family"] == "ipv4"]
        v6 = [ipaddress.ip_address(a["address"]) for a in found
              if a["family"] == "ipv6" and ipaddress.ip_address(a["address"]) in PREFIX6]
        if v4 and v6:
            assert isinstance(v4[0], ipaddress.IPv4Address)
            assert isinstance(v6[0], ipaddress.IPv6Address)
            return v4[0], v6[0]
        assert time.monotonic() < deadline, f"no IPv4+IPv6 on {vm}'s NIC {mac}: {found}"
        time.sleep(2)


def _guest_sh(vm: str, script: str) -> str:
    result = run_cli("guest", "exec", vm, "--", "/bin/sh", "-c", script)
    assert result.code == 0, (script, result.stdout, result.stderr)
    return result.stdout


def _remove_network(host: Host, name: str) -> None:
    with contextlib.suppress(Exception):
        host_networks.stop(host, name)
    with contextlib.suppress(Exception):
        host_networks.undefine(host, name)


@pytest.fixture(scope="module")
def lab(vm_factory: Callable[..., str], host: Host) -> Iterator[Lab]:
    """The isolated network and two booted guests on it (VM2 with a fixed MAC and a
    second, e1000 NIC); all removed at the end, whatever happened."""
    network = f"{SESSION_PREFIX}nics"
    made: list[str] = []
    try:
        created = run_cli("net", "create", network, "--mode", "isolated",
                          "--ipv4", "192.168.253.1/24",
                          "--dhcp", f"{DHCP_FIRST}-{DHCP_LAST}", "--ipv6", "fd00:253::1/64")
        assert created.code == 0, created.stderr
        mac2 = new_mac(set())
        made.append(vm_factory("--nic", f"network={network}"))
        made.append(vm_factory("--nic", f"network={network},mac={mac2}",
                               "--nic", f"network={network},model=e1000"))
        # Both boot at once; the deadline is for the slower one.
        for vm in made:
            started = run_cli("vm", "start", vm)
            assert started.code == 0, started.stderr
        deadline = time.monotonic() + BOOT_TIMEOUT
        for vm in made:
            _wait_agent(vm, deadline)
        yield Lab(network, made[0], made[1], mac2)
    finally:
        for vm in made:
            remove_vm(host, vm)
        _remove_network(host, network)


def _nics(vm: str) -> list[dict[str, Any]]:
    found = _json("vm", "nic", "list", vm, "--json")
    assert isinstance(found, list)
    return found


def test_created_nics_are_in_the_definition(lab: Lab) -> None:
    first = _nics(lab.vm1)
    assert [(n["type"], n["source"], n["model"], n["live"], n["config"]) for n in first] == [
        ("network", lab.network, "virtio", True, True)]
    second = _nics(lab.vm2)
    assert [(n["mac"], n["model"], n["link"]) for n in second] == [
        (lab.mac2, "virtio", "up"), (second[1]["mac"], "e1000", "up")]
    assert second[1]["mac"] != lab.mac2
    info = _json("vm", "info", lab.vm2, "--json")
    assert [n["mac"] for n in info["nics"]] == [n["mac"] for n in second]


def test_guest_gets_dhcp_lease_and_slaac_address(lab: Lab) -> None:
    mac1 = _nics(lab.vm1)[0]["mac"]
    v4, v6 = _wait_addresses(lab.vm1, mac1)
    assert v4 in SUBNET4 and DHCP_FIRST <= v4 <= DHCP_LAST
    assert v6 in PREFIX6
    # The address came from the network's DHCP server: its lease names the NIC's MAC.
    leases = _json("net", "leases", lab.network, "--json")
    assert any(lease["ip"] == str(v4) and lease["mac"] == mac1 for lease in leases), leases
    # The guest itself has the address (not only the agent's report).
    assert f"inet {v4}/24" in _guest_sh(lab.vm1, "ip -4 -o addr show")


def test_guests_on_the_isolated_network_reach_each_other(lab: Lab) -> None:
    v4_2, v6_2 = _wait_addresses(lab.vm2, lab.mac2)
    _wait_addresses(lab.vm1, _nics(lab.vm1)[0]["mac"])
    for target in (v4_2, v6_2):
        result = run_cli("guest", "exec", lab.vm1, "--", "ping", "-c", "3", "-W", "2",
                         str(target))
        assert result.code == 0, (str(target), result.stdout, result.stderr)
    # An address on no guest does not answer (the ping is not a no-op).
    missed = run_cli("guest", "exec", lab.vm1, "--", "ping", "-c", "1", "-W", "1",
                     "192.168.253.250")
    assert missed.code != 0, missed.stdout


def test_hot_plugged_nic_is_seen_in_the_guest_and_removed(lab: Lab) -> None:
    added = _json("vm", "nic", "add", lab.vm1, "--network", lab.network, "--json")
    mac = added["mac"]
    try:
        assert (added["live"], added["config"], added["model"]) == (True, True, "virtio")
        assert mac in [n["mac"] for n in _nics(lab.vm1)]
        deadline = time.monotonic() + 60
        while mac not in _guest_sh(lab.vm1, "cat /sys/class/net/*/address"):
            assert time.monotonic() < deadline, f"NIC {mac} never appeared in the guest"
            time.sleep(1)
        # The guest brings the new NIC up by itself: DHCP and SLAAC on it as well.
        v4, v6 = _wait_addresses(lab.vm1, mac)
        assert DHCP_FIRST <= v4 <= DHCP_LAST and v6 in PREFIX6
        iface = _guest_sh(lab.vm1, f"grep -l {mac} /sys/class/net/*/address").split("/")[4]

        down = _json("vm", "nic", "set-link", lab.vm1, mac, "down", "--json")
        assert down["link"] == "down"
        assert _guest_sh(lab.vm1, f"cat /sys/class/net/{iface}/carrier").strip() == "0"
        up = _json("vm", "nic", "set-link", lab.vm1, mac, "up", "--json")
        assert up["link"] == "up"
        assert _guest_sh(lab.vm1, f"cat /sys/class/net/{iface}/carrier").strip() == "1"
    finally:
        removed = run_cli("vm", "nic", "remove", lab.vm1, mac, "--json")
    assert removed.code == 0, removed.stderr
    assert json.loads(removed.stdout) == {"mac": mac, "live": True, "config": True}
    assert mac not in [n["mac"] for n in _nics(lab.vm1)]
    assert mac not in _guest_sh(lab.vm1, "cat /sys/class/net/*/address")
    again = run_cli("vm", "nic", "remove", lab.vm1, mac)
    assert_one_line_error(again, 3, f"no NIC with MAC {mac}")


#: VIRTIO_NET_F_MQ: the device offers several queue pairs (virtio spec 5.1.3).
VIRTIO_NET_F_MQ = 22


def test_multiqueue_nic(lab: Lab, host: Host) -> None:
    """A NIC hot-plugged with --queues 2 reaches the guest as a multiqueue virtio-net
    device (the guest's driver sees the MQ feature bit; a one-queue NIC does not);
    multiqueue on e1000 is refused."""
    added = _json("vm", "nic", "add", lab.vm2, "--network", lab.network, "--queues", "2",
                  "--json")
    mac = added["mac"]
    try:
        assert (added["queues"], added["boot_order"]) == (2, None)
        assert "queues='2'" in host.conn.lookupByName(lab.vm2).XMLDesc(0)
        deadline = time.monotonic() + 60
        while mac not in _guest_sh(lab.vm2, "cat /sys/class/net/*/address"):
            assert time.monotonic() < deadline, f"NIC {mac} never appeared in the guest"
            time.sleep(1)

        def features(nic_mac: str) -> str:
            path = _guest_sh(lab.vm2, f"grep -l {nic_mac} /sys/class/net/*/address").strip()
            return _guest_sh(lab.vm2, "cat " + path.replace("/address", "/device/features"))

        assert features(mac)[VIRTIO_NET_F_MQ] == "1"
        assert features(lab.mac2)[VIRTIO_NET_F_MQ] == "0"
        e1000 = run_cli("vm", "nic", "add", lab.vm2, "--network", lab.network, "--model",
                        "e1000", "--queues", "2")
        assert_one_line_error(e1000, 2, "needs the virtio model")
    finally:
        removed = run_cli("vm", "nic", "remove", lab.vm2, mac)
    assert removed.code == 0, removed.stderr
    assert mac not in [n["mac"] for n in _nics(lab.vm2)]


def test_nic_boot_order(lab: Lab, vm_factory: Callable[..., str]) -> None:
    """A boot position given at creation is in the definition (libvirt accepted it
    beside the disks); a taken one is refused, and a VM that boots by device kind
    (libvirt's <os><boot dev>) is told how to get one."""
    vm = vm_factory("--nic", f"network={lab.network},boot=1")
    nics = _nics(vm)
    assert [n["boot_order"] for n in nics] == [1]
    taken = run_cli("vm", "nic", "add", vm, "--network", lab.network, "--boot-order", "1",
                    "--config-only")
    assert_one_line_error(taken, 4, "boot order 1 is taken", vm)
    second = _json("vm", "nic", "add", vm, "--network", lab.network, "--boot-order", "2",
                   "--config-only", "--json")
    assert second["boot_order"] == 2
    by_kind = run_cli("vm", "nic", "add", lab.vm1, "--network", lab.network,
                      "--boot-order", "3", "--config-only")
    assert_one_line_error(by_kind, 2, "boots by device kind", "vm create --nic")


def test_bad_nic_input_and_a_taken_mac_are_refused(lab: Lab, host: Host) -> None:
    name = f"{SESSION_PREFIX}nicbad"
    try:
        for spec, fragment in ((f"network={lab.network},mac=01:00:5e:00:00:01", "multicast"),
                               (f"network={lab.network},model=ne2k", "unknown NIC model"),
                               (f"net={lab.network}", "unknown key(s) net"),
                               ("bridge=-x", "invalid bridge name '-x'")):
            result = run_cli("vm", "create", name, "--memory", "64M", "--nic", spec)
            assert_one_line_error(result, 2, fragment)
        taken = run_cli("vm", "create", name, "--memory", "64M",
                        "--nic", f"network={lab.network},mac={lab.mac2.upper()}")
        assert_one_line_error(taken, 4, lab.mac2, lab.vm2)
        assert not host.has_domain(name)
        plug = run_cli("vm", "nic", "add", lab.vm1, "--network", lab.network, "--mac", lab.mac2)
        assert_one_line_error(plug, 4, lab.mac2, lab.vm2)
        odd = run_cli("vm", "nic", "add", lab.vm1, "--bridge", "../br0")
        assert_one_line_error(odd, 2, "invalid bridge name '../br0'")
        missing = run_cli("vm", "nic", "add", lab.vm1, "--network", f"{SESSION_PREFIX}nonet")
        assert_one_line_error(missing, 3, "not found")
    finally:
        remove_vm(host, name)
