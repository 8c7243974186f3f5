"""``kvmops net`` against the real libvirtd: an isolated network with IPv4 DHCP and IPv6
(SLAAC and stateful DHCPv6, as dnsmasq is configured for them), a NAT network checked
for its XML, addresses and rules only (no guest traffic leaves this machine), the refusal
to delete a network a VM uses, and bad input as one line.

Test networks carry SESSION_PREFIX and 192.168.24x / fd00:24x prefixes, and are removed
even when a test fails."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from kvmops.host import networks as host_networks
from kvmops.host import ovs as host_ovs
from kvmops.host.connection import Host
from tests.conftest import SESSION_PREFIX, assert_one_line_error, run_cli

DNSMASQ_DIR = Path("/var/lib/libvirt/dnsmasq")


def remove_network(host: Host, name: str) -> None:
    """Stop and undefine a test network; never fails."""
    with contextlib.suppress(Exception):
        host_networks.stop(host, name)
    with contextlib.suppress(Exception):
        host_networks.undefine(host, name)


@pytest.fixture
def net_name(host: Host) -> Iterator[Callable[[str], str]]:
    """Test network names (removed after the test, whatever happened)."""
    made: list[str] = []

    def name(suffix: str) -> str:
        made.append(f"{SESSION_PREFIX}{suffix}")
        return made[-1]

    yield name
    for each in made:
        remove_network(host, each)


def _json(*args: str) -> object:
    result = run_cli(*args)
    assert result.code == 0, result.stderr
    return json.loads(result.stdout)


def _validate(xml: str, tmp_path: Path) -> None:
    if shutil.which("virt-xml-validate") is None:
        pytest.fail("virt-xml-validate is missing: install libvirt-clients")
    path = tmp_path / "network.xml"
    path.write_text(xml)
    check = subprocess.run(["virt-xml-validate", str(path), "network"], capture_output=True,
                           text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr


def test_isolated_network_with_dhcp_and_slaac(net_name: Callable[[str], str], host: Host,
                                              tmp_path: Path) -> None:
    name = net_name("iso")
    created = run_cli("net", "create", name, "--mode", "isolated", "--ipv4",
                      "192.168.246.1/24", "--dhcp", "192.168.246.10-192.168.246.50",
                      "--ipv6", "fd00:246::1/64")
    assert created.code == 0, created.stderr
    listed = _json("net", "list", "--json")
    assert isinstance(listed, list)
    mine = [n for n in listed if n["name"] == name]
    assert len(mine) == 1 and mine[0]["mode"] == "isolated" and mine[0]["active"] is True
    assert {"name", "mode", "active", "persistent", "autostart", "bridge"} <= set(mine[0])

    info = _json("net", "info", name, "--json")
    assert isinstance(info, dict)
    assert (info["ipv4"], info["dhcp"], info["ipv6"], info["ipv6_mode"], info["used_by"]) == (
        "192.168.246.1/24", "192.168.246.10-192.168.246.50", "fd00:246::1/64", "slaac", [])
    bridge = info["bridge"]
    assert bridge and len(bridge) <= 15
    # The bridge carries the network's addresses; dnsmasq serves the DHCP range and sends
    # router advertisements only (SLAAC) for the IPv6 prefix.
    addresses = subprocess.run(["ip", "-o", "addr", "show", "dev", bridge], text=True,
                               capture_output=True, check=True, timeout=30).stdout
    assert "192.168.246.1/24" in addresses and "fd00:246::1/64" in addresses
    conf = (DNSMASQ_DIR / f"{name}.conf").read_text()
    assert "dhcp-range=192.168.246.10,192.168.246.50" in conf
    assert "dhcp-range=fd00:246::1,ra-only" in conf
    _validate(host_networks.live_xml(host, name), tmp_path)
    assert _json("net", "leases", name, "--json") == []

    again = run_cli("net", "create", name, "--ipv4", "192.168.243.1/24")
    assert_one_line_error(again, 4, f"network '{name}' already exists")
    overlapping = run_cli("net", "create", net_name("overlap"), "--ipv4", "192.168.246.129/25")
    assert_one_line_error(overlapping, 2, "overlaps network", name, "192.168.246.0/24")

    stopped = run_cli("net", "stop", name)
    assert stopped.code == 0, stopped.stderr
    info = _json("net", "info", name, "--json")
    assert isinstance(info, dict) and info["active"] is False
    assert run_cli("net", "start", name).code == 0
    deleted = run_cli("net", "delete", name)
    assert deleted.code == 0, deleted.stderr
    assert_one_line_error(run_cli("net", "info", name), 3, f"network '{name}' not found")
    assert not (DNSMASQ_DIR / f"{name}.conf").exists()


def test_stateful_dhcpv6_network(net_name: Callable[[str], str]) -> None:
    name = net_name("dhcp6")
    created = run_cli("net", "create", name, "--ipv6", "fd00:245::1/64", "--ipv6-mode",
                      "dhcpv6-stateful", "--json")
    assert created.code == 0, created.stderr
    info = json.loads(created.stdout)
    assert (info["ipv6"], info["ipv6_mode"], info["dhcp6"], info["ipv4"]) == (
        "fd00:245::1/64", "dhcpv6-stateful", "fd00:245::1000-fd00:245::1fff", None)
    conf = (DNSMASQ_DIR / f"{name}.conf").read_text()
    assert "dhcp-range=fd00:245::1000,fd00:245::1fff,64" in conf
    assert "ra-only" not in conf
    assert run_cli("net", "delete", name).code == 0


def _nat_rules(subnet: str) -> list[str]:
    """libvirt's masquerading rules for ``subnet`` (libvirt 9 writes them with iptables)."""
    rules = subprocess.run(["iptables", "-w", "-t", "nat", "-S"], capture_output=True,
                           text=True, timeout=30, check=True).stdout
    return [line for line in rules.splitlines() if subnet in line and "MASQUERADE" in line]


