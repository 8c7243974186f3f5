"""vNIC bandwidth end to end on the real libvirtd: ``vm nic update VM MAC --outbound/
--inbound`` on a running tiny guest changes the live ``<bandwidth>`` and libvirt installs
its tc rules on the VM's tap (outbound: an ingress policing filter; inbound: an htb
shaper); ``none`` removes the limit and the rules. A VLAN on a NIC of a plain (non-Open
vSwitch) network is refused in one line before libvirt sees it.

The throughput measurement through a guest: tests/integration/test_nic_throughput.py.
The network carries SESSION_PREFIX and 192.168.245.0/24 (no other test uses it); it and
the VM are removed even when a test fails."""

from __future__ import annotations

import contextlib
import json
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from lxml import etree

from kvmops.host import networks as host_networks
from kvmops.host.connection import Host
from tests.conftest import SESSION_PREFIX, assert_one_line_error, run_cli
from tests.integration.conftest import remove_vm


@dataclass
class Guest:
    vm: str
    mac: str
    network: str


def _json(*args: str) -> Any:
    result = run_cli(*args)
    assert result.code == 0, (args, result.stderr)
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def guest(vm_factory: Callable[..., str], host: Host) -> Iterator[Guest]:
    """A running VM with one NIC on its own isolated network. QEMU running is enough:
    libvirt puts the tc rules on the tap, the guest need not have booted."""
    network = f"{SESSION_PREFIX}bw"
    vm = ""
    try:
        created = run_cli("net", "create", network, "--mode", "isolated",
                          "--ipv4", "192.168.245.1/24")
        assert created.code == 0, created.stderr
        vm = vm_factory("--nic", f"network={network}")
        started = run_cli("vm", "start", vm)
        assert started.code == 0, started.stderr
        nics = _json("vm", "nic", "list", vm, "--json")
        assert len(nics) == 1 and nics[0]["host_device"], nics
        yield Guest(vm, nics[0]["mac"], network)
    finally:
        if vm:
            remove_vm(host, vm)
        with contextlib.suppress(Exception):
            host_networks.stop(host, network)
        with contextlib.suppress(Exception):
            host_networks.undefine(host, network)


def _interface(host: Host, vm: str, mac: str, inactive: bool = False) -> etree._Element:
    domain = host.conn.lookupByName(vm)
    root = etree.fromstring(domain.XMLDesc(2 if inactive else 0).encode())  # 2: INACTIVE
    for el in root.findall("devices/interface"):
        if el.find("mac").get("address") == mac:
            return el
    raise AssertionError(f"no interface {mac} in {vm}")


def _tc(*args: str) -> str:
    result = subprocess.run(["tc", *args], capture_output=True, text=True, check=False)
    assert result.returncode == 0, (args, result.stderr)
    return result.stdout


def _tc_rules_applied(guest: Guest, host: Host, tap: str) -> None:
    """A kernel with act_police and sch_sfq: the limits are in the live XML and the tap
    carries libvirt's rules; ``none`` clears both."""
    live = _interface(host, guest.vm, guest.mac)
    assert dict(live.find("bandwidth/outbound").attrib) == {"average": "1000",
                                                            "peak": "2000", "burst": "64"}
    assert _interface(host, guest.vm, guest.mac, inactive=True).find(
        "bandwidth/outbound").get("average") == "1000"
    # Traffic from the guest enters the host on the tap: libvirt polices it there
    # (1000 KiB/s = tc's 1000kbps = 8Mbit).
    assert "ingress ffff:" in _tc("qdisc", "show", "dev", tap)
    police = _tc("filter", "show", "dev", tap, "parent", "ffff:")
    assert "police" in police and "rate 8Mbit" in police, police

    nic = _json("vm", "nic", "update", guest.vm, guest.mac, "--inbound", "500", "--json")
    assert (nic["inbound"], nic["outbound"]) == ("500", "1000,2000,64")
    assert "htb" in _tc("qdisc", "show", "dev", tap)
    assert "rate 4Mbit" in _tc("class", "show", "dev", tap)

    nic = _json("vm", "nic", "update", guest.vm, guest.mac, "--outbound", "none",
                "--inbound", "none", "--json")
    assert (nic["inbound"], nic["outbound"]) == (None, None)
    assert _interface(host, guest.vm, guest.mac).find("bandwidth") is None
    assert _interface(host, guest.vm, guest.mac, inactive=True).find("bandwidth") is None
    qdiscs = _tc("qdisc", "show", "dev", tap)
    assert "ingress" not in qdiscs and "htb" not in qdiscs, qdiscs


