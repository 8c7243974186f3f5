"""The backup_schedules and backup_schedule_runs tables
(:class:`kvmops.store.models.BackupSchedule`, :class:`~kvmops.store.models.BackupScheduleRun`).

A run row is the claim of one slot: (schedule, VM, due time) is unique, so of several
servers on one database exactly one inserts it. Moving a row to ``running`` is a
conditional UPDATE (the row still in the state read) inside a transaction that, on
PostgreSQL, holds an advisory lock, so the concurrency limits are counted and the run
claimed atomically across servers.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pydantic import BaseModel
from sqlalchemy import func, or_, select, text, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session as OrmSession

from kvmops.errors import NotFoundError
from kvmops.store.db import Store
from kvmops.store.models import BackupSchedule, BackupScheduleRun, utcnow

#: run results; the first three are active (the slot is not finished)
ACTIVE = ("queued", "running", "retrying")
FINAL = ("ok", "failed", "skipped")
_ADVISORY_KEY = 0x6B766D5343  # "kvmSC": the claim lock shared by every server


class ScheduleRow(BaseModel):
    id: int
    vm: str | None
    tag: str | None
    host: str
    repo: str
    cron: str
    timezone: str | None
    keep_last: int | None
    keep_hourly: int | None
    keep_daily: int | None
    keep_weekly: int | None
    keep_monthly: int | None
    keep_yearly: int | None
    full_every: int | None
    compress: str | None
    key_file: str | None
    enabled: bool
    created_at: datetime
    updated_at: datetime
    created_by: str | None


class RunRow(BaseModel):
    id: int
    schedule_id: int
    vm: str
    host: str
    repo: str
    due_at: datetime
    trigger: str
    result: str
    attempt: int
    next_attempt_at: datetime | None
    claimed_at: datetime
    started_at: datetime | None
    ended_at: datetime | None
    instance: str | None
    kind: str | None
    backup_id: str | None
    pruned: int | None
    error: str | None


def _schedule(row: BackupSchedule) -> ScheduleRow:
    return ScheduleRow.model_validate(row, from_attributes=True)


def _run(row: BackupScheduleRun) -> RunRow:
    return RunRow.model_validate(row, from_attributes=True)


SCHEDULE_FIELDS = ("vm", "tag", "host", "repo", "cron", "timezone", "keep_last",
                   "keep_hourly", "keep_daily", "keep_weekly", "keep_monthly", "keep_yearly",
                   "full_every", "compress", "key_file", "enabled")


def add(store: Store, fields: dict[str, Any], created_by: str | None,
        now: datetime | None = None) -> ScheduleRow:
    when = now or utcnow()
    with store.session() as db:
        row = BackupSchedule(**{k: fields.get(k) for k in SCHEDULE_FIELDS if k in fields},
                             created_by=created_by, created_at=when, updated_at=when)
        db.add(row)
        db.flush()
        return _schedule(row)


def _schedule_row(db: OrmSession, schedule_id: int) -> BackupSchedule:
    row = db.get(BackupSchedule, schedule_id)
    if row is None:
        raise NotFoundError(f"backup schedule {schedule_id} not found",
                            hint="see 'kvmops backup schedule list' for the schedules")
    return row


def get(store: Store, schedule_id: int) -> ScheduleRow:
    with store.session() as db:
        return _schedule(_schedule_row(db, schedule_id))


def schedules(store: Store, *, vm: str | None = None, enabled_only: bool = False,
              tags: list[str] | None = None) -> list[ScheduleRow]:
    """All schedules, or ``vm``'s own (with ``tags``: also those of these tags)."""
    query = select(BackupSchedule).order_by(BackupSchedule.id)
    if vm is not None and tags:
        query = query.where(or_(BackupSchedule.vm == vm, BackupSchedule.tag.in_(tags)))
    elif vm is not None:
        query = query.where(BackupSchedule.vm == vm)
    if enabled_only:
        query = query.where(BackupSchedule.enabled.is_(True))
    with store.session() as db:
        return [_schedule(r) for r in db.scalars(query)]


def remove(store: Store, schedule_id: int) -> ScheduleRow:
    with store.session() as db:
        row = _schedule_row(db, schedule_id)
        gone = _schedule(row)
        db.query(BackupScheduleRun).filter(
            BackupScheduleRun.schedule_id == schedule_id).delete()
        db.delete(row)
        return gone


def last_slot(store: Store, schedule_id: int, vm: str) -> datetime | None:
    """The newest cron slot already claimed (any result) for this schedule and VM."""
    with store.session() as db:
        value = db.scalar(select(func.max(BackupScheduleRun.due_at)).where(
            BackupScheduleRun.schedule_id == schedule_id, BackupScheduleRun.vm == vm,
            BackupScheduleRun.trigger == "cron"))
    if value is not None and value.tzinfo is None:  # SQLite's aggregate skips the type
        from datetime import UTC
        value = value.replace(tzinfo=UTC)
    return value


def active_run(store: Store, schedule_id: int, vm: str) -> RunRow | None:
    with store.session() as db:
        row = db.scalars(select(BackupScheduleRun).where(
            BackupScheduleRun.schedule_id == schedule_id, BackupScheduleRun.vm == vm,
            BackupScheduleRun.result.in_(ACTIVE)).order_by(BackupScheduleRun.id)).first()
        return _run(row) if row is not None else None


