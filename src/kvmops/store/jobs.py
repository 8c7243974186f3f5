"""Job rows: what the API's job runner persists so jobs survive a reload or restart."""

from __future__ import annotations

import json
import os
import uuid
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel
from sqlalchemy import ColumnElement, func, select, update

from kvmops.errors import NotFoundError
from kvmops.jobstate import ACTIVE_STATES, FINAL_STATES, JobState
from kvmops.store.db import Store
from kvmops.store.models import Job

__all__ = ["ACTIVE_STATES", "FINAL_STATES", "JobState", "JobView", "claim", "create", "get",
           "heartbeat", "list_jobs", "mark_interrupted", "reap_abandoned", "request_cancel",
           "update_job"]


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
    #: The server instance running (or that ran) the job: host:pid:server-id (scale-out).
    instance: str | None = None


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
        instance=job.instance,
    )


def create(store: Store, kind: str, target: str | None, user: str | None, *,
           params: dict[str, Any] | None = None, instance: str | None = None) -> JobView:
    """A ``queued`` row. ``instance``: the server that runs it (it holds the lease from
    now on); ``params`` without an instance: a job any server may :func:`claim`."""
    now = datetime.now(UTC)
    job = Job(id=str(uuid.uuid4()), kind=kind, target=target, state=JobState.QUEUED.value,
              created_by=user, cancel_requested=False, created_at=now,
              params=json.dumps(params) if params is not None else None,
              instance=instance, heartbeat_at=now if instance else None)
    with store.session() as db:
        db.add(job)
        db.flush()
        return view(job)


def claim(store: Store, instance: str, kinds: list[str] | None = None
          ) -> tuple[JobView, dict[str, Any]] | None:
    """The oldest queued job nobody runs yet, now running on ``instance``, with its
    parameters; None when there is none. ``FOR UPDATE SKIP LOCKED``: two servers
    claiming at once lock different rows, so each job is claimed exactly once (a
    second claim of the same row finds it no longer queued)."""
    query = (select(Job).where(Job.state == JobState.QUEUED.value, Job.instance.is_(None),
                               Job.params.is_not(None), Job.cancel_requested.is_(False))
             .order_by(Job.created_at).limit(1).with_for_update(skip_locked=True))
    if kinds is not None:
        query = query.where(Job.kind.in_(kinds))
    with store.session() as db:
        job = db.scalars(query).first()
        if job is None:
            return None
        job.instance = instance
        job.state = JobState.RUNNING.value
        job.started_at = datetime.now(UTC)
        job.heartbeat_at = func.now() if not store.is_sqlite else datetime.now(UTC)
        db.flush()
        db.refresh(job)
        return view(job), json.loads(job.params or "{}")


def heartbeat(store: Store, instance: str) -> int:
    """Renew the lease of every active job of ``instance`` (database time)."""
    with store.session() as db:
        result = db.execute(update(Job).where(Job.instance == instance,
                                              Job.state.in_(ACTIVE_STATES))
                            .values(heartbeat_at=func.now()))
        return int(getattr(result, "rowcount", 0) or 0)


def reap_abandoned(store: Store, lease: float, exclude: str | None = None) -> list[str]:
    """Jobs whose server stopped renewing their lease for ``lease`` seconds (it died or
    lost the database) become ``interrupted`` (error kind ``Abandoned``): they are never
    run again silently. PostgreSQL only (database time on both sides)."""
    stale = func.now() - func.make_interval(0, 0, 0, 0, 0, 0, float(lease))
    with store.session() as db:
        query = select(Job).where(Job.state.in_(ACTIVE_STATES), Job.instance.is_not(None),
                                  Job.heartbeat_at < stale).with_for_update(skip_locked=True)
        if exclude is not None:
            query = query.where(Job.instance != exclude)
        rows = db.scalars(query).all()
        for job in rows:
            job.state = JobState.INTERRUPTED.value
            job.finished_at = datetime.now(UTC)
            job.error = (f"abandoned: the kvmops server {job.instance} running it stopped "
                         f"renewing its lease ({lease:g} s); it was not run again")
            job.error_kind = "Abandoned"
        return [job.id for job in rows]


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
    query = update(Job).where(Job.id == job_id)
    if "state" in fields and JobState(fields["state"]).final:
        # a final state is never overwritten: a job another server marked abandoned
        # (its lease ran out) stays so even if its own server finishes it after all
        query = query.where(Job.state.in_(ACTIVE_STATES))
    with store.session() as db:
        db.execute(query.values(**fields))


def request_cancel(store: Store, job_id: str) -> JobView:
    with store.session() as db:
        job = db.get(Job, job_id)
        if job is None:
            raise NotFoundError(f"job '{job_id}' not found")
        if job.state in ACTIVE_STATES:
            job.cancel_requested = True
        if (job.state == JobState.QUEUED.value and job.params is not None
                and job.instance is None):  # queued for any server: nobody runs it yet
            job.state = JobState.CANCELLED.value
            job.finished_at = datetime.now(UTC)
            job.error = f"job {job.id} ({job.kind}) was cancelled before it started"
            job.error_kind = "JobCancelled"
        db.flush()
        return view(job)


def cancel_requested(store: Store, job_id: str) -> bool:
    """Whether someone asked the job to stop (the API, ``kvmops job cancel``)."""
    with store.session() as db:
        return bool(db.scalar(select(Job.cancel_requested).where(Job.id == job_id)))


def mark_interrupted(store: Store, reason: str = "the kvmops server stopped while the job ran",
                     *, instance: str | None = None, shared: bool = False) -> int:
    """Jobs left queued/running by a previous server process never finished: say so.
    Jobs of ``kvmops`` commands (with a pid) are left to their process while it lives.

    ``shared`` (several servers on one database): only jobs of ``instance`` (this
    server stopping) or, without an instance, rows no server holds and none may claim;
    the jobs of other live servers and the queue stay (see :func:`reap_abandoned`)."""
    where: list[ColumnElement[bool]] = [Job.state.in_(ACTIVE_STATES), Job.pid.is_(None)]
    if instance is not None:
        where.append(Job.instance == instance)
    elif shared:
        where += [Job.instance.is_(None), Job.params.is_(None)]
    with store.session() as db:
        result = db.execute(
            update(Job).where(*where)
            .values(state=JobState.INTERRUPTED.value, finished_at=datetime.now(UTC), error=reason,
                    error_kind="Interrupted"))
        count = int(getattr(result, "rowcount", 0) or 0)
    return count + reap_dead(store)
