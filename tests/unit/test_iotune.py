"""Disk I/O limits: merging changes (groups, 0, refusals) and the <iotune> XML model."""

from __future__ import annotations

import pytest

from kvmops.errors import ValidationError
from kvmops.vm.domxml import DomainDocument, parse_disk
from kvmops.vm.iotune import IoTune, merge

DOMAIN = """<domain type='qemu'><name>t</name><devices>
<disk type='file' device='disk'><driver name='qemu' type='raw' cache='none' io='native'/>
<source file='/var/lib/kvmops/images/t.raw'/><target dev='vdb' bus='virtio'/>
<iotune><total_iops_sec>200</total_iops_sec><read_bytes_sec>1048576</read_bytes_sec>
<write_bytes_sec>0</write_bytes_sec></iotune></disk>
<disk type='file' device='disk'><driver name='qemu' type='qcow2'/>
<source file='/var/lib/kvmops/images/u.qcow2'/><target dev='vdc' bus='virtio'/></disk>
</devices></domain>"""


def test_parse_reads_io_mode_and_nonzero_limits() -> None:
    doc = DomainDocument(DOMAIN)
    vdb, vdc = doc.find_disk("vdb"), doc.find_disk("vdc")
    assert vdb is not None and vdc is not None
    assert (vdb.io, vdb.cache) == ("native", "none")
    assert vdb.iotune == {"total_iops_sec": 200, "read_bytes_sec": 1048576}
    assert vdc.iotune == {} and vdc.io is None
    assert IoTune.from_libvirt(vdb.iotune).describe() == "total_iops=200 read_bytes_sec=1048576"


def test_set_disk_iotune_replaces_and_removes() -> None:
    doc = DomainDocument(DOMAIN)
    doc.set_disk_iotune("vdc", IoTune(write_iops=50).libvirt())
    doc.set_disk_iotune("vdb", IoTune().libvirt())
    again = DomainDocument(doc.to_xml())
    assert again.find_disk("vdc").iotune == {"write_iops_sec": 50}  # type: ignore[union-attr]
    assert again.find_disk("vdb").iotune == {}  # type: ignore[union-attr]
    assert "<iotune" not in (again.disk_device_xml("vdb") or "")


def test_disk_element_round_trips_io_and_limits() -> None:
    from lxml import etree

    from kvmops.vm.domxml import disk_xml

    spec = DomainDocument(DOMAIN).find_disk("vdb")
    assert spec is not None
    back = parse_disk(etree.fromstring(disk_xml(spec)))
    assert (back.io, back.iotune) == ("native", spec.iotune)


def test_merge_keeps_other_limits_and_zero_removes() -> None:
    current = IoTune(total_iops=200, read_bytes_sec=1024)
    assert merge(current, {"write_bytes_sec": 2048, "total_iops": None}) == \
        IoTune(total_iops=200, read_bytes_sec=1024, write_bytes_sec=2048)
    assert merge(current, {"total_iops": 0}) == IoTune(read_bytes_sec=1024)


def test_merge_a_total_replaces_sides_and_back() -> None:
    assert merge(IoTune(read_iops=10, write_iops=20), {"total_iops": 50}) == \
        IoTune(total_iops=50)
    assert merge(IoTune(total_bytes_sec=4096), {"read_bytes_sec": 1024}) == \
        IoTune(read_bytes_sec=1024)


@pytest.mark.parametrize(("changes", "words"), [
    ({"total_iops": 10, "read_iops": 5}, "cannot both be set"),
    ({"total_iops": -1}, "between 0 and"),
    ({"iops": 1}, "unknown I/O limit iops"),
])
def test_merge_refuses(changes: dict[str, int], words: str) -> None:
    with pytest.raises(ValidationError, match=words):
        merge(IoTune(), changes)


class FakeDomain:
    """What kvmops.vm.iotune asks of a domain; records the changes."""

    def __init__(self, running: bool, persistent: bool = True) -> None:
        self.running, self.persistent = running, persistent
        self.set_calls: list[tuple[str, dict[str, int], bool, bool]] = []
        self.defined: list[str] = []

    def is_active(self) -> bool:
        return self.running

    def is_persistent(self) -> bool:
        return self.persistent

    def xml(self, *, inactive: bool = False, what: str | None = None) -> str:
        return DOMAIN

    def set_block_iotune(self, target: str, limits: dict[str, int], *, live: bool,
                         config: bool, what: str) -> None:
        self.set_calls.append((target, dict(limits), live, config))

    def redefine(self, xml: str, what: str | None = None) -> None:
        self.defined.append(xml)


class FakeHost:
    def __init__(self, domain: FakeDomain) -> None:
        self.domain = domain

    def lookup(self, name: str) -> FakeDomain:
        return self.domain


def test_apply_running_sets_every_limit_live_and_in_the_definition() -> None:
    from kvmops.vm import iotune

    domain = FakeDomain(running=True)
    result = iotune.apply(FakeHost(domain), "t", "vdb", {"read_iops": 30})  # type: ignore[arg-type]
    assert domain.set_calls == [("vdb", {
        "total_iops_sec": 0, "read_iops_sec": 30, "write_iops_sec": 0,
        "total_bytes_sec": 0, "read_bytes_sec": 1048576, "write_bytes_sec": 0}, True, True)]
    assert (result.live, result.config, domain.defined) == (True, True, [])


def test_apply_shut_off_or_config_only_redefines() -> None:
    from kvmops.vm import iotune

    for domain, config_only in ((FakeDomain(running=False), False),
                                (FakeDomain(running=True), True)):
        result = iotune.apply(FakeHost(domain), "t", "vdc", {"write_bytes_sec": 4096},  # type: ignore[arg-type]
                              config_only=config_only)
        assert domain.set_calls == [] and (result.live, result.config) == (False, True)
        disk = DomainDocument(domain.defined[0]).find_disk("vdc")
        assert disk is not None and disk.iotune == {"write_bytes_sec": 4096}


def test_apply_refusals() -> None:
    from kvmops.errors import NotFoundError
    from kvmops.vm import iotune

    with pytest.raises(ValidationError, match="transient"):
        iotune.apply(FakeHost(FakeDomain(running=True, persistent=False)), "t", "vdb",  # type: ignore[arg-type]
                     {"total_iops": 1}, config_only=True)
    with pytest.raises(NotFoundError, match="VM 't' has no disk vdz"):
        iotune.apply(FakeHost(FakeDomain(running=True)), "t", "vdz", {"total_iops": 1})  # type: ignore[arg-type]
