"""Per-vNIC VLANs on Open vSwitch, end to end: three tiny guests on an OVS network whose
bridge kvmops creates (``net create --mode ovs --create-bridge``: on this host, whose
kernel has no OVS datapath, a ``datapath_type=netdev`` bridge switched by ovs-vswitchd in
user space). VM1 and VM2 carry VLAN 10, VM3 VLAN 20; each guest has a static address in
192.168.230.0/24 (no DHCP on the OVS bridge). Guests with the same tag reach each other
(ping through ``guest exec``), a guest with another tag does not; the tags libvirt set on
the OVS ports are read back with ``ovs-vsctl``; a live ``vm nic update --vlan`` (and
``--trunk`` with a native VLAN) moves a guest between VLANs and the reach follows.

The bridge (``kvt...``, 15 characters at most) and the network carry this session's
prefix; the bridge carries nothing off the machine (no uplink port). Tests leave the
guests' VLANs as they found them (pytest-randomly orders them)."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from kvmops.host import networks as host_networks
from kvmops.host import ovs
from kvmops.host.connection import Host
from kvmops.testing import cleanup
from kvmops.vm.domxml import DomainDocument, Vlan
from tests.conftest import SESSION_PREFIX, assert_one_line_error, run_cli
from tests.integration.conftest import remove_vm

SUBNET = "192.168.230"
BOOT_TIMEOUT = 480.0  # three TCG guests boot at once on 2 shared cores: a deadline only
PING_TRIES = 5  # a reach that must work: bounded tries (ARP, a just-changed port)
BRIDGE = f"kvt{os.getpid() % 0xFFFFFF:x}o"


@dataclass
class Guest:
    vm: str
    mac: str
    ip: str


@dataclass
class Lab:
    network: str
    bridge: str
    vm1: Guest
    vm2: Guest
    vm3: Guest


def _json(*args: str) -> Any:
    result = run_cli(*args)
    assert result.code == 0, (args, result.stderr)
    return json.loads(result.stdout)


def _vsctl(*args: str) -> str:
    result = subprocess.run(["ovs-vsctl", "--timeout=10", *args], capture_output=True,
                            text=True, timeout=30, check=False)
    assert result.returncode == 0, (args, result.stderr)
    return result.stdout.strip()


def _wait_agent(vm: str, deadline: float) -> None:
    while True:
        if run_cli("guest", "ping", vm, timeout=60).code == 0:
            return
        assert time.monotonic() < deadline, f"the guest agent of {vm} never answered"
        time.sleep(2)


def _guest_sh(vm: str, script: str) -> str:
    result = run_cli("guest", "exec", vm, "--", "/bin/sh", "-c", script)
    assert result.code == 0, (script, result.stdout, result.stderr)
    return result.stdout


def _configure(guest: Guest) -> None:
    """A static address on the guest's NIC (its udhcpc stopped: no DHCP server here)."""
    script = (f"for n in /sys/class/net/*; do [ \"$(cat $n/address)\" = {guest.mac} ] && "
              "i=${n##*/}; done; [ -n \"$i\" ] || exit 1; "
              "[ -r /run/udhcpc.$i.pid ] && kill $(cat /run/udhcpc.$i.pid); "
              f"ip -4 addr flush dev $i; ip addr add {guest.ip}/24 dev $i && "
              "ip link set $i up && ip -4 -o addr show dev $i")
    assert f"inet {guest.ip}/24" in _guest_sh(guest.vm, script)


def _ping(source: Guest, target: Guest, count: int = 2) -> bool:
    result = run_cli("guest", "exec", source.vm, "--", "ping", "-c", str(count), "-W", "1",
                     target.ip)
    return result.code == 0


def _reaches(source: Guest, target: Guest) -> bool:
    """Bounded: PING_TRIES pings of two packets each."""
    return any(_ping(source, target) for _ in range(PING_TRIES))


def _tap(guest: Guest) -> str:
    for nic in _json("vm", "nic", "list", guest.vm, "--json"):
        if nic["mac"] == guest.mac:
            assert nic["host_device"], nic
            return str(nic["host_device"])
    raise AssertionError(f"no NIC {guest.mac} on {guest.vm}")


