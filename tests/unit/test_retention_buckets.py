"""Retention's hourly, monthly and yearly buckets (schedules keep like Proxmox: last,
hourly, daily, weekly, monthly, yearly)."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta

import pytest

from kvmops.backup.model import BackupType, Consistency, DiskRecord, Manifest, new_backup_id
from kvmops.backup.retention import RetentionPolicy, plan_prune
from kvmops.errors import ValidationError


def chain(times: list[datetime]) -> list[Manifest]:
    out: list[Manifest] = []
    for n, time in enumerate(times):
        backup_id = new_backup_id(time)
        kind = BackupType.FULL if n == 0 else BackupType.INCREMENTAL
        parent = out[-1].id if out else None
        out.append(Manifest(
            id=backup_id, vm="vm", time=time, type=kind, parent=parent,
            checkpoint=f"kvmops-{backup_id}", consistency=Consistency.CRASH,
            disks=[DiskRecord(target="vda", file="vda.qcow2", source="/i/vda", type=kind,
                              parent=parent, virtual_size=1, bytes_written=1, sha256="x")]))
    return out


def test_hourly_keeps_the_newest_of_each_hour() -> None:
    t0 = datetime(2026, 11, 2, 10, 0, tzinfo=UTC)
    ms = chain([t0 + timedelta(minutes=20 * i) for i in range(9)])  # 10:00 .. 12:40
    plan = plan_prune(ms, RetentionPolicy(keep_hourly=2))
    assert plan.keep == [ms[5].id, ms[8].id]  # 11:40 and 12:40
    assert plan.reasons == {ms[8].id: "hourly 2026-11-02T12", ms[5].id: "hourly 2026-11-02T11"}
    assert plan.rewrite == {ms[5].id: None, ms[8].id: ms[5].id}


def test_monthly_and_yearly_buckets() -> None:
    times = [datetime(2025, 12, 20, tzinfo=UTC)]
    times += [datetime(2026, m, d, tzinfo=UTC) for m, d in itertools.product((1, 2, 3), (5, 25))]
    ms = chain(times)
    plan = plan_prune(ms, RetentionPolicy(keep_monthly=2, keep_yearly=2))
    assert plan.reasons == {ms[6].id: "monthly 2026-03", ms[4].id: "monthly 2026-02",
                            ms[0].id: "yearly 2025"}
    assert plan.keep == [ms[0].id, ms[4].id, ms[6].id]
    assert plan.rewrite == {ms[4].id: ms[0].id, ms[6].id: ms[4].id}


def test_yearly_alone_is_a_policy_and_negative_counts_are_refused() -> None:
    ms = chain([datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 6, 1, tzinfo=UTC)])
    assert plan_prune(ms, RetentionPolicy(keep_yearly=1)).keep == [ms[1].id]
    with pytest.raises(ValidationError, match="negative"):
        plan_prune(ms, RetentionPolicy(keep_monthly=-1, keep_last=1))
    with pytest.raises(ValidationError, match="keep-hourly"):
        plan_prune(ms, RetentionPolicy())
