"""Pure backup logic: planning, chains, retention."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from kvmops.backup.model import (
    BackupType,
    Consistency,
    DiskRecord,
    Manifest,
    disk_chain,
    new_backup_id,
    resolve_point,
)
from kvmops.backup.plan import plan_backup
from kvmops.backup.retention import RetentionPolicy, plan_prune
from kvmops.errors import NotFoundError, ValidationError
from kvmops.vm.domxml import DiskSpec

T0 = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)


def manifest(n: int, kind: BackupType, parent: int | None, *, days: float = 0,
             targets: tuple[str, ...] = ("vda",)) -> Manifest:
    time = T0 + timedelta(days=days, minutes=n)
    backup_id = new_backup_id(time)
    parent_id = new_backup_id(T0 + timedelta(days=0, minutes=parent)) if parent is not None \
        else None
    return Manifest(
        id=backup_id, vm="vm", time=time, type=kind, parent=parent_id,
        checkpoint=f"kvmops-{backup_id}", consistency=Consistency.CRASH,
        disks=[DiskRecord(target=t, file=f"{t}.qcow2", source=f"/i/{t}", type=kind,
                          parent=parent_id, virtual_size=1, bytes_written=1, sha256="x")
               for t in targets])


def chain_of(kinds: list[tuple[BackupType, int | None]]) -> list[Manifest]:
    return [manifest(i, k, p) for i, (k, p) in enumerate(kinds)]


FULL, INC, DIFF = BackupType.FULL, BackupType.INCREMENTAL, BackupType.DIFFERENTIAL


def test_ids_sort_by_time() -> None:
    a = new_backup_id(T0)
    b = new_backup_id(T0 + timedelta(microseconds=1))
    assert a < b and a.endswith("Z")


def test_disk_chain_follows_parents() -> None:
    ms = chain_of([(FULL, None), (INC, 0), (DIFF, 0), (INC, 2)])
    by_id = {m.id: m for m in ms}
    assert [m.id for m in disk_chain(by_id, ms[3].id, "vda")] == [ms[0].id, ms[2].id, ms[3].id]
    assert [m.id for m in disk_chain(by_id, ms[1].id, "vda")] == [ms[0].id, ms[1].id]
    del by_id[ms[2].id]
    with pytest.raises(NotFoundError, match="missing"):
        disk_chain(by_id, ms[3].id, "vda")


def test_resolve_point_by_id_prefix_and_time() -> None:
    ms = chain_of([(FULL, None), (INC, 0), (INC, 1)])
    assert resolve_point(ms, None).id == ms[2].id
    assert resolve_point(ms, ms[1].id).id == ms[1].id
    assert resolve_point(ms, (T0 + timedelta(minutes=1, seconds=30)).isoformat()).id == ms[1].id
    with pytest.raises(ValidationError, match="ambiguous"):
        resolve_point(ms, "2026")
    with pytest.raises(NotFoundError):
        resolve_point(ms, "nonsense")


DISKS = [DiskSpec(target="vda", source="/i/vda"), DiskSpec(target="vdb", source="/i/vdb")]


def trusted(_cp: str, _target: str) -> str | None:
    return None


def test_plan_first_backup_is_full() -> None:
    plan = plan_backup("vm", DISKS, [], None, trusted)
    assert plan.type is FULL and plan.parent is None
    plan = plan_backup("vm", DISKS, [], INC, trusted)
    assert plan.type is FULL and "no earlier full" in plan.notes[0]


def test_plan_incremental_and_differential_parents() -> None:
    ms = chain_of([(FULL, None), (INC, 0)])
    ms = [manifest(i, m.type, 0 if i else None, targets=("vda", "vdb"))
          for i, m in enumerate(ms)]
    plan = plan_backup("vm", DISKS, ms, None, trusted)
    assert plan.type is INC and plan.parent is not None and plan.parent.id == ms[1].id
    assert all(d.parent == ms[1].id for d in plan.disks)
    plan = plan_backup("vm", DISKS, ms, DIFF, trusted)
    assert plan.type is DIFF and plan.parent is not None and plan.parent.id == ms[0].id


def test_plan_untrusted_bitmap_becomes_full_with_note() -> None:
    ms = [manifest(0, FULL, None, targets=("vda", "vdb"))]
    plan = plan_backup("vm", DISKS, ms, INC, lambda cp, t: "inconsistent")
    assert plan.type is FULL
    assert any("cannot be trusted" in n for n in plan.notes)


def test_plan_new_disk_gets_full_inside_incremental() -> None:
    ms = [manifest(0, FULL, None, targets=("vda",))]
    plan = plan_backup("vm", DISKS, ms, None, trusted)
    assert plan.type is INC
    modes = {d.disk.target: d.mode for d in plan.disks}
    assert modes == {"vda": INC, "vdb": FULL}
    assert any("vdb" in n and "own full" in n for n in plan.notes)


def test_plan_raw_disk_always_full() -> None:
    disks = [DiskSpec(target="vda", source="/i/vda"),
             DiskSpec(target="vdb", source="/i/vdb.raw", fmt="raw")]
    ms = [manifest(0, FULL, None, targets=("vda", "vdb"))]
    plan = plan_backup("vm", disks, ms, None, trusted)
    modes = {d.disk.target: (d.mode, d.checkpoint) for d in plan.disks}
    assert modes == {"vda": (INC, True), "vdb": (FULL, False)}
    assert any("raw" in n for n in plan.notes)


def test_prune_keep_last_rewrites_orphans() -> None:
    ms = chain_of([(FULL, None), (INC, 0), (INC, 1), (INC, 2), (INC, 3)])
    plan = plan_prune(ms, RetentionPolicy(keep_last=2))
    assert plan.keep == [ms[3].id, ms[4].id]
    assert plan.remove == [ms[0].id, ms[1].id, ms[2].id]
    assert plan.rewrite == {ms[3].id: None}  # becomes a full; ms[4] builds on it


def test_prune_keeps_full_when_kept() -> None:
    ms = chain_of([(FULL, None), (INC, 0), (INC, 1), (INC, 2)])
    plan = plan_prune(ms, RetentionPolicy(keep_last=1, keep_daily=1))
    assert plan.keep == [ms[3].id]
    plan = plan_prune([ms[0], *ms[1:]], RetentionPolicy(keep_last=4))
    assert plan.remove == [] and plan.rewrite == {}


def test_prune_daily_and_weekly_buckets() -> None:
    ms = [manifest(0, FULL, None, days=0)]
    for day in range(1, 15):
        ms.append(manifest(day, INC, day - 1, days=day))
    # Parents were built with T0 offsets in minutes only; rebuild parents by order.
    for prev, cur in itertools.pairwise(ms):
        cur.parent = prev.id
        cur.disks[0].parent = prev.id
    # T0 is Sunday 2026-11-01 (ISO week 44); days 1-7 are week 45, days 8-14 week 46.
    plan = plan_prune(ms, RetentionPolicy(keep_daily=3, keep_weekly=2))
    assert plan.keep == [ms[7].id, ms[12].id, ms[13].id, ms[14].id]
    assert plan.remove == [m.id for i, m in enumerate(ms) if i not in (7, 12, 13, 14)]
    assert plan.reasons == {ms[14].id: "daily 2026-11-15", ms[13].id: "daily 2026-11-14",
                            ms[12].id: "daily 2026-11-13", ms[7].id: "weekly 2026-W45"}
    # Day 7 has no kept ancestor: it becomes a full; day 12 is rebased onto day 7.
    assert plan.rewrite == {ms[7].id: None, ms[12].id: ms[7].id}


def test_prune_weekly_keeps_the_newest_of_each_week_and_merges_into_it() -> None:
    """Several backups a day: daily keeps each day's newest, weekly each week's newest;
    the expired ones between two kept points are merged into the later one."""
    ms = [manifest(0, FULL, None, days=-2)]  # Friday 2026-10-30, week 44
    for n, days in enumerate([1, 3, 3.2, 8, 9], start=1):  # Mon, Wed, Wed, Mon, Tue
        ms.append(manifest(n, INC, n - 1, days=days - 0.1))
    for prev, cur in itertools.pairwise(ms):
        cur.parent = prev.id
        cur.disks[0].parent = prev.id
    plan = plan_prune(ms, RetentionPolicy(keep_daily=2, keep_weekly=3))
    assert plan.keep == [ms[0].id, ms[3].id, ms[4].id, ms[5].id]
    assert plan.remove == [ms[1].id, ms[2].id]
    assert plan.rewrite == {ms[3].id: ms[0].id}
    assert plan.reasons == {ms[0].id: "weekly 2026-W44", ms[3].id: "weekly 2026-W45",
                            ms[4].id: "daily 2026-11-09", ms[5].id: "daily 2026-11-10"}
    # keep_last adds to the buckets: the two newest are kept for that reason first.
    plan = plan_prune(ms, RetentionPolicy(keep_last=3, keep_weekly=1))
    assert plan.keep == [ms[3].id, ms[4].id, ms[5].id]
    assert plan.rewrite == {ms[3].id: None}
    assert plan.reasons == {ms[3].id: "last", ms[4].id: "last", ms[5].id: "last"}


def test_prune_refuses_empty_policy() -> None:
    with pytest.raises(ValidationError, match="keeps nothing"):
        plan_prune([], RetentionPolicy())


def test_file_digest_is_chunked_and_sensitive(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    from kvmops.backup import repository

    data = bytes(range(256)) * 4096  # 1 MiB
    path = tmp_path / "f.bin"
    path.write_bytes(data * 3)
    monkeypatch.setattr(repository, "HASH_PIECE", 1024 * 1024)  # three pieces
    digest = repository.sha256_64m_file(path)
    assert digest.startswith("sha256-64m:") and len(digest) == len("sha256-64m:") + 64
    assert repository.sha256_64m_file(path) == digest
    changed = bytearray(data * 3)
    changed[2 * 1024 * 1024 + 5] ^= 1
    path.write_bytes(bytes(changed))
    assert repository.sha256_64m_file(path) != digest
    path.write_bytes(data * 3 + b"x")
    assert repository.sha256_64m_file(path) != digest
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    assert repository.sha256_64m_file(empty).startswith("sha256-64m:")