def test_nat_network_xml_addresses_and_rules(net_name: Callable[[str], str], host: Host,
                                             tmp_path: Path) -> None:
    """A NAT network in the host's namespace: its XML, its bridge's address and libvirt's
    masquerading rules, then gone again. No guest sends anything through it."""
    name = net_name("nat")
    created = run_cli("net", "create", name, "--mode", "nat", "--ipv4", "192.168.244.1/24",
                      "--dhcp", "192.168.244.100-192.168.244.200", "--json")
    assert created.code == 0, created.stderr
    info = json.loads(created.stdout)
    assert (info["mode"], info["active"], info["ipv4"]) == ("nat", True, "192.168.244.1/24")
    xml = host_networks.live_xml(host, name)
    assert "<forward mode=\"nat\"" in xml.replace("'", "\"")
    _validate(xml, tmp_path)
    addresses = subprocess.run(["ip", "-o", "addr", "show", "dev", info["bridge"]], text=True,
                               capture_output=True, check=True, timeout=30).stdout
    assert "192.168.244.1/24" in addresses
    assert _nat_rules("192.168.244.0/24"), "libvirt added no MASQUERADE rule"
    assert run_cli("net", "delete", name).code == 0
    assert _nat_rules("192.168.244.0/24") == []


def test_delete_is_refused_while_a_vm_uses_the_network(
        net_name: Callable[[str], str], vm_factory: Callable[..., str]) -> None:
    name = net_name("used")
    created = run_cli("net", "create", name, "--ipv4", "192.168.242.1/24", "--dhcp",
                      "192.168.242.10-192.168.242.20")
    assert created.code == 0, created.stderr
    vm = vm_factory("--network", name)  # defined, not started
    refused = run_cli("net", "delete", name)
    assert_one_line_error(refused, 5, f"cannot delete network '{name}'", vm)
    info = _json("net", "info", name, "--json")
    assert isinstance(info, dict) and info["used_by"] == [vm] and info["active"] is True
    # No running VM uses it: it may stop (the VM then cannot start until it runs again).
    assert run_cli("net", "stop", name).code == 0
    assert_one_line_error(run_cli("net", "delete", name), 5, vm)
    assert run_cli("vm", "undefine", vm, "--remove-storage").code == 0
    deleted = run_cli("net", "delete", name)
    assert deleted.code == 0, deleted.stderr


