"""Cold migration's pure parts (kvmops.services.coldmigration): the target volume's XML
(format named, exact size), volume names, the XML rewritten for the target's paths (UUID,
MACs and other devices kept, owned files naming the copies), the qcow2 header facts and
the preflight's rules on them (the one place of the blocker rules; the refusal is vm
migrate's, tests/unit/test_migration_live.py), and -- with fakes for both hosts -- a copy
whose read back differs or a cancel: the target's volumes are removed, nothing is
defined there and the source is never touched."""

from __future__ import annotations

import contextlib
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kvmops.errors import CancelledError, StorageError
from kvmops.host import pools as host_pools
from kvmops.host import transfer
from kvmops.host.migration_facts import qcow2_facts, snapshot_kind
from kvmops.host.transfer import Digest
from kvmops.migration.model import Blocker, MigrationOptions
from kvmops.migration.preflight import (
    DiskFact,
    MigrationFacts,
    PoolFact,
    TargetFacts,
    VmFacts,
    check,
)
from kvmops.paths import PathPolicy
from kvmops.services import coldmigration as cm
from kvmops.services.coldmigration import DiskMove
from kvmops.vm.domxml import DomainDocument, SnapshotDocument, parse_xml

DOMAIN = """<domain type='qemu'>
  <name>web1</name>
  <uuid>8d0e3c1e-8c5b-4d4e-9d3e-0a1b2c3d4e5f</uuid>
  <metadata><kvmops:vm xmlns:kvmops="https://kvmops.dev/xmlns/vm/1">
    <kvmops:file path="/src/images/web1.qcow2" format="qcow2"/>
  </kvmops:vm></metadata>
  <memory unit='KiB'>262144</memory>
  <os><type arch='x86_64' machine='pc'>hvm</type><kernel>/boot/vmlinuz</kernel></os>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2' cache='none'/>
      <source file='/src/images/web1.qcow2'/>
      <backingStore/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <disk type='file' device='disk'>
      <driver name='qemu' type='raw'/>
      <source file='/other/data.img'/>
      <target dev='vdb' bus='virtio'/>
    </disk>
    <disk type='file' device='cdrom'>
      <driver name='qemu' type='raw'/>
      <target dev='sda' bus='sata'/>
      <readonly/>
    </disk>
    <interface type='network'>
      <mac address='52:54:00:12:34:56'/>
      <source network='default'/>
      <model type='virtio'/>
    </interface>
  </devices>
</domain>"""


def _moves() -> list[DiskMove]:
    return [DiskMove("vda", "/src/images/web1.qcow2", "qcow2", 200, 64 << 20, "web1.qcow2",
                     "/dst/pool/web1.qcow2"),
            DiskMove("vdb", "/other/data.img", "raw", 100, 100, "data.img",
                     "/dst/pool/data.img")]


def test_volume_xml_names_the_format_and_the_exact_size() -> None:
    root = parse_xml(cm.volume_xml("web1.qcow2", 67108864, "qcow2"))
    assert root.findtext("name") == "web1.qcow2"
    assert root.find("capacity").get("unit") == "bytes"  # type: ignore[union-attr]
    assert root.findtext("capacity") == "67108864"
    assert root.find("target/format").get("type") == "qcow2"  # type: ignore[union-attr]
    raw = parse_xml(cm.volume_xml("d.img", 123, "raw"))
    assert raw.findtext("capacity") == "123" and raw.find("target/compat") is None


def test_volume_names_are_file_names_unless_clashing_or_invalid() -> None:
    moves = [DiskMove("vda", "/a/disk.qcow2", "qcow2"), DiskMove("vdb", "/b/disk.qcow2",
                                                                 "qcow2"),
             DiskMove("vdc", "/c/bad name.img", "raw")]
    cm.plan_volume_names("web1", moves)
    assert [m.volume for m in moves] == ["disk.qcow2", "web1-vdb.qcow2", "web1-vdc.raw"]