def _set_vlan(guest: Guest, *args: str) -> dict[str, Any]:
    entry = _json("vm", "nic", "update", guest.vm, guest.mac, *args, "--json")
    assert isinstance(entry, dict)
    return entry


@pytest.fixture(scope="module")
def lab(vm_factory: Callable[..., str], host: Host) -> Iterator[Lab]:
    """The OVS bridge and network, three booted guests with static addresses: VM1 on
    VLAN 10 (``vm create --nic network=NET,vlan=10``), VM2 on 10 (``vm nic update --vlan
    --config-only``), VM3 on 20 (``vm nic add --vlan``); all removed at the end, whatever
    happened."""
    network = f"{SESSION_PREFIX}ovs"
    made: list[str] = []
    try:
        created = run_cli("net", "create", network, "--mode", "ovs", "--bridge", BRIDGE,
                          "--create-bridge", "--json")
        assert created.code == 0, created.stderr
        made.append(vm_factory("--nic", f"network={network},vlan=10"))
        made.append(vm_factory("--nic", f"network={network}"))
        made.append(vm_factory())
        guests = []
        for index, vm in enumerate(made[:2]):
            nic = _json("vm", "nic", "list", vm, "--json")[0]
            if index == 1:  # VM2's tag given after create, in its definition
                nic = _json("vm", "nic", "update", vm, nic["mac"], "--vlan", "10",
                            "--config-only", "--json")
            assert nic["vlan"] == "10"
            guests.append(Guest(vm, nic["mac"], f"{SUBNET}.{11 + index}"))
        added = _json("vm", "nic", "add", made[2], "--network", network, "--vlan", "20",
                      "--json")
        assert (added["vlan"], added["live"], added["config"]) == ("20", False, True)
        guests.append(Guest(made[2], added["mac"], f"{SUBNET}.13"))
        for vm in made:  # all three boot at once; the deadline is for the slowest
            started = run_cli("vm", "start", vm)
            assert started.code == 0, started.stderr
        deadline = time.monotonic() + BOOT_TIMEOUT
        for vm in made:
            _wait_agent(vm, deadline)
        for guest in guests:
            _configure(guest)
        yield Lab(network, BRIDGE, *guests)
    finally:
        for vm in made:
            remove_vm(host, vm)
        with contextlib.suppress(Exception):
            host_networks.stop(host, network)
        with contextlib.suppress(Exception):
            host_networks.undefine(host, network)
        with contextlib.suppress(Exception):
            ovs.delete_bridge(BRIDGE)


def test_bridge_is_on_the_datapath_the_kernel_allows(lab: Lab) -> None:
    expected = "system" if ovs.kernel_datapath() else "netdev"
    assert _vsctl("get", "bridge", lab.bridge, "datapath_type") == expected
    assert _vsctl("br-get-external-id", lab.bridge, ovs.OWNER_KEY) == lab.network
    # The guests' taps are ports of the bridge, in ovs-vswitchd's datapath.
    ports = set(_vsctl("list-ports", lab.bridge).split())
    taps = {_tap(g) for g in (lab.vm1, lab.vm2, lab.vm3)}
    assert taps <= ports, (taps, ports)
    datapath = subprocess.run(["ovs-appctl", "dpctl/show"], capture_output=True, text=True,
                              timeout=30, check=True).stdout
    if expected == "netdev":
        assert "netdev@ovs-netdev" in datapath, datapath
    for tap in taps:
        assert tap in datapath, datapath


def test_libvirt_sets_the_access_tags_on_the_ovs_ports(lab: Lab) -> None:
    for guest, tag in ((lab.vm1, 10), (lab.vm2, 10), (lab.vm3, 20)):
        tap = _tap(guest)
        assert _vsctl("port-to-br", tap) == lab.bridge
        assert _vsctl("get", "port", tap, "tag") == str(tag)
        assert _vsctl("get", "port", tap, "trunks") == "[]"
        assert ovs.port_vlan(tap) == ovs.PortVlan(tag=tag, trunks=(), mode=None)
        nics = _json("vm", "nic", "list", guest.vm, "--json")
        assert [n["vlan"] for n in nics if n["mac"] == guest.mac] == [str(tag)]