def test_stateless_dhcpv6_network(net_name: Callable[[str], str]) -> None:
    """libvirt's dnsmasq gets the ra-stateless range beside its own ra-only line (the
    guest side, RA flags and name server: tests/integration/test_dhcpv6.py)."""
    name = net_name("dhcp6s")
    created = run_cli("net", "create", name, "--ipv6", "fd00:241::1/64", "--ipv6-mode",
                      "dhcpv6-stateless", "--json")
    assert created.code == 0, created.stderr
    info = json.loads(created.stdout)
    assert (info["ipv6"], info["ipv6_mode"], info["dhcp6"]) == (
        "fd00:241::1/64", "dhcpv6-stateless", None)
    conf = (DNSMASQ_DIR / f"{name}.conf").read_text()
    assert "dhcp-range=fd00:241::,ra-stateless,64" in conf
    assert json.loads(run_cli("net", "info", name, "--json").stdout)["ipv6_mode"] == (
        "dhcpv6-stateless")
    assert run_cli("net", "delete", name).code == 0


@pytest.mark.parametrize(("args", "code", "fragments"), [
    (["--ipv4", "192.168.241.1/24", "--dhcp", "192.168.99.10-192.168.99.20"], 2,
     ["192.168.99.10-192.168.99.20", "outside the subnet 192.168.241.0/24"]),
    (["--bridge", "kvmops-bridge-16"], 2, ["kvmops-bridge-16", "at most 15"]),
    (["--ipv6", "fd00:241::1/48"], 2, ["SLAAC needs a /64"]),
    (["--ipv6", "fd00:241::1/64", "--ipv6-mode", "dhcpv6-stateless", "--dhcp6",
      "fd00:241::10-fd00:241::20"], 2, ["not for --ipv6-mode dhcpv6-stateless"]),
    (["--mode", "bridge", "--bridge", "kvmopsnobr0"], 3, ["kvmopsnobr0", "does not exist"]),
])
def test_bad_input_is_one_line(net_name: Callable[[str], str], args: list[str], code: int,
                               fragments: list[str]) -> None:
    name = net_name("bad")
    assert_one_line_error(run_cli("net", "create", name, *args), code, *fragments)
    assert_one_line_error(run_cli("net", "info", name), 3, name)


def test_unknown_network_is_not_found() -> None:
    name = f"{SESSION_PREFIX}nosuchnet"
    for command in ("info", "start", "stop", "delete", "leases"):
        assert_one_line_error(run_cli("net", command, name), 3, f"network '{name}' not found")


@pytest.fixture
def test_bridge() -> Iterator[str]:
    """A Linux bridge with no ports (it carries nothing off the machine), removed after."""
    name = f"kvt{os.getpid() % 0xFFFFFF:x}b"
    subprocess.run(["ip", "link", "add", name, "type", "bridge"], check=True, timeout=30)
    try:
        yield name
    finally:
        subprocess.run(["ip", "link", "del", name], check=False, timeout=30)


def test_host_bridge_and_ovs_networks(net_name: Callable[[str], str], test_bridge: str,
                                      host: Host, tmp_path: Path) -> None:
    name = net_name("br")
    created = run_cli("net", "create", name, "--mode", "bridge", "--bridge", test_bridge,
                      "--autostart", "--json")
    assert created.code == 0, created.stderr
    info = json.loads(created.stdout)
    assert (info["mode"], info["bridge"], info["active"], info["autostart"]) == (
        "bridge", test_bridge, True, True)
    assert info["ipv4"] is None and info["ipv6"] is None  # the bridge's LAN owns those
    _validate(host_networks.live_xml(host, name), tmp_path)
    assert run_cli("net", "autostart", name, "--disable").code == 0
    info = _json("net", "info", name, "--json")
    assert isinstance(info, dict) and info["autostart"] is False

    ovs = net_name("ovs")
    ovs_bridge = f"{test_bridge}o"  # Open vSwitch's: made with the network, removed with it
    try:
        defined = run_cli("net", "create", ovs, "--mode", "ovs", "--bridge", ovs_bridge,
                          "--create-bridge", "--no-start", "--json")
        assert defined.code == 0, defined.stderr
        info = json.loads(defined.stdout)
        assert (info["mode"], info["bridge"], info["active"]) == ("ovs", ovs_bridge, False)
        xml = host_networks.live_xml(host, ovs)
        assert "openvswitch" in xml
        _validate(xml, tmp_path)
        for each in (name, ovs):
            assert run_cli("net", "delete", each).code == 0
        assert ovs_bridge not in host_ovs.bridges()
    finally:
        with contextlib.suppress(Exception):
            host_ovs.delete_bridge(ovs_bridge)