def test_rewritten_xml_points_at_the_copies_and_keeps_the_rest() -> None:
    doc = DomainDocument(cm.rewrite_xml(DOMAIN, _moves()))
    assert doc.disk_files() == {"vda": ("/dst/pool/web1.qcow2", "qcow2"),
                                "vdb": ("/dst/pool/data.img", "raw")}
    assert [o.path for o in doc.owned_files()] == ["/dst/pool/web1.qcow2",
                                                  "/dst/pool/data.img"]
    root = parse_xml(doc.to_xml())
    assert root.findtext("uuid") == "8d0e3c1e-8c5b-4d4e-9d3e-0a1b2c3d4e5f"
    assert doc.interface_macs() == ["52:54:00:12:34:56"]
    assert root.find("devices/disk/backingStore") is None
    assert doc.disk_device_kinds() == ["disk", "disk", "cdrom"]
    assert doc.spec().kernel == "/boot/vmlinuz"
    assert "/src/images" not in doc.to_xml()


def _qcow2_head(*, backing: bool = False, size: int = 64 << 20) -> bytes:
    head = bytearray(1 << 16)
    struct.pack_into(">4sIQIIQI", head, 0, b"QFI\xfb", 3, 512 if backing else 0,
                     8 if backing else 0, 16, size, 0)
    struct.pack_into(">I", head, 100, 104)
    return bytes(head)


def _cold(disk: DiskFact, *, copy: bool = True) -> list[Blocker]:
    """The preflight's blockers of a cold migration of a VM with ``disk``."""
    vm = VmFacts(name="web1", uuid="u", active=False, memory=0, disks=[disk])
    target = TargetFacts(pools={"p": PoolFact("p", True, 1 << 40, "/dst/pool", "dir")})
    return check(MigrationFacts(vm=vm, target=target),
                 MigrationOptions(target="h2", copy_storage=copy,
                                  target_pool="p" if copy else None),
                 source="h1", target="h2", kind="cold").blockers


def test_qcow2_header_gives_the_size_and_a_backing_file_blocks() -> None:
    def disk(head: bytes) -> DiskFact:
        found = DiskFact("vda", "disk", "file", "/x/a.qcow2", fmt="qcow2", length=200_000)
        qcow2_facts(found, head)
        return found

    sized = disk(_qcow2_head(size=1 << 30))
    assert sized.capacity == 1 << 30 and _cold(sized) == []
    [blocker] = _cold(disk(_qcow2_head(backing=True)))
    assert blocker.code == "backing-file" and "flatten" in blocker.remedy
    [bad] = _cold(disk(b"\0" * 512))
    assert bad.code == "disk" and "not a qcow2" in bad.message
    # On storage both hosts share (no copy) a backing file is a warning only.
    shared = disk(_qcow2_head(backing=True))
    shared.on_target = "p"
    assert _cold(shared, copy=False) == []


def test_check_copy_wants_every_byte_equal() -> None:
    move = _moves()[1]
    sent = Digest("a" * 64, 100)
    cm.check_copy(move, sent, Digest("a" * 64, 100))
    with pytest.raises(StorageError, match=r"differs from /other/data\.img"):
        cm.check_copy(move, sent, Digest("b" * 64, 100))
    with pytest.raises(StorageError, match="differs"):
        cm.check_copy(move, sent, Digest("a" * 64, 99))
    with pytest.raises(StorageError, match="is 101 bytes"):
        cm.check_copy(move, sent, Digest("a" * 64, 101))
    with pytest.raises(StorageError, match="99 of 100 bytes"):
        cm.check_copy(move, Digest("a" * 64, 99), Digest("a" * 64, 99))


# --------------------------------------------------------------------------- with fakes
class _Untouchable:
    """The source host: a migration that stops before the switch-over never uses it."""

    uri = "qemu+tcp://source/system"

    def lookup(self, name: str) -> Any:
        raise AssertionError("the source was touched")


class _Target:
    uri = "qemu+tcp://target/system"

    def __init__(self) -> None:
        self.defined: list[str] = []

    def define_domain(self, xml: str) -> None:
        self.defined.append(xml)


class _Disk:
    def __init__(self, path: str, length: int) -> None:
        self.path = path
        self.length = length