def test_live_limit_applies_or_is_refused_naming_the_kernel(guest: Guest, host: Host
                                                           ) -> None:
    """On a kernel with tc's police action and sfq qdisc (real hosts) the live change
    lands in the XML and on the tap. This machine's kernel has neither and loads no
    modules: libvirt's tc call fails, kvmops says so in one line and nothing changed."""
    tap = _interface(host, guest.vm, guest.mac).find("target").get("dev")
    assert tap
    assert "police" not in _tc("filter", "show", "dev", tap, "parent", "ffff:")
    result = run_cli("vm", "nic", "update", guest.vm, guest.mac, "--outbound",
                     "1000,2000,64", "--json")
    if result.code == 0:
        nic = json.loads(result.stdout)
        assert (nic["outbound"], nic["inbound"], nic["live"], nic["config"]) == (
            "1000,2000,64", None, True, True)
        _tc_rules_applied(guest, host, tap)
        return
    assert_one_line_error(result, 6, f"NIC {guest.mac}", "lacks the tc police action")
    assert _interface(host, guest.vm, guest.mac).find("bandwidth") is None
    assert _interface(host, guest.vm, guest.mac, inactive=True).find("bandwidth") is None
    assert "police" not in _tc("filter", "show", "dev", tap, "parent", "ffff:")
    inbound = run_cli("vm", "nic", "update", guest.vm, guest.mac, "--inbound", "500")
    assert_one_line_error(inbound, 6, "lacks the tc police action or sfq qdisc")
    assert _interface(host, guest.vm, guest.mac).find("bandwidth") is None
    assert "htb" not in _tc("qdisc", "show", "dev", tap)


def test_config_only_change_leaves_running_vm(guest: Guest, host: Host) -> None:
    try:
        nic = _json("vm", "nic", "update", guest.vm, guest.mac, "--outbound", "10mbit,,32",
                    "--inbound", "2000", "--config-only", "--json")
        assert (nic["outbound"], nic["inbound"]) == ("1220,,32", "2000")
        saved = _interface(host, guest.vm, guest.mac, inactive=True)
        assert dict(saved.find("bandwidth/outbound").attrib) == {"average": "1220",
                                                                 "burst": "32"}
        assert saved.find("bandwidth/inbound").get("average") == "2000"
        assert _interface(host, guest.vm, guest.mac).find("bandwidth") is None
        cleared = _json("vm", "nic", "update", guest.vm, guest.mac, "--outbound", "none",
                        "--config-only", "--json")
        assert (cleared["outbound"], cleared["inbound"]) == (None, "2000")
    finally:
        run_cli("vm", "nic", "update", guest.vm, guest.mac, "--outbound", "none",
                "--inbound", "none", "--config-only")
    assert _interface(host, guest.vm, guest.mac, inactive=True).find("bandwidth") is None


def test_vlan_on_plain_network_refused(guest: Guest, host: Host) -> None:
    for args in (("update", guest.vm, guest.mac, "--vlan", "10"),
                 ("update", guest.vm, guest.mac, "--trunk", "10,20"),
                 ("add", guest.vm, "--network", guest.network, "--vlan", "10",
                  "--config-only")):
        result = run_cli("vm", "nic", *args)
        assert_one_line_error(result, 2, "is not an Open vSwitch or SR-IOV network")
        assert "Open vSwitch" in result.stderr
    assert len(_json("vm", "nic", "list", guest.vm, "--json")) == 1
    assert _interface(host, guest.vm, guest.mac).find("vlan") is None


@pytest.mark.parametrize("args, message", [
    (("--outbound", "fast"), "bad rate 'fast'"),
    (("--inbound", "10,5"), "peak 5 KiB/s is below the average 10"),
    (("--vlan", "5000"), "invalid VLAN tag 5000"),
    ((), "nothing to change"),
])
def test_bad_values_refused_in_one_line(guest: Guest, args: tuple[str, ...],
                                        message: str) -> None:
    assert_one_line_error(run_cli("vm", "nic", "update", guest.vm, guest.mac, *args), 2,
                          message)