def insert_run(store: Store, *, schedule: ScheduleRow, vm: str, due_at: datetime,
               trigger: str, result: str, now: datetime, error: str | None = None
               ) -> RunRow | None:
    """Claim one slot; None when another server (or an earlier call) has it."""
    try:
        with store.session() as db:
            row = BackupScheduleRun(schedule_id=schedule.id, vm=vm, host=schedule.host,
                                    repo=schedule.repo, due_at=due_at, trigger=trigger,
                                    result=result, attempt=0, claimed_at=now,
                                    ended_at=now if result in FINAL else None, error=error)
            db.add(row)
            db.flush()
            return _run(row)
    except IntegrityError:
        return None


def runnable(store: Store, now: datetime) -> list[RunRow]:
    """Queued runs, and retries whose backoff has passed, oldest slot first."""
    with store.session() as db:
        rows = db.scalars(select(BackupScheduleRun).where(
            (BackupScheduleRun.result == "queued")
            | ((BackupScheduleRun.result == "retrying")
               & (BackupScheduleRun.next_attempt_at <= now))
        ).order_by(BackupScheduleRun.due_at, BackupScheduleRun.id))
        return [_run(r) for r in rows]


@dataclass(frozen=True)
class Limits:
    per_host: int
    per_repository: int


def claim(store: Store, run: RunRow, *, instance: str, now: datetime, limits: Limits
          ) -> RunRow | str:
    """Move ``run`` to running for ``instance`` if the limits allow it and nobody else
    moved it first; else the reason it was not claimed."""
    with store.session() as db:
        if not store.is_sqlite:
            db.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _ADVISORY_KEY})
        running = select(func.count()).select_from(BackupScheduleRun).where(
            BackupScheduleRun.result == "running")
        on_host = db.scalar(running.where(BackupScheduleRun.host == run.host)) or 0
        if on_host >= limits.per_host:
            return f"{on_host} scheduled backups already run on host {run.host}"
        on_repo = db.scalar(running.where(BackupScheduleRun.repo == run.repo)) or 0
        if on_repo >= limits.per_repository:
            return f"{on_repo} scheduled backups already write to {run.repo}"
        done = db.execute(
            update(BackupScheduleRun)
            .where(BackupScheduleRun.id == run.id, BackupScheduleRun.result == run.result,
                   BackupScheduleRun.attempt == run.attempt)
            .values(result="running", attempt=run.attempt + 1, instance=instance,
                    started_at=now, heartbeat_at=utcnow(), next_attempt_at=None,
                    error=None))
        if getattr(done, "rowcount", 0) != 1:
            return "claimed by another scheduler"
        row = db.get(BackupScheduleRun, run.id)
        assert row is not None
        db.refresh(row)
        return _run(row)


def heartbeat(store: Store, run_id: int) -> None:
    with store.session() as db:
        db.execute(update(BackupScheduleRun).where(BackupScheduleRun.id == run_id)
                   .values(heartbeat_at=utcnow()))


def stale(store: Store, older_than: datetime) -> list[RunRow]:
    """Running rows whose scheduler stopped beating (it died mid-run)."""
    with store.session() as db:
        rows = db.scalars(select(BackupScheduleRun).where(
            BackupScheduleRun.result == "running",
            BackupScheduleRun.heartbeat_at < older_than))
        return [_run(r) for r in rows]


def finish(store: Store, run_id: int, *, result: str, now: datetime,
           next_attempt_at: datetime | None = None, **fields: Any) -> RunRow:
    with store.session() as db:
        row = db.get(BackupScheduleRun, run_id)
        if row is None:  # the schedule was removed while it ran
            raise NotFoundError(f"schedule run {run_id} not found")
        row.result = result
        row.ended_at = now if result in FINAL else None
        row.next_attempt_at = next_attempt_at
        for key, value in fields.items():
            setattr(row, key, value)
        db.flush()
        return _run(row)


def runs(store: Store, *, schedule_id: int | None = None, vm: str | None = None,
         limit: int = 200) -> list[RunRow]:
    """Newest slot first."""
    query = select(BackupScheduleRun)
    if schedule_id is not None:
        query = query.where(BackupScheduleRun.schedule_id == schedule_id)
    if vm is not None:
        query = query.where(BackupScheduleRun.vm == vm)
    with store.session() as db:
        rows = db.scalars(query.order_by(BackupScheduleRun.due_at.desc(),
                                         BackupScheduleRun.id.desc()).limit(limit))
        return [_run(r) for r in rows]


def get_run(store: Store, run_id: int) -> RunRow:
    with store.session() as db:
        row = db.get(BackupScheduleRun, run_id)
        if row is None:
            raise NotFoundError(f"schedule run {run_id} not found")
        return _run(row)


def ok_since_full(store: Store, schedule_id: int, vm: str) -> tuple[int, bool]:
    """How many successful runs since the last full, and whether there was one."""
    with store.session() as db:
        kinds = db.scalars(select(BackupScheduleRun.kind).where(
            BackupScheduleRun.schedule_id == schedule_id, BackupScheduleRun.vm == vm,
            BackupScheduleRun.result == "ok").order_by(BackupScheduleRun.ended_at.desc(),
                                                       BackupScheduleRun.id.desc()))
        count = 0
        for kind in kinds:
            if kind == "full":
                return count, True
            count += 1
        return count, False