@pytest.fixture
def fake_storage(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[str]]:
    """host_pools and transfer replaced: volumes created and deleted are recorded."""
    seen: dict[str, list[str]] = {"created": [], "deleted": []}

    def create_volume(host: Any, pool: str, xml: str) -> str:
        name = parse_xml(xml).findtext("name") or ""
        seen["created"].append(name)
        return f"/dst/pool/{name}"

    def delete_volume(host: Any, pool: str, name: str) -> None:
        seen["deleted"].append(name)

    @contextlib.contextmanager
    def open_disk(host: Any, path: str, *, local: bool) -> Iterator[_Disk]:
        yield _Disk(path, 100 if path.endswith(".img") else 200)

    def send(source: _Disk, target: Any, pool: str, volume: str, **_: Any) -> Digest:
        return Digest("a" * 64, source.length)

    monkeypatch.setattr(host_pools, "create_volume", create_volume)
    monkeypatch.setattr(host_pools, "delete_volume", delete_volume)
    monkeypatch.setattr(transfer, "open_disk", open_disk)
    monkeypatch.setattr(transfer, "send", send)
    monkeypatch.setattr(transfer, "length_at", lambda host, path: 196_624)
    return seen


def _plan() -> Any:
    moves = _moves()
    for move in moves:
        move.path = ""
    return cm._Plan(vm="web1", uuid="u", xml=DOMAIN, pool="p", pool_dir="/dst/pool",
                    moves=moves)


