"""The bench_runs table (:class:`kvmops.store.models.BenchRun`): benchmark runs inside
VMs' guests, newest last."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import select

from kvmops.errors import NotFoundError
from kvmops.records import Record
from kvmops.store.db import Store
from kvmops.store.models import BenchRun, utcnow


@dataclass
class StoredRun(Record):
    id: int
    vm: str
    vm_uuid: str | None
    host: str
    kind: str
    test: str
    started_at: datetime
    duration_s: float
    score: float
    created_by: str | None
    params: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)


def _stored(row: BenchRun) -> StoredRun:
    return StoredRun(id=row.id, vm=row.vm, vm_uuid=row.vm_uuid, host=row.host, kind=row.kind,
                     test=row.test, started_at=row.started_at, duration_s=row.duration_s,
                     score=row.score, created_by=row.created_by,
                     params=json.loads(row.params), config=json.loads(row.config),
                     metrics=json.loads(row.metrics))


def add(store: Store, *, vm: str, vm_uuid: str | None, host: str, kind: str, test: str,
        params: dict[str, Any], config: dict[str, Any], metrics: dict[str, float],
        score: float, started_at: datetime | None, duration_s: float,
        created_by: str | None) -> StoredRun:
    with store.session() as db:
        row = BenchRun(vm=vm, vm_uuid=vm_uuid, host=host, kind=kind, test=test,
                       params=json.dumps(params, sort_keys=True),
                       config=json.dumps(config, sort_keys=True),
                       metrics=json.dumps(metrics, sort_keys=True), score=score,
                       started_at=started_at or utcnow(), duration_s=duration_s,
                       created_by=created_by)
        db.add(row)
        db.flush()
        return _stored(row)


def runs(store: Store, vm: str, *, kind: str | None = None, limit: int = 500
         ) -> list[StoredRun]:
    """A VM's runs, oldest first (the newest ``limit``)."""
    with store.session() as db:
        query = select(BenchRun).where(BenchRun.vm == vm)
        if kind:
            query = query.where(BenchRun.kind == kind)
        rows = db.scalars(query.order_by(BenchRun.started_at.desc(), BenchRun.id.desc())
                          .limit(limit))
        return [_stored(r) for r in reversed(list(rows))]


def get(store: Store, run_id: int) -> StoredRun:
    with store.session() as db:
        row = db.get(BenchRun, run_id)
        if row is None:
            raise NotFoundError(f"benchmark run {run_id} not found",
                                hint="see 'kvmops guest bench history VM' for the runs")
        return _stored(row)
