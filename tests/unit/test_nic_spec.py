"""NIC specs: --nic parsing, MAC checks, the <interface> XML and its edits."""

from __future__ import annotations

import pytest

from kvmops.errors import ValidationError
from kvmops.vm.domxml import (
    DiskSpec,
    DomainDocument,
    DomainSpec,
    NicSpec,
    nic_xml,
    parse_xml,
    validate_mac,
)
from kvmops.vm.lifecycle import CreateRequest, new_mac, requested_nics


def test_parse_network_with_model_and_mac() -> None:
    nic = NicSpec.parse("network=lab,model=e1000,mac=52:54:00:AB:cd:01")
    assert (nic.kind, nic.source, nic.model, nic.mac) == ("network", "lab", "e1000",
                                                         "52:54:00:ab:cd:01")


def test_parse_bridge_defaults_to_virtio() -> None:
    nic = NicSpec.parse("bridge=br0")
    assert (nic.kind, nic.source, nic.model, nic.mac) == ("bridge", "br0", "virtio", None)


@pytest.mark.parametrize("text, message", [
    ("", "invalid --nic"),
    ("network", "invalid --nic"),
    ("network=", "invalid --nic"),
    ("network=a,bridge=b", "exactly one of network= or bridge="),
    ("model=virtio", "exactly one of network= or bridge="),
    ("network=a,tag=3", "unknown key"),  # vlan= is a key: tests/unit/test_ovs_nic_xml.py
    ("network=a,network=b", "given twice"),
    ("network=a,model=ne2k_pci", "unknown NIC model"),
    ("network=a,mac=52:54:00:00:00", "invalid MAC"),
    ("network=a,mac=01:00:5e:00:00:01", "multicast"),
    ("network=a,mac=00:00:00:00:00:00", "not a usable address"),
    ("bridge=-x", "invalid bridge name '-x'"),
    ("bridge=../br0", "invalid bridge name"),
    ("bridge=a-bridge-name-too-long", "at most 15 characters"),
    ("network=lab net", "invalid network name"),
    ("network=a,queues=2,model=e1000", "needs the virtio model"),
    ("network=a,queues=0", "invalid number of NIC queues"),
    ("network=a,queues=two", "queues= must be a number"),
    ("network=a,boot=0", "invalid NIC boot order 0"),
    ("network=a,boot=100", "invalid NIC boot order 100"),
])
def test_parse_refusals(text: str, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        NicSpec.parse(text)


def test_validate_mac_lowercases_unicast() -> None:
    assert validate_mac("02:AA:bb:00:00:01") == "02:aa:bb:00:00:01"


def test_interface_xml_round_trip() -> None:
    nic = NicSpec(kind="network", source="lab", model="rtl8139", mac="52:54:00:00:00:07",
                  link="down")
    el = parse_xml(nic_xml(nic))
    assert el.tag == "interface" and el.get("type") == "network"
    assert el.find("source").get("network") == "lab"
    assert el.find("model").get("type") == "rtl8139"
    assert el.find("mac").get("address") == "52:54:00:00:00:07"
    assert el.find("link").get("state") == "down"
    spec = DomainSpec(name="v", memory_bytes=64 * 1024**2, nics=[nic])
    back = DomainSpec.from_xml(spec.to_xml()).nics
    assert back == [nic]


def test_document_finds_and_edits_nic_by_mac() -> None:
    spec = DomainSpec(name="v", memory_bytes=64 * 1024**2, nics=[
        NicSpec(kind="network", source="lab", mac="52:54:00:00:00:01"),
        NicSpec(kind="bridge", source="br0", mac="52:54:00:00:00:02")])
    doc = DomainDocument(spec.to_xml())
    assert doc.interface_macs() == ["52:54:00:00:00:01", "52:54:00:00:00:02"]
    assert doc.nic_device_xml("52:54:00:00:00:03") is None
    updated = doc.set_nic_link("52:54:00:00:00:02", "down")
    assert 'state="down"' in updated and "br0" in updated
    assert [n.link for n in doc.nics()] == [None, "down"]


def test_request_nics_legacy_first_then_nic_options() -> None:
    req = CreateRequest(name="v", memory=64 * 1024**2, network="lab", mac="52:54:00:00:00:AA",
                        nics=[NicSpec.parse("bridge=br0,model=e1000")])
    nics = requested_nics(req)
    assert [(n.kind, n.source, n.model, n.mac) for n in nics] == [
        ("network", "lab", "virtio", "52:54:00:00:00:aa"), ("bridge", "br0", "e1000", None)]


def test_request_refuses_a_bad_bridge_or_network_name() -> None:
    with pytest.raises(ValidationError, match="invalid bridge name '--help'"):
        requested_nics(CreateRequest(name="web1", memory=1 << 28, bridge="--help"))
    with pytest.raises(ValidationError, match="invalid network name"):
        requested_nics(CreateRequest(name="web1", memory=1 << 28, network="a/b"))


def test_request_refuses_duplicate_macs_and_stray_mac() -> None:
    dup = CreateRequest(name="v", memory=64 * 1024**2, nics=[
        NicSpec.parse("network=a,mac=52:54:00:00:00:01"),
        NicSpec.parse("network=b,mac=52:54:00:00:00:01")])
    with pytest.raises(ValidationError, match="given to two NICs"):
        requested_nics(dup)
    with pytest.raises(ValidationError, match="--mac needs --network or --bridge"):
        requested_nics(CreateRequest(name="v", memory=64 * 1024**2, mac="52:54:00:00:00:01"))
    with pytest.raises(ValidationError, match="either --network or --bridge"):
        requested_nics(CreateRequest(name="v", memory=64 * 1024**2, network="a", bridge="b"))


def test_new_mac_is_unicast_and_avoids_taken() -> None:
    taken = {new_mac(set()) for _ in range(20)}
    for _ in range(50):
        mac = new_mac(taken)
        assert mac not in taken and validate_mac(mac) == mac and mac.startswith("52:54:00:")


def test_queues_and_boot_order_round_trip() -> None:
    nic = NicSpec.parse("network=lab,queues=4,boot=1")
    assert (nic.queues, nic.boot_order) == (4, 1)
    el = parse_xml(nic_xml(nic))
    assert el.find("driver").get("queues") == "4" and el.find("boot").get("order") == "1"
    spec = DomainSpec(name="v", memory_bytes=64 * 1024**2, nics=[nic])
    assert DomainSpec.from_xml(spec.to_xml()).nics == [nic]


def test_nic_boot_order_moves_disks_to_per_device_boot() -> None:
    """libvirt refuses <os><boot dev> beside a device's <boot order>: with a NIC boot
    position the disks (then cdroms) get the positions after it, the NIC keeps its own."""
    spec = DomainSpec(
        name="v", memory_bytes=64 * 1024**2, boot=["hd", "cdrom"],
        disks=[DiskSpec(target="vda", source="/i/a.qcow2"),
               DiskSpec(target="hdc", source="/i/d.iso", fmt="raw", bus="ide",
                        device="cdrom", readonly=True),
               DiskSpec(target="vdb", source="/i/b.qcow2")],
        nics=[NicSpec(kind="network", source="lab", boot_order=2)])
    root = parse_xml(spec.to_xml())
    assert root.find("os/boot") is None
    orders = {d.find("target").get("dev"): d.find("boot").get("order")
              for d in root.findall("devices/disk")}
    assert orders == {"vda": "1", "vdb": "3", "hdc": "4"}
    assert root.find("devices/interface/boot").get("order") == "2"
    doc = DomainDocument(spec.to_xml())
    assert not doc.boots_by_device_kind() and doc.boot_orders() == {1, 2, 3, 4}
    # Rebuilt from the typed model: the same positions again.
    assert DomainSpec.from_element(root).to_xml() == spec.to_xml()


def test_without_a_nic_boot_order_the_os_boot_list_stays() -> None:
    spec = DomainSpec(name="v", memory_bytes=64 * 1024**2,
                      disks=[DiskSpec(target="vda", source="/i/a.qcow2")],
                      nics=[NicSpec(kind="network", source="lab", queues=2)])
    root = parse_xml(spec.to_xml())
    assert [b.get("dev") for b in root.findall("os/boot")] == ["hd"]
    assert root.find("devices/disk/boot") is None
    assert DomainDocument(spec.to_xml()).boots_by_device_kind()