def test_a_read_back_that_differs_removes_the_copies(fake_storage: dict[str, list[str]],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(transfer, "digest",
                        lambda disk, **_: Digest("f" * 64, disk.length))
    target = _Target()
    with pytest.raises(StorageError, match="differs"):
        cm._move(_Untouchable(), target, _plan(), src_local=False,  # type: ignore[arg-type]
                 dst_local=False, progress=None, cancelled=None)
    assert fake_storage["created"] == ["web1.qcow2", "data.img"]
    assert sorted(fake_storage["deleted"]) == ["data.img", "web1.qcow2"]
    assert target.defined == []


def test_a_cancel_after_the_copies_removes_them_all(fake_storage: dict[str, list[str]],
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(transfer, "digest",
                        lambda disk, **_: Digest("a" * 64, disk.length))
    asked = []

    def cancelled() -> bool:
        asked.append(1)
        return len(fake_storage["created"]) == 2 and len(asked) > 2

    target = _Target()
    with pytest.raises(CancelledError):
        cm._move(_Untouchable(), target, _plan(), src_local=False,  # type: ignore[arg-type]
                 dst_local=False, progress=None, cancelled=cancelled)
    assert fake_storage["created"] == ["web1.qcow2", "data.img"]
    assert sorted(fake_storage["deleted"]) == ["data.img", "web1.qcow2"]
    assert target.defined == []


# --------------------------------------------------------------------------- snapshots
def _snapshot(name: str, parent: str | None, *, external: bool = False) -> str:
    disk = ("<disk name='vda' snapshot='external' type='file'><source file='/src/images/"
            f"web1.{name}'/></disk>" if external else "<disk name='vda' snapshot='internal'/>")
    return (f"<domainsnapshot><name>{name}</name><state>shutoff</state>"
            + (f"<parent><name>{parent}</name></parent>" if parent else "")
            + f"<memory snapshot='no'/><disks>{disk}</disks>{DOMAIN}</domainsnapshot>")


class _Snap:
    def __init__(self, xml: str) -> None:
        self._xml = xml
        self.name = parse_xml(xml).findtext("name")

    def xml(self) -> str:
        return self._xml


class _Domain:
    def __init__(self, *xmls: str) -> None:
        self.found = [_Snap(x) for x in xmls]

    def snapshots(self) -> list[_Snap]:
        return self.found

    def current_snapshot(self) -> str:
        return "b"


def test_internal_snapshots_move_parents_first_external_ones_block() -> None:
    plan = _plan()
    cm._plan_snapshots(_Domain(_snapshot("c", "b"), _snapshot("b", "a"),  # type: ignore[arg-type]
                               _snapshot("a", None)), plan)
    assert [n for n, _x in plan.snapshots] == ["a", "b", "c"]
    assert plan.current_snapshot == "b"
    assert snapshot_kind(_snapshot("a", None)) == ("a", None)
    assert snapshot_kind(_snapshot("x", None, external=True)) == ("x", "disks vda")
    vm = VmFacts(name="web1", uuid="u", active=False, memory=0,
                 external_snapshots=[("x", "disks vda")], internal_snapshots=["a", "b"])
    found = check(MigrationFacts(vm=vm, target=TargetFacts()), MigrationOptions(target="h2"),
                  source="h1", target="h2", kind="cold")
    [blocker] = found.blockers
    assert blocker.code == "snapshot" and "external" in blocker.message
    assert "snapshot delete" in blocker.remedy
    assert found.warnings == ["2 internal snapshot(s) moved with the disks: a, b"]


def test_a_snapshot_names_the_copies_after_move_files() -> None:
    doc = SnapshotDocument(_snapshot("a", None))
    doc.move_files({"/src/images/web1.qcow2": "/dst/pool/web1.qcow2"})
    inner = doc.domain()
    assert inner is not None
    assert inner.disk_files()["vda"] == ("/dst/pool/web1.qcow2", "qcow2")
    assert inner.disk_files()["vdb"] == ("/other/data.img", "raw")  # not moved: unchanged
    assert [o.path for o in inner.owned_files()] == ["/dst/pool/web1.qcow2"]


# --------------------------------------------------------------------------- the source
class _Other:
    name = "other"

    def __init__(self, disk: str) -> None:
        self.disk = disk

    def config_xml(self) -> str:
        return (f"<domain><name>other</name><devices><disk type='file' device='disk'>"
                f"<driver name='qemu' type='raw'/><source file='{self.disk}'/>"
                "<target dev='vda'/></disk></devices></domain>")


class _Source:
    uri = "qemu+tcp://source/system"

    def __init__(self, *others: _Other) -> None:
        self.others = list(others)

    def all_domains(self) -> list[_Other]:
        return self.others


@pytest.fixture
def deletions(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> list[str]:
    """Image directory /src/images (and tmp_path); open_disk records deletions."""
    deleted: list[str] = []

    class _Gone:
        def __init__(self, path: str) -> None:
            self.path = path

        def delete(self) -> None:
            deleted.append(self.path)

    @contextlib.contextmanager
    def open_disk(host: Any, path: str, *, local: bool) -> Iterator[_Gone]:
        yield _Gone(path)

    rules = PathPolicy(image_dirs=(Path("/src/images"), tmp_path), backup_dirs=(),
                       state_dir=Path("/var/lib/kvmops/state"), images_dir=tmp_path)
    monkeypatch.setattr(cm, "policy", lambda: rules)
    monkeypatch.setattr(transfer, "open_disk", open_disk)
    return deleted


def test_a_remote_source_loses_only_the_files_kvmops_made_for_the_vm(
        deletions: list[str]) -> None:
    plan = _plan()  # vda: /src/images/web1.qcow2 (owned), vdb: /other/data.img
    plan.moves.append(DiskMove("vdc", "/src/images/imported.img", "raw"))
    plan.moves.append(DiskMove("vdd", "/src/images/shared.img", "raw"))
    notes = cm._remove_source(_Source(_Other("/src/images/shared.img")),  # type: ignore[arg-type]
                              plan, src_local=False)
    assert deletions == ["/src/images/web1.qcow2"]
    text = "\n".join(notes)
    assert "kept on the source: /other/data.img (outside the allowed image" in text
    assert "kept on the source: /src/images/imported.img (kvmops did not create it" in text
    assert "kept on the source: /src/images/shared.img (VM 'other' uses it)" in text
    assert notes[-1] == "removed from the source: /src/images/web1.qcow2"


def test_a_local_source_keeps_a_file_another_vm_has_as_backing_file(
        deletions: list[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import kvmops.vm.ownership as ownership

    base, mine = tmp_path / "base.img", tmp_path / "mine.img"
    monkeypatch.setattr(ownership, "files_of_other_vms",
                        lambda host, vm, rules: {base: "child"})
    plan = _plan()
    plan.moves = [DiskMove("vda", str(base), "raw"), DiskMove("vdb", str(mine), "raw")]
    notes = cm._remove_source(_Source(), plan, src_local=True)  # type: ignore[arg-type]
    assert deletions == [str(mine)]  # local: any file in the image directories may go
    assert f"kept on the source: {base} (VM 'child' uses it)" in notes