def test_same_tag_reaches_other_tag_does_not(lab: Lab) -> None:
    assert _reaches(lab.vm1, lab.vm2)
    assert _reaches(lab.vm2, lab.vm1)
    assert not _ping(lab.vm1, lab.vm3, count=3)
    assert not _ping(lab.vm3, lab.vm2, count=3)


def test_live_vlan_change_moves_a_guest_between_vlans(lab: Lab, host: Host) -> None:
    try:
        entry = _set_vlan(lab.vm3, "--vlan", "10")
        assert (entry["vlan"], entry["live"], entry["config"]) == ("10", True, True)
        assert _vsctl("get", "port", _tap(lab.vm3), "tag") == "10"
        assert _reaches(lab.vm1, lab.vm3)  # VM3 joined VLAN 10

        assert _set_vlan(lab.vm2, "--vlan", "20", "--live")["vlan"] == "20"
        assert _vsctl("get", "port", _tap(lab.vm2), "tag") == "20"
        assert not _ping(lab.vm1, lab.vm2, count=3)  # VM2 left VLAN 10
        assert not _ping(lab.vm3, lab.vm2, count=3)
        # --live only: VM2's definition still says 10.
        defined = DomainDocument(host.lookup(lab.vm2.vm).xml(inactive=True)).nics()
        assert [n.vlan for n in defined if n.mac == lab.vm2.mac] == [Vlan((10,))]
    finally:
        _set_vlan(lab.vm2, "--vlan", "10", "--live")
        _set_vlan(lab.vm3, "--vlan", "20")
    assert _vsctl("get", "port", _tap(lab.vm2), "tag") == "10"
    assert _vsctl("get", "port", _tap(lab.vm3), "tag") == "20"
    assert _reaches(lab.vm1, lab.vm2)


def test_trunk_with_a_native_vlan_carries_the_guests_untagged_frames(lab: Lab) -> None:
    try:
        entry = _set_vlan(lab.vm3, "--trunk", "10,20", "--native", "10", "--live")
        assert entry["vlan"] == "trunk 10,20 native 10"
        port = ovs.port_vlan(_tap(lab.vm3))
        assert (port.tag, port.trunks, port.mode) == (10, (10, 20), "native-untagged")
        assert _reaches(lab.vm3, lab.vm1)  # untagged from VM3: the native VLAN 10
    finally:
        _set_vlan(lab.vm3, "--vlan", "20", "--live")
    assert ovs.port_vlan(_tap(lab.vm3)) == ovs.PortVlan(tag=20, trunks=(), mode=None)
    assert not _ping(lab.vm3, lab.vm1, count=3)


def test_bad_vlans_are_refused_in_one_line(lab: Lab, host: Host) -> None:
    bad = run_cli("vm", "nic", "update", lab.vm1.vm, lab.vm1.mac, "--vlan", "4095")
    assert_one_line_error(bad, 2, "invalid VLAN tag 4095")
    assert _vsctl("get", "port", _tap(lab.vm1), "tag") == "10"
    name, plain = f"{SESSION_PREFIX}ovsbad", f"kvt{os.getpid() % 0xFFFFFF:x}n"
    try:
        for spec, fragment in ((f"network={lab.network},vlan=4095", "invalid VLAN tag 4095"),
                               (f"bridge={plain},vlan=10",
                                f"bridge '{plain}' is not an Open vSwitch bridge")):
            result = run_cli("vm", "create", name, "--memory", "64M", "--nic", spec)
            assert_one_line_error(result, 2, fragment)
            assert not host.has_domain(name)
    finally:
        remove_vm(host, name)


def test_network_delete_removes_the_bridge_kvmops_created(host: Host) -> None:
    network, bridge = f"{SESSION_PREFIX}ovsdel", f"kvt{os.getpid() % 0xFFFFFF:x}d"
    try:
        assert run_cli("net", "create", network, "--mode", "ovs", "--bridge", bridge,
                       "--create-bridge", "--no-start").code == 0
        assert bridge in ovs.bridges()
        again = run_cli("net", "create", f"{network}2", "--mode", "ovs", "--bridge", bridge,
                        "--create-bridge")
        assert_one_line_error(again, 4, f"Open vSwitch bridge '{bridge}' already exists")
        assert run_cli("net", "delete", network).code == 0
        assert bridge not in ovs.bridges()
    finally:
        with contextlib.suppress(Exception):
            host_networks.undefine(host, network)
        with contextlib.suppress(Exception):
            ovs.delete_bridge(bridge)


