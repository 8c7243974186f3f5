"""SR-IOV model: sysfs discovery (never through a symlink out of the root), the driver
rate table, VF setting checks, and the libvirt XML of the three attach methods (valid
against libvirt's own schemas)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from kvmops.errors import ValidationError
from kvmops.host.sriov import parse_vfinfo, write_fake_tree
from kvmops.network.sriov import (
    DRIVER_RATES,
    discover,
    hostdev_network_xml,
    hostdev_nics,
    hostdev_xml,
    interface_xml,
    parse_onoff,
    parse_pci,
    pci_addresses_in,
    validate_pf_name,
    validate_rate,
    validate_vf_mac,
    validate_vf_vlan,
)


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "sys"
    write_fake_tree(root, "kvt0", 63, "ixgbe")
    write_fake_tree(root, "kvt1", 8, "i40e", numvfs=2, link="down")
    return root


def test_discover_reads_pfs_vfs_driver_and_link(tree: Path) -> None:
    pfs = {pf.name: pf for pf in discover(tree)}
    assert set(pfs) == {"kvt0", "kvt1"}
    ixgbe, i40e = pfs["kvt0"], pfs["kvt1"]
    assert (ixgbe.driver, ixgbe.totalvfs, ixgbe.numvfs, ixgbe.link, ixgbe.speed) == (
        "ixgbe", 63, 63, "up", 10000)
    assert [vf.index for vf in ixgbe.vfs] == list(range(63))
    assert len({vf.pci for vf in ixgbe.vfs}) == 63
    assert ixgbe.vfs[9].pci == "0000:03:11.1"
    assert (i40e.driver, i40e.totalvfs, i40e.numvfs, i40e.link, i40e.speed) == (
        "i40e", 8, 2, "down", None)
    assert [vf.pci for vf in i40e.vfs] == ["0000:04:10.0", "0000:04:10.1"]
    assert [pf.name for pf in discover(tree, "kvt1")] == ["kvt1"]
    assert discover(tree, "nothere") == []
    assert discover(tree / "missing") == []


def test_a_symlink_out_of_the_root_is_never_followed(tree: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "sriov_totalvfs").write_text("7\n")
    (outside / "sriov_numvfs").write_text("7\n")
    # A PF whose device lies outside the root is not a PF here.
    evil = tree / "class" / "net" / "evil0"
    evil.mkdir()
    (evil / "device").symlink_to(outside)
    # A VF link and a driver link out of the root are ignored.
    device = (tree / "class" / "net" / "kvt1" / "device").resolve()
    (device / "virtfn5").symlink_to(outside)
    (device / "driver").unlink()
    (device / "driver").symlink_to("/sys/bus/pci/drivers")
    pfs = {pf.name: pf for pf in discover(tree)}
    assert "evil0" not in pfs
    assert [vf.index for vf in pfs["kvt1"].vfs] == [0, 1]
    assert pfs["kvt1"].driver is None


def test_driver_rate_table() -> None:
    assert (DRIVER_RATES["ixgbe"].low, DRIVER_RATES["ixgbe"].high) == (11, 10000)
    assert (DRIVER_RATES["i40e"].low, DRIVER_RATES["i40e"].high) == (50, 10000)
    with pytest.raises(ValidationError, match=r"VF rate 5 Mbps is outside the ixgbe range "
                                              r"11\.\.10000 Mbps \(PF 'kvt0'\)"):
        validate_rate(5, "ixgbe", "kvt0")
    with pytest.raises(ValidationError, match="outside the ixgbe range"):
        validate_rate(10001, "ixgbe", "kvt0")
    assert validate_rate(11, "ixgbe", "kvt0") == 11
    assert validate_rate(10000, "ixgbe", "kvt0") == 10000
    # i40e silently raises < 50 to 50; kvmops refuses instead (documented choice).
    with pytest.raises(ValidationError, match=r"outside the i40e range 50\.\.10000"):
        validate_rate(30, "i40e", "kvt1")
    assert validate_rate(50, "i40e", "kvt1") == 50
    # Unknown drivers: only the link speed bounds it; None/0 is no limit.
    assert validate_rate(5, "mlx5_core", "p0") == 5
    with pytest.raises(ValidationError, match="above the link speed"):
        validate_rate(2000, "mlx5_core", "p0", speed=1000)
    assert validate_rate(None, "ixgbe", "kvt0") == 0
    assert validate_rate(0, "ixgbe", "kvt0") == 0
    with pytest.raises(ValidationError):
        validate_rate(-1, "ixgbe", "kvt0")


def test_vf_setting_checks() -> None:
    assert validate_vf_mac("52:54:00:AA:BB:CC") == "52:54:00:aa:bb:cc"
    for bad in ("00:00:00:00:00:00", "01:00:5e:00:00:01", "52:54:00:aa:bb", "x"):
        with pytest.raises(ValidationError):
            validate_vf_mac(bad)
    assert validate_vf_vlan(None) == 0
    assert validate_vf_vlan(4094) == 4094
    for tag in (4095, -1, 5000):
        with pytest.raises(ValidationError, match=r"1\.\.4094"):
            validate_vf_vlan(tag)
    assert parse_onoff("on", "--trust") is True
    assert parse_onoff("OFF", "--trust") is False
    with pytest.raises(ValidationError, match="use on or off"):
        parse_onoff("maybe", "--trust")
    for bad in ("../eth0", "a" * 16, "-x", ""):
        with pytest.raises(ValidationError):
            validate_pf_name(bad)
    assert parse_pci("0000:03:10.1") == (0, 3, 0x10, 1)
    with pytest.raises(ValidationError):
        parse_pci("03:10.1")


def test_vfinfo_of_ip_link_json() -> None:
    states = parse_vfinfo([
        {"vf": 0, "address": "52:54:00:00:00:01", "vlan_list": [{"vlan": 10}],
         "rate": {"max_tx": 100, "min_tx": 0}, "spoofchk": False, "trust": True},
        {"vf": 1, "address": "00:00:00:00:00:00", "rate": {"max_tx": 0}},
    ])
    assert states[0].mac == "52:54:00:00:00:01" and states[0].vlan == 10
    assert states[0].max_tx_rate == 100 and not states[0].spoofchk and states[0].trust
    assert states[1].is_reset and not states[0].is_reset


def _validate(tmp_path: Path, xml: str, schema: str) -> None:
    if shutil.which("virt-xml-validate") is None:
        pytest.fail("virt-xml-validate is missing: install libvirt-clients")
    path = tmp_path / f"{schema}.xml"
    path.write_text(xml)
    check = subprocess.run(["virt-xml-validate", str(path), schema], capture_output=True,
                           text=True, check=False)
    assert check.returncode == 0, (xml, check.stdout, check.stderr)


def _domain(device: str) -> str:
    return ("<domain type='kvm'><name>kvmops-test-sriov</name><memory unit='MiB'>64</memory>"
            "<os><type arch='x86_64'>hvm</type></os><devices>" + device
            + "</devices></domain>")


def test_the_three_attach_methods_are_valid_libvirt_xml(tmp_path: Path) -> None:
    iface = interface_xml("0000:03:10.1", "52:54:00:12:34:56", vlan=42)
    assert "type=\"hostdev\"" in iface and "managed=\"yes\"" in iface
    assert '<tag id="42"/>' in iface and 'function="0x1"' in iface
    _validate(tmp_path, _domain(iface), "domain")
    _validate(tmp_path, _domain(interface_xml("0000:03:10.2", "52:54:00:12:34:57")), "domain")
    plain = hostdev_xml("0000:03:17.6")
    assert 'mode="subsystem"' in plain and 'slot="0x17"' in plain
    _validate(tmp_path, _domain(plain), "domain")
    network = hostdev_network_xml("kvmops-test-vfpool", "kvt0")
    assert '<forward mode="hostdev" managed="yes"><pf dev="kvt0"/></forward>' in network
    _validate(tmp_path, network, "network")


def test_domain_xml_parsing_of_vf_nics() -> None:
    xml = _domain(interface_xml("0000:03:10.1", "52:54:00:12:34:56", vlan=42)
                  + hostdev_xml("0000:03:17.6"))
    assert pci_addresses_in(xml) == {"0000:03:10.1", "0000:03:17.6"}
    nics = hostdev_nics(xml)
    assert [(n.mac, n.pci, n.vlan) for n in nics] == [
        ("52:54:00:12:34:56", "0000:03:10.1", 42)]


def test_a_vm_holding_vfs_is_not_cloned() -> None:
    from kvmops.errors import StateError
    from kvmops.services.sriov import check_clone_sharing

    check_clone_sharing("a", _domain(""))
    with pytest.raises(StateError, match=r"cannot clone VM 'a': it holds PCI device\(s\) "
                                         r"0000:03:10\.1"):
        check_clone_sharing("a", _domain(interface_xml("0000:03:10.1", "52:54:00:12:34:56")))
