"""Job rows: what the API's job runner persists so jobs survive a reload or restart."""

from __future__ import annotations

import json
import os
import uuid
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel
from sqlalchemy import select, update

from kvmops.errors import NotFoundError
from kvmops.jobstate import ACTIVE_STATES, FINAL_STATES, JobState
from kvmops.store.db import Store
from kvmops.store.models import Job

__all__ = ["ACTIVE_STATES", "FINAL_STATES", "JobState", "JobView", "create", "get",
           "list_jobs", "mark_interrupted", "request_cancel", "update_job"]


class JobView(BaseModel):
    id: str
    kind: str
    target: str | None
    state: JobState
    created_by: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    progress: dict[str, Any] | None
    message: str | None
    result: Any = None
    error: str | None
    error_kind: str | None
    cancel_requested: bool


def view(job: Job) -> JobView:
    progress: dict[str, Any] | None = None
    if job.progress_total is not None or job.percent is not None:
        progress = {"done": job.progress_done, "total": job.progress_total,
                    "percent": job.percent}
    return JobView(
        id=job.id, kind=job.kind, target=job.target, state=JobState(job.state),
        created_by=job.created_by, created_at=job.created_at, started_at=job.started_at,
        finished_at=job.finished_at, progress=progress, message=job.message,
        result=json.loads(job.result) if job.result else None, error=job.error,
        error_kind=job.error_kind, cancel_requested=job.cancel_requested,
    )


def create(store: Store, kind: str, target: str | None, user: str | None) -> JobView:
    job = Job(id=str(uuid.uuid4()), kind=kind, target=target, state=JobState.QUEUED.value,
              created_by=user,
              cancel_requested=False, created_at=datetime.now(UTC))
    with store.session() as db:
        db.add(job)
        db.flush()
        return view(job)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def reap_dead(store: Store) -> int:
    """Jobs of ``kvmops`` commands whose process is gone without a final state (killed)
    become ``interrupted``: nothing will ever finish them."""
    with store.session() as db:
        rows = db.scalars(select(Job).where(Job.state.in_(ACTIVE_STATES),
                                            Job.pid.is_not(None))).all()
        dead = [job for job in rows if job.pid is not None and not _alive(job.pid)]
        for job in dead:
            job.state = JobState.INTERRUPTED.value
            job.finished_at = datetime.now(UTC)
            job.error = (f"the kvmops command running it (pid {job.pid}) ended before "
                         "the job finished")
            job.error_kind = "Interrupted"
        return len(dead)


def get(store: Store, job_id: str) -> JobView:
    reap_dead(store)
    with store.session() as db:
        job = db.get(Job, job_id)
        if job is None:
            raise NotFoundError(f"job '{job_id}' not found", hint="see GET /api/v1/jobs")
        return view(job)


def list_jobs(store: Store, *, state: str | None = None, target: str | None = None,
              limit: int = 100) -> list[JobView]:
    reap_dead(store)
    query = select(Job).order_by(Job.created_at.desc()).limit(limit)
    if state:
        query = query.where(Job.state == JobState(state).value)
    if target:
        query = query.where(Job.target == target)
    with store.session() as db:
        return [view(j) for j in db.scalars(query)]


def update_job(store: Store, job_id: str, **fields: Any) -> None:
    if isinstance(fields.get("state"), JobState):
        fields["state"] = fields["state"].value
    if "result" in fields and fields["result"] is not None:
        fields["result"] = json.dumps(fields["result"], default=str)
    with store.session() as db:
        db.execute(update(Job).where(Job.id == job_id).values(**fields))


def request_cancel(store: Store, job_id: str) -> JobView:
    with store.session() as db:
        job = db.get(Job, job_id)
        if job is None:
            raise NotFoundError(f"job '{job_id}' not found")
        if job.state in ACTIVE_STATES:
            job.cancel_requested = True
        db.flush()
        return view(job)


def cancel_requested(store: Store, job_id: str) -> bool:
    """Whether someone asked the job to stop (the API, ``kvmops job cancel``)."""
    with store.session() as db:
        return bool(db.scalar(select(Job.cancel_requested).where(Job.id == job_id)))


def mark_interrupted(store: Store, reason: str = "the kvmops server stopped while the job ran"
                     ) -> int:
    """Jobs left queued/running by a previous server process never finished: say so.
    Jobs of ``kvmops`` commands (with a pid) are left to their process while it lives."""
    with store.session() as db:
        result = db.execute(
            update(Job).where(Job.state.in_(ACTIVE_STATES), Job.pid.is_(None))
            .values(state=JobState.INTERRUPTED.value, finished_at=datetime.now(UTC), error=reason,
                    error_kind="Interrupted"))
        count = int(getattr(result, "rowcount", 0) or 0)
    return count + reap_dead(store)
