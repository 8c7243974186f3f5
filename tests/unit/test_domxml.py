"""Domain XML model: golden files and round trips (regenerate with KVMOPS_REGEN=1)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from kvmops.errors import NotFoundError, ValidationError
from kvmops.vm.domxml import (
    DiskSpec,
    DomainDocument,
    DomainSpec,
    NicSpec,
    OwnedFile,
    SnapshotDiskSpec,
    SnapshotDocument,
    Topology,
    format_node,
    has_agent_channel,
    snapshot_xml,
    storage_node,
    validate_name,
)
from kvmops.vm.lifecycle import DiskRequest

FIXTURES = Path(__file__).parent.parent / "fixtures" / "domxml"


def _golden(name: str, text: str) -> None:
    """Compare with the golden file; a missing one fails (write it with KVMOPS_REGEN=1
    and review it), it is never created silently."""
    path = FIXTURES / f"{name}-out.xml"
    if os.environ.get("KVMOPS_REGEN") == "1":
        path.write_text(text)
    assert path.exists(), f"golden file {path} is missing: run with KVMOPS_REGEN=1 and review it"
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


# ---------------------------------------------------------------- editing existing XML
def test_missing_golden_file_fails_and_is_not_written(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(globals(), "FIXTURES", tmp_path)
    monkeypatch.delenv("KVMOPS_REGEN", raising=False)
    with pytest.raises(AssertionError, match="missing"):
        _golden("nothing-here", "<domain/>")
    assert not (tmp_path / "nothing-here-out.xml").exists()


def test_clone_edit_keeps_what_kvmops_does_not_model() -> None:
    """A clone's edits (name, no UUID/MACs, new disk file, owned files) leave every other
    element of libvirt's XML as it was (golden)."""
    doc = DomainDocument((FIXTURES / "live-in.xml").read_text())
    doc.for_clone("copy")
    doc.point_disk("vda", "/img/copy-vda.qcow2", "qcow2")
    doc.set_owned_files([OwnedFile("/img/copy-vda.qcow2", "qcow2")])
    text = doc.to_xml()
    _golden("clone-edit", text)
    again = DomainDocument(text)
    assert again.name == "copy"
    assert again.find_disk("vda") is not None
    assert again.disk_files() == {"vda": ("/img/copy-vda.qcow2", "qcow2")}
    assert again.owned_files() == [OwnedFile("/img/copy-vda.qcow2", "qcow2")]
    assert "<uuid>" not in text and "<backingStore" not in text
    assert "<emulator>/usr/bin/qemu-system-x86_64</emulator>" in text  # not modelled, kept


def test_point_disk_of_a_missing_target_is_refused() -> None:
    doc = DomainDocument(tiny_spec().to_xml())
    with pytest.raises(NotFoundError, match="no disk vdz"):
        doc.point_disk("vdz", "/x.qcow2", "qcow2")


def test_live_names_come_from_one_place() -> None:
    doc = DomainDocument((FIXTURES / "live-in.xml").read_text())
    assert format_node(1) == "libvirt-1-format" and storage_node(1) == "libvirt-1-storage"
    disk = doc.find_disk("vda")
    assert disk is not None
    assert disk.node_name == format_node(1) and disk.storage_node_name == storage_node(1)
    assert doc.disk_nodes() == {"libvirt-1-format": "vda"}
    assert DomainDocument(tiny_spec().to_xml()).disk_nodes() == {}  # not running: no nodes


def test_agent_channel_is_found_by_its_target_name_only() -> None:
    assert has_agent_channel(tiny_spec().to_xml())
    assert has_agent_channel((FIXTURES / "live-in.xml").read_text())
    without = tiny_spec()
    without.agent_channel = False
    assert not has_agent_channel(without.to_xml())
    # The name in a path or another channel's text is not the agent's port.
    decoy = ("<domain><devices><channel type='unix'><source path='/x/org.qemu.guest_agent.0'/>"
             "<target type='virtio' name='org.other.0'/></channel></devices></domain>")
    assert not has_agent_channel(decoy)


def test_external_snapshot_request_golden() -> None:
    text = snapshot_xml("s1", description="before upgrade", memory="no", disks=[
        SnapshotDiskSpec("vda", "external", "/img/a.s1.qcow2"),
        SnapshotDiskSpec("hdc", "no")])
    _golden("snapshot-external", text)


def test_snapshot_document_reads_and_repoints() -> None:
    inner = tiny_spec().to_xml()
    xml = (f"<domainsnapshot><name>s1</name><state>running</state><creationTime>1700000000"
           f"</creationTime><memory snapshot='no'/><parent><name>s0</name></parent><disks>"
           f"<disk name='vda' snapshot='external' type='file'><source file='/img/o.qcow2'/>"
           f"</disk><disk name='hdc' snapshot='no'/></disks>{inner}</domainsnapshot>")
    doc = SnapshotDocument(xml)
    assert (doc.name, doc.state, doc.parent, doc.created) == ("s1", "running", "s0", 1700000000)
    assert doc.memory_mode == "no"
    assert doc.disks() == [SnapshotDiskSpec("vda", "external", "/img/o.qcow2"),
                           SnapshotDiskSpec("hdc", "no")]
    domain = doc.domain()
    assert domain is not None and domain.disk_files() == {
        "vda": ("/img/tiny-vda.qcow2", "qcow2")}
    doc.set_overlay("vda", "/img/fresh.qcow2")
    assert SnapshotDocument(doc.to_xml()).disks()[0].overlay == "/img/fresh.qcow2"


def test_chain_files_with_formats_of_a_live_backing_chain() -> None:
    xml = ("<domain><devices><disk type='file' device='disk'><driver name='qemu' type='qcow2'/>"
           "<source file='/img/ov.qcow2' index='2'/><backingStore type='file' index='1'>"
           "<format type='raw'/><source file='/img/base.raw'/><backingStore/></backingStore>"
           "<target dev='vda' bus='virtio'/></disk><disk type='file' device='cdrom'>"
           "<target dev='hdc' bus='ide'/></disk></devices></domain>")
    assert DomainDocument(xml).chain_files() == [("/img/ov.qcow2", "qcow2"),
                                                 ("/img/base.raw", "raw")]


def test_definition_edits_of_format_memory_and_vcpus() -> None:
    doc = DomainDocument((FIXTURES / "live-in.xml").read_text())
    doc.set_disk_format("vda", "raw")
    doc.set_memory(512 * 1024**2, maximum=1024**3)
    doc.set_vcpus(2)
    spec = DomainSpec.from_xml(doc.to_xml())
    assert spec.disks[0].fmt == "raw"
    assert spec.memory_bytes == 1024**3 and "<currentMemory unit=\"KiB\">524288<" in doc.to_xml()
    assert spec.vcpus == 2
    assert "<emulator>" in doc.to_xml()  # everything else kept
    with pytest.raises(NotFoundError):
        doc.set_disk_format("vdq", "raw")
    topo = DomainDocument(tiny_spec().to_xml())  # 2 sockets x 1 x 1
    topo.set_vcpus(2)
    assert topo.spec().topology == Topology(2, 1, 1)
    topo.set_vcpus(3)  # no longer matches: the topology goes, libvirt's default applies
    assert topo.spec().topology is None and topo.spec().vcpus == 3