def test_clean_test_removes_left_ovs_bridges() -> None:
    tag = f"{os.getpid() % 0xFFFFFF:x}"
    named, owned, kept = f"kvt{tag}l", f"kvmopso{tag}", f"ovskeep{tag}"
    try:
        ovs.add_bridge(named)
        ovs.add_bridge(owned, owner=f"{SESSION_PREFIX}left")
        ovs.add_bridge(kept)
        removed = cleanup.remove_test_ovs_bridges(prefix=f"kvt{tag}l",
                                                  owner_prefix=f"{SESSION_PREFIX}left")
        assert sorted(removed) == sorted([named, owned])
        assert kept in ovs.bridges() and named not in ovs.bridges()
        with pytest.raises(ValueError):
            cleanup.remove_test_ovs_bridges(prefix="br")
    finally:
        for name in (named, owned, kept):
            with contextlib.suppress(Exception):
                ovs.delete_bridge(name)


def test_nic_on_the_ovs_bridge_itself_becomes_an_ovs_port(lab: Lab, host: Host,
                                                         vm_factory: Callable[..., str]
                                                         ) -> None:
    """``--nic bridge=BR`` (and the older ``--bridge BR``) naming an Open vSwitch bridge
    (no libvirt network): kvmops adds ``<virtualport type='openvswitch'>``, else libvirt
    adds the tap as a Linux bridge port and the VM cannot start ("Unable to add bridge BR
    port vnetN: Operation not supported"). Each VM is destroyed once its port is seen."""
    for args, vlan in ((["--nic", f"bridge={lab.bridge},vlan=30"], Vlan((30,))),
                       (["--bridge", lab.bridge], None)):
        vm = vm_factory(*args)
        try:
            defined = DomainDocument(host.lookup(vm).xml(inactive=True)).nics()
            assert [(n.kind, n.source, n.virtualport, n.vlan) for n in defined] == [
                ("bridge", lab.bridge, "openvswitch", vlan)]
            started = run_cli("vm", "start", vm)
            assert started.code == 0, started.stderr
            nics = _json("vm", "nic", "list", vm, "--json")
            tap = nics[0]["host_device"]
            assert _vsctl("port-to-br", tap) == lab.bridge
            assert _vsctl("get", "port", tap, "tag") == ("30" if vlan else "[]")
        finally:
            remove_vm(host, vm)


def test_an_existing_bridge_on_a_missing_kernel_datapath_is_refused(host: Host) -> None:
    """ovs-vswitchd keeps a kernel-datapath bridge in its database even where the kernel
    has no datapath ("failed to open datapath"); a network on it would pass nothing."""
    network, bridge = f"{SESSION_PREFIX}ovssys", f"kvt{os.getpid() % 0xFFFFFF:x}s"
    try:
        subprocess.run(["ovs-vsctl", "--timeout=10", "add-br", bridge], capture_output=True,
                       timeout=30, check=False)  # here: "Error detected", the bridge kept
        assert bridge in ovs.bridges()
        if not ovs.kernel_datapath():  # else the kernel's datapath serves it: accepted below
            refused = run_cli("net", "create", network, "--mode", "ovs", "--bridge", bridge)
            assert_one_line_error(refused, 6, f"'{bridge}' is on the kernel datapath",
                                  "datapath_type=netdev")
            assert not host_networks.exists(host, network)
            _vsctl("set", "bridge", bridge, "datapath_type=netdev")
        assert run_cli("net", "create", network, "--mode", "ovs", "--bridge", bridge,
                       "--no-start").code == 0
        assert run_cli("net", "delete", network).code == 0
        assert bridge in ovs.bridges()  # not made by kvmops: kept
    finally:
        with contextlib.suppress(Exception):
            host_networks.undefine(host, network)
        with contextlib.suppress(Exception):
            ovs.delete_bridge(bridge)
