"""Domain XML model: golden files and round trips (regenerate with KVMOPS_REGEN=1)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from kvmops.errors import ValidationError
from kvmops.vm.domxml import DiskSpec, DomainSpec, NicSpec, Topology, validate_name
from kvmops.vm.lifecycle import DiskRequest

FIXTURES = Path(__file__).parent.parent / "fixtures" / "domxml"


def _golden(name: str, text: str) -> None:
    path = FIXTURES / f"{name}-out.xml"
    if os.environ.get("KVMOPS_REGEN") == "1" or not path.exists():
        path.write_text(text)
    assert text == path.read_text()


def tiny_spec() -> DomainSpec:
    return DomainSpec(
        name="tiny", memory_bytes=256 * 1024**2, vcpus=2, domain_type="qemu",
        topology=Topology(2, 1, 1), kernel="/g/vmlinuz", initrd="/g/initrd.img",
        cmdline="console=ttyS0",
        disks=[DiskSpec(target="vda", source="/img/tiny-vda.qcow2")],
        nics=[NicSpec(kind="network", source="default", mac="52:54:00:00:00:01")],
    )


def test_tiny_guest_xml_golden() -> None:
    _golden("tiny-direct-kernel", tiny_spec().to_xml())


def test_cdrom_bridge_xml_golden() -> None:
    spec = DomainSpec(
        name="installer", memory_bytes=2 * 1024**3, vcpus=1, domain_type="kvm",
        boot=["cdrom", "hd"],
        disks=[DiskSpec(target="vda", source="/img/a.raw", fmt="raw"),
               DiskSpec(target="hdc", source="/iso/d.iso", fmt="raw", bus="ide",
                        device="cdrom", cache=None)],
        nics=[NicSpec(kind="bridge", source="br0")], agent_channel=False,
    )
    _golden("cdrom-bridge", spec.to_xml())


def test_round_trip() -> None:
    spec = tiny_spec()
    back = DomainSpec.from_xml(spec.to_xml())
    assert back.name == "tiny"
    assert back.memory_bytes == spec.memory_bytes
    assert back.topology == spec.topology
    assert back.kernel == "/g/vmlinuz" and back.cmdline == "console=ttyS0"
    assert back.acpi and back.apic and back.agent_channel
    assert back.disks[0].source == "/img/tiny-vda.qcow2" and back.disks[0].cache == "none"
    assert back.nics[0].mac == "52:54:00:00:00:01"


def test_parse_live_libvirt_xml() -> None:
    spec = DomainSpec.from_xml((FIXTURES / "live-in.xml").read_text())
    assert spec.domain_type == "qemu"
    assert spec.vnc_port == 5900
    assert spec.disks[0].node_name == "libvirt-1-format"
    assert spec.disks[0].alias == "virtio-disk0"
    assert spec.memory_bytes == 262144 * 1024


def test_topology_must_match_vcpus() -> None:
    spec = tiny_spec()
    spec.vcpus = 3
    with pytest.raises(ValidationError, match="topology"):
        spec.to_xml()


@pytest.mark.parametrize("name", ["a", "web-01", "db_2.prod", "x" * 64])
def test_valid_names(name: str) -> None:
    assert validate_name(name) == name


@pytest.mark.parametrize("name", ["", "-a", "a b", "a/b", "x" * 65, "é"])
def test_invalid_names(name: str) -> None:
    with pytest.raises(ValidationError, match="invalid VM name"):
        validate_name(name)


def test_bad_mac() -> None:
    with pytest.raises(ValidationError, match="MAC"):
        NicSpec(kind="network", source="default", mac="zz:00")


def test_disk_request_parse() -> None:
    assert DiskRequest.parse("size=64M").size == 64 * 1024**2
    req = DiskRequest.parse("path=/a.raw,format=raw,bus=sata")
    assert (str(req.path), req.fmt, req.bus) == ("/a.raw", "raw", "sata")
    for bad in ("size=12XB", "64M", "size=1G,path=/a", "colour=red,size=1G"):
        with pytest.raises(ValidationError):
            DiskRequest.parse(bad)
