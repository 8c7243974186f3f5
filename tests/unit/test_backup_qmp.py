"""The QMP backup engine's pure parts: disk discovery, trust, the transaction, jobs, recovery."""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from kvmops.backup.keys import Keyring
from kvmops.backup.model import BackupType, Consistency, DiskRecord, Manifest
from kvmops.backup.plan import checkpoints_to_keep, plan_backup
from kvmops.backup.qmp_engine import (
    QmpDisk,
    backup_id_of,
    discover_disks,
    disk_letters,
    end_jobs,
    follow_jobs,
    parse_disk_options,
    recover,
    stale_bitmaps,
    summarize_jobs,
    target_blockdev,
    target_node,
    transaction_actions,
    trust_function,
)
from kvmops.backup.repository import Repository
from kvmops.errors import BackupError, ValidationError
from kvmops.monitor.channel import MonitorChannel, MonitorEvent
from kvmops.vm.checkpoints import checkpoint_name

FULL_ID = "20260101T000000.000000Z"
INC_ID = "20260102T000000.000000Z"
FULL_BITMAP = f"kvmops-{FULL_ID}"
INC_BITMAP = f"kvmops-{INC_ID}"


def _inserted(node: str, drv: str, filename: str, size: int,
              bitmaps: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    inserted: dict[str, Any] = {
        "ro": False, "node-name": node, "drv": drv, "file": filename,
        "backing_file_depth": 0, "encrypted": False, "detect_zeroes": "off",
        "image": {"virtual-size": size, "filename": filename, "format": drv,
                  "dirty-flag": False},
    }
    if bitmaps is not None:
        inserted["dirty-bitmaps"] = bitmaps
    return inserted


# query-block of QEMU 7.2 (trimmed), recorded from:
#   -drive file=c.qcow2,if=none,id=drive-sata0,format=qcow2 -device ide-hd,...,id=sata0
#   -drive if=none,id=drive-cd,media=cdrom -device ide-cd,drive=drive-cd,id=cd0
#   -blockdev ...a.qcow2 node disk0 -device virtio-blk-pci,drive=disk0,id=virtio-disk0
#   -blockdev ...b.raw   node disk1 -device virtio-blk-pci,drive=disk1,id=virtio-disk1
# -drive backends come first: QEMU lists backends in the order they were created.
QUERY_BLOCK: list[dict[str, Any]] = [
    {"io-status": "ok", "device": "drive-sata0", "locked": False, "removable": False,
     "inserted": _inserted("#block192", "qcow2", "/img/c.qcow2", 16 << 20),
     "qdev": "sata0", "type": "unknown"},
    {"io-status": "ok", "device": "drive-cd", "locked": False, "removable": True,
     "qdev": "cd0", "tray_open": False, "type": "unknown"},
    {"io-status": "ok", "device": "", "locked": False, "removable": False,
     "inserted": _inserted("disk0", "qcow2", "/img/a.qcow2", 64 << 20,
                           [{"name": FULL_BITMAP, "recording": True, "persistent": True,
                             "busy": False, "granularity": 65536, "count": 0}]),
     "qdev": "/machine/peripheral/virtio-disk0/virtio-backend", "type": "unknown"},
    {"io-status": "ok", "device": "", "locked": False, "removable": False,
     "inserted": _inserted("disk1", "raw", "/img/b.raw", 32 << 20),
     "qdev": "/machine/peripheral/virtio-disk1/virtio-backend", "type": "unknown"},
]


def _nodes(bitmaps: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """query-named-block-nodes (flat) with ``bitmaps`` on disk0."""
    return [
        _inserted("#block192", "qcow2", "/img/c.qcow2", 16 << 20),
        _inserted("#block083", "file", "/img/c.qcow2", 197120),
        _inserted("disk1", "raw", "/img/b.raw", 32 << 20),
        _inserted("file1", "file", "/img/b.raw", 32 << 20),
        _inserted("disk0", "qcow2", "/img/a.qcow2", 64 << 20, bitmaps),
        _inserted("file0", "file", "/img/a.qcow2", 197120),
    ]


def _bitmap(name: str, **fields: Any) -> dict[str, Any]:
    return {"name": name, "recording": True, "persistent": True, "busy": False,
            "granularity": 65536, "count": 0, **fields}


def _manifest(backup_id: str, kind: BackupType, parent: str | None,
              targets: tuple[str, ...] = ("vda", "vdb")) -> Manifest:
    return Manifest(
        id=backup_id, vm="raw1", time=datetime(2026, 1, 1, tzinfo=UTC), type=kind,
        parent=parent, checkpoint=f"kvmops-{backup_id}", consistency=Consistency.CRASH,
        transport="qmp",
        disks=[DiskRecord(target=t, file=f"{t}.qcow2", source="/img/x", type=kind,
                          parent=parent, virtual_size=1, bytes_written=1, sha256="0")
               for t in targets])


# ---------------------------------------------------------------- disks
def test_virtio_disks_are_named_in_order_others_noted() -> None:
    disks, notes = discover_disks(copy.deepcopy(QUERY_BLOCK))
    assert disks == [
        QmpDisk("vda", "disk0", "virtio-disk0", "/img/a.qcow2", "qcow2", 64 << 20),
        QmpDisk("vdb", "disk1", "virtio-disk1", "/img/b.raw", "raw", 32 << 20),
    ]
    # The SATA disk is named in a note; the empty CD-ROM is not a disk.
    assert len(notes) == 1 and "#block192" in notes[0] and "sata0" in notes[0]
    assert "--disk NODE=TARGET" in notes[0]
    assert disks[0].spec().source == "/img/a.qcow2" and disks[0].spec().fmt == "qcow2"


@pytest.mark.parametrize("name", ["#block192", "drive-sata0", "sata0"])
def test_node_device_or_drive_name_maps_a_disk(name: str) -> None:
    disks, notes = discover_disks(QUERY_BLOCK, [f"{name}=sda", "vdb"])
    assert [(d.target, d.node, d.fmt) for d in disks] == [
        ("sda", "#block192", "qcow2"), ("vdb", "disk1", "raw")]
    assert notes == []


def test_plain_disk_filters_and_exclude() -> None:
    assert [d.target for d in discover_disks(QUERY_BLOCK, ["vdb"])[0]] == ["vdb"]
    assert [d.target for d in discover_disks(QUERY_BLOCK, [], ["vdb"])[0]] == ["vda"]
    assert [d.node for d in discover_disks(QUERY_BLOCK, ["disk1=vda"])[0]] == ["disk1"]


@pytest.mark.parametrize(("options", "exclude", "fragment"), [
    (["vdz"], [], "no virtio disk 'vdz'"),
    (["nosuch=vdc"], [], "no block node or device 'nosuch'"),
    (["disk1=vda", "vda"], [], "used for two disks"),
    (["disk0=vdx", "vda"], [], "selected twice"),
    (["disk0=../x"], [], "invalid disk name"),
    (["=vda"], [], "no node before"),
    ([], ["vdq"], "--exclude vdq"),
    ([], ["vda", "vdb"], "nothing to back up"),
])
def test_bad_disk_selection(options: list[str], exclude: list[str], fragment: str) -> None:
    with pytest.raises(ValidationError) as info:
        discover_disks(QUERY_BLOCK, options, exclude, where="the QEMU at /q.sock")
    assert fragment in str(info.value)


def test_nothing_without_virtio_disks() -> None:
    with pytest.raises(ValidationError, match="nothing to back up"):
        discover_disks(QUERY_BLOCK[:2])


def test_parse_disk_options_and_letters() -> None:
    assert parse_disk_options(["vda", "disk1=data"]) == (["vda"], {"disk1": "data"})
    with pytest.raises(ValidationError, match="given twice"):
        parse_disk_options(["disk1=a", "disk1=b"])
    assert [disk_letters(i) for i in (0, 1, 25, 26, 27, 51, 52)] == [
        "a", "b", "z", "aa", "ab", "az", "ba"]


# ---------------------------------------------------------------- trust and planning
def _disks() -> list[QmpDisk]:
    return discover_disks(QUERY_BLOCK)[0]


@pytest.mark.parametrize(("bitmaps", "fragment"), [
    ([_bitmap(FULL_BITMAP)], None),
    ([], "not found"),
    ([_bitmap("kvmops-other")], "not found"),
    ([_bitmap(FULL_BITMAP, inconsistent=True, recording=False)], "inconsistent"),
    ([_bitmap(FULL_BITMAP, busy=True)], "in use"),
    ([_bitmap(FULL_BITMAP, recording=False)], "disabled"),
])
def test_trust_of_parent_bitmap(bitmaps: list[dict[str, Any]], fragment: str | None) -> None:
    reason = trust_function(_nodes(bitmaps), _disks())(FULL_BITMAP, "vda")
    assert reason is None if fragment is None else fragment in str(reason)


def test_unknown_target_is_not_trusted() -> None:
    assert "no block node" in str(trust_function(_nodes([]), _disks())(FULL_BITMAP, "vdq"))


def test_missing_bitmap_makes_the_incremental_a_full_with_a_note() -> None:
    disks = _disks()
    plan = plan_backup("raw1", [d.spec() for d in disks],
                       [_manifest(FULL_ID, BackupType.FULL, None)], BackupType.INCREMENTAL,
                       trust_function(_nodes([]), disks))
    assert plan.type is BackupType.FULL and plan.parent is None
    assert any("vda" in n and "cannot be trusted" in n and "not found" in n
               for n in plan.notes), plan.notes


# ---------------------------------------------------------------- the transaction
def test_full_transaction_adds_bitmaps_then_jobs() -> None:
    disks = _disks()
    plan = plan_backup("raw1", [d.spec() for d in disks], [], BackupType.FULL,
                       trust_function(_nodes([]), disks))
    actions = transaction_actions(plan, disks, INC_BITMAP)
    assert actions == [
        # Only the qcow2 disk can keep a bitmap; raw disks are copied whole every time.
        {"type": "block-dirty-bitmap-add",
         "data": {"node": "disk0", "name": INC_BITMAP, "persistent": True}},
        {"type": "blockdev-backup",
         "data": {"job-id": "kvmops-backup-vda", "device": "disk0",
                  "target": "kvmops-target-vda", "sync": "full",
                  "auto-finalize": True, "auto-dismiss": False}},
        {"type": "blockdev-backup",
         "data": {"job-id": "kvmops-backup-vdb", "device": "disk1",
                  "target": "kvmops-target-vdb", "sync": "full",
                  "auto-finalize": True, "auto-dismiss": False}},
    ]


def test_incremental_reads_the_parent_bitmap_and_never_clears_it() -> None:
    disks = _disks()
    plan = plan_backup("raw1", [d.spec() for d in disks],
                       [_manifest(FULL_ID, BackupType.FULL, None)], BackupType.INCREMENTAL,
                       trust_function(_nodes([_bitmap(FULL_BITMAP)]), disks))
    assert plan.type is BackupType.INCREMENTAL
    actions = transaction_actions(plan, disks, INC_BITMAP, speed=1 << 20)
    jobs = {a["data"]["job-id"]: a["data"] for a in actions if a["type"] == "blockdev-backup"}
    assert jobs["kvmops-backup-vda"]["sync"] == "bitmap"
    assert jobs["kvmops-backup-vda"]["bitmap"] == FULL_BITMAP
    assert jobs["kvmops-backup-vda"]["bitmap-mode"] == "never"
    assert jobs["kvmops-backup-vdb"]["sync"] == "full"  # raw: no bitmap
    assert "bitmap" not in jobs["kvmops-backup-vdb"]
    assert all(job["speed"] == 1 << 20 for job in jobs.values())
    # The new bitmap is added in the same transaction, before the jobs.
    assert actions[0] == {"type": "block-dirty-bitmap-add",
                          "data": {"node": "disk0", "name": INC_BITMAP, "persistent": True}}


def test_target_blockdev() -> None:
    assert target_blockdev("vda", Path("/r/vm/backups/.partial-X/vda.qcow2")) == {
        "driver": "qcow2", "node-name": "kvmops-target-vda",
        "file": {"driver": "file", "filename": "/r/vm/backups/.partial-X/vda.qcow2"}}


def test_target_node_names_fit_qemu() -> None:
    """QEMU refuses node names longer than 31 characters: the longest disk name --disk
    takes still gives a target node QEMU accepts, and a longer one is refused first."""
    longest = "d" * 16
    plain, mapping = parse_disk_options([longest, f"node1={longest[:-1]}e"])
    assert plain == [longest]
    for target in [*plain, *mapping.values()]:
        assert len(target_node(target)) <= 31
    with pytest.raises(ValidationError, match="invalid disk name"):
        parse_disk_options([longest + "d"])


# ---------------------------------------------------------------- bitmaps kept
def test_bitmaps_kept_are_the_newest_and_the_newest_fulls() -> None:
    manifests = [_manifest(FULL_ID, BackupType.FULL, None),
                 _manifest(INC_ID, BackupType.INCREMENTAL, FULL_ID),
                 _manifest("20260103T000000.000000Z", BackupType.INCREMENTAL, INC_ID)]
    keep = checkpoints_to_keep(manifests)
    assert keep == {FULL_BITMAP, "kvmops-20260103T000000.000000Z"}
    nodes = _nodes([_bitmap(FULL_BITMAP), _bitmap(INC_BITMAP),
                    _bitmap("kvmops-20260103T000000.000000Z"), _bitmap("someone-else"),
                    {"recording": True, "busy": False, "persistent": False,
                     "granularity": 65536, "count": 0}])  # anonymous: a running job's
    referenced = {m.checkpoint for m in manifests if m.checkpoint}
    assert stale_bitmaps(nodes, keep, "0a1b2c3d", referenced) == [("disk0", INC_BITMAP)]
    assert checkpoints_to_keep([]) == set()


def test_another_repositorys_bitmaps_are_never_stale() -> None:
    """Two repositories back up one VM: each prunes only its own bitmaps."""
    mine, theirs = "kvmops-0a1b2c3d-20260102T000000.000000Z", \
        "kvmops-ffff0000-20260101T000000.000000Z"
    old_mine = "kvmops-0a1b2c3d-20260101T000000.000000Z"
    nodes = _nodes([_bitmap(theirs), _bitmap(old_mine), _bitmap(mine),
                    _bitmap("kvmops-20251231T000000.000000Z")])  # legacy, not referenced
    assert stale_bitmaps(nodes, {mine}, "0a1b2c3d", {old_mine, mine}) == [
        ("disk0", old_mine)]
    assert backup_id_of(theirs) == "20260101T000000.000000Z"
    assert backup_id_of("someone-else") is None


# ---------------------------------------------------------------- jobs
def _job(job_id: str, status: str, done: int, total: int, error: str | None = None
         ) -> dict[str, Any]:
    job: dict[str, Any] = {"id": job_id, "type": "backup", "status": status,
                           "current-progress": done, "total-progress": total}
    if error:
        job["error"] = error
    return job


def test_summarize_jobs() -> None:
    ids = {"kvmops-backup-vda", "kvmops-backup-vdb"}
    listing = [_job("kvmops-backup-vda", "concluded", 10, 10),
               _job("kvmops-backup-vdb", "running", 5, 20), _job("other", "running", 1, 9)]
    assert summarize_jobs(listing, ids) == (15, 30, False, [])
    listing[1] = _job("kvmops-backup-vdb", "concluded", 7, 20, "No space left on device")
    assert summarize_jobs(listing, ids) == (
        17, 30, True, [("kvmops-backup-vdb", "No space left on device")])
    assert summarize_jobs(listing[:1], ids)[3] == [
        ("kvmops-backup-vdb", "the job disappeared from QEMU")]


class FakeChannel(MonitorChannel):
    """A monitor answering from a handler; records every command."""

    target = "QMP socket /fake.sock"

    def __init__(self, handler: Callable[[str, Mapping[str, Any] | None], Any]) -> None:
        self.handler = handler
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def execute(self, command: str, arguments: Mapping[str, Any] | None = None) -> Any:
        self.calls.append((command, dict(arguments or {})))
        return self.handler(command, arguments)

    def _hmp(self, command_line: str) -> str:
        return ""

    def listen(self) -> None:
        pass

    def _next_event(self, timeout: float | None) -> MonitorEvent | None:
        return None

    def close(self) -> None:
        pass


def test_follow_jobs_reports_progress_until_concluded() -> None:
    replies = iter([
        [_job("kvmops-backup-vda", "created", 0, 0)],
        [_job("kvmops-backup-vda", "running", 1 << 20, 4 << 20)],
        [_job("kvmops-backup-vda", "concluded", 4 << 20, 4 << 20)],
    ])
    channel = FakeChannel(lambda command, _args: next(replies))
    seen: list[tuple[int, int]] = []
    follow_jobs(channel, {"kvmops-backup-vda"}, "raw1", lambda d, t: seen.append((d, t)),
                poll=0)
    assert seen == [(0, 0), (1 << 20, 4 << 20), (4 << 20, 4 << 20)]


def test_follow_jobs_raises_on_a_failed_job() -> None:
    channel = FakeChannel(lambda command, _args: [
        _job("kvmops-backup-vda", "concluded", 3, 9, "No space left on device")])
    with pytest.raises(BackupError, match=r"kvmops-backup-vda.*No space left on device"):
        follow_jobs(channel, {"kvmops-backup-vda"}, "raw1", None, poll=0)


def test_end_jobs_cancels_running_and_dismisses() -> None:
    state = {"kvmops-backup-vda": "running", "kvmops-backup-vdb": "concluded"}

    def handler(command: str, args: Mapping[str, Any] | None) -> Any:
        if command == "query-jobs":
            return [_job(j, s, 0, 1) for j, s in state.items()]
        if command == "job-cancel":
            assert args is not None
            state[args["id"]] = "concluded"
        if command == "job-dismiss":
            assert args is not None
            del state[args["id"]]
        return {}

    channel = FakeChannel(handler)
    assert end_jobs(channel, {"kvmops-backup-vda", "kvmops-backup-vdb"}, timeout=5) == []
    assert ("job-cancel", {"id": "kvmops-backup-vda"}) in channel.calls
    assert ("job-cancel", {"id": "kvmops-backup-vdb"}) not in channel.calls
    assert state == {}


def test_recover_cleans_what_a_killed_run_left(tmp_path: Path) -> None:
    repo = Repository(tmp_path / "repo", Keyring(tmp_path / "keys"))
    partial = repo.start_partial("raw1", "20260105T000000.000000Z")
    manifest = _manifest(FULL_ID, BackupType.FULL, None, ("vda",))
    full_dir = repo.backups_dir("raw1") / FULL_ID
    full_dir.mkdir()
    repo.write_manifest(full_dir, manifest)
    orphan = checkpoint_name("20260105T000000.000000Z", repo.identity())
    other_repo = "kvmops-ffff0000-20260105T000000.000000Z"  # a backup into another repo
    jobs = {"kvmops-backup-vda": "running", "someone-elses-job": "running"}
    nodes = {"kvmops-target-vda"}
    bitmaps = {FULL_BITMAP, orphan, other_repo, "not-ours"}

    def handler(command: str, args: Mapping[str, Any] | None) -> Any:
        args = args or {}
        if command == "query-jobs":
            return [_job(j, s, 0, 1) for j, s in jobs.items()]
        if command == "job-cancel":
            jobs[args["id"]] = "concluded"
        elif command == "job-dismiss":
            del jobs[args["id"]]
        elif command == "query-named-block-nodes":
            return [*_nodes([_bitmap(b) for b in sorted(bitmaps)]),
                    *[_inserted(n, "qcow2", "/x", 1) for n in nodes]]
        elif command == "blockdev-del":
            nodes.discard(args["node-name"])
        elif command == "block-dirty-bitmap-remove":
            assert args["node"] == "disk0"
            bitmaps.discard(args["name"])
        return {}

    notes: list[str] = []
    recover(FakeChannel(handler), repo, "raw1", notes.append, timeout=5)
    assert jobs == {"someone-elses-job": "running"}
    assert nodes == set()
    assert bitmaps == {FULL_BITMAP, other_repo, "not-ours"}
    assert not partial.exists()
    assert len(notes) == 4, notes
