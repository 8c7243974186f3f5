"""The one job model: every long operation, whoever started it, is a row of the job
store (:mod:`kvmops.store.jobs`) moving through :class:`JobState`.

The API's runner (:mod:`kvmops.api.runner`) creates rows for the jobs it runs; a
``kvmops`` command creates its own through :func:`track`, with its process id, so
``GET /api/v1/jobs`` and the web UI show a CLI backup running, its progress, and how
it ended. A cancel requested through the API reaches the command at its next progress
report. Without a reachable state database the command runs the same, untracked.
"""

from __future__ import annotations

import contextlib
import os
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol

from kvmops.errors import CancelledError, KvmopsError
from kvmops.jobstate import ACTIVE_STATES, FINAL_STATES, JobState, current_job
from kvmops.services.audit import audited
from kvmops.services.caller import Caller

__all__ = [
    "ACTIVE_STATES",
    "FINAL_STATES",
    "CliJob",
    "JobState",
    "Progress",
    "cancel",
    "cancel_requested",
    "create",
    "current_job",
    "get",
    "list_jobs",
    "recover",
    "request_cancel",
    "track",
    "update",
]

UPDATE_INTERVAL = 0.5  # seconds between progress writes


class Progress(Protocol):
    """What a long operation reports to (the API's JobContext, a CLI job)."""

    def bytes(self, done: int, total: int) -> None: ...

    def percent(self, value: float, label: str | None = None) -> None: ...

    def note(self, message: str) -> None: ...


class ProgressFields:
    """:class:`Progress` as job-row fields; subclasses say how the fields are written."""

    def bytes(self, done: int, total: int) -> None:
        percent = round(100.0 * done / total, 1) if total else None
        self._progress(progress_done=int(done), progress_total=int(total), percent=percent)

    def percent(self, value: float, label: str | None = None) -> None:
        fields: dict[str, Any] = {"percent": round(float(value), 1)}
        if label:
            fields["message"] = label
        self._progress(**fields)

    def note(self, message: str) -> None:
        self._progress(force=True, message=message[:2000])

    def _progress(self, force: bool = False, **fields: Any) -> None:
        raise NotImplementedError


class CliJob(ProgressFields):
    """A job row written by this process; every method is a no-op without a database."""

    def __init__(self, db: Any, kind: str, target: str | None, user: str | None,
                 on_cancel: Callable[[], None] | None = None) -> None:
        self.db = db
        self.id: str | None = None
        self.kind = kind
        self.target = target
        self.result: Any = None
        self._on_cancel = on_cancel
        self._cancel_sent = False
        self._last = 0.0
        self._pending: dict[str, Any] = {}
        if db is not None:
            job_id = str(uuid.uuid4())
            if self._write(lambda: db.job_create(job_id, kind, target, user, os.getpid(),
                                                 JobState.RUNNING.value)):
                self.id = job_id

    def _write(self, action: Callable[[], object]) -> bool:
        from kvmops.store.direct import quietly

        ok = False
        with quietly(f"job {self.kind}"):
            action()
            ok = True
        return ok

    def _progress(self, force: bool = False, **fields: Any) -> None:
        if self.id is None:
            return
        self._pending.update(fields)
        now = time.monotonic()
        if not force and now - self._last < UPDATE_INTERVAL:
            return
        self._last = now
        pending, self._pending = self._pending, {}
        job_id = self.id
        self._write(lambda: self.db.job_update(job_id, **pending))
        self._check_cancel()

    def _check_cancel(self) -> None:
        if self._on_cancel is None or self._cancel_sent or self.id is None:
            return
        requested = False
        job_id = self.id
        with contextlib.suppress(Exception):
            requested = self.db.job_cancel_requested(job_id)
        if requested:
            self._cancel_sent = True
            self._on_cancel()

    def finish(self, state: JobState, *, error: str | None = None,
               error_kind: str | None = None) -> None:
        if self.id is None:
            return
        fields: dict[str, Any] = {**self._pending, "state": state.value,
                                  "finished_at": datetime.now(UTC)}
        self._pending = {}
        if state is JobState.SUCCEEDED:
            fields["result"] = _jsonable(self.result)
            fields["percent"] = 100.0
        else:
            fields.update(error=(error or "")[:4000], error_kind=error_kind)
        job_id = self.id
        self._write(lambda: self.db.job_update(job_id, **fields))


def _jsonable(value: Any) -> Any:
    dump = getattr(value, "model_dump", None)
    if callable(dump):
        return dump(mode="json", exclude={"domain_xml"} if hasattr(value, "domain_xml")
                    else None)
    return value


@contextlib.contextmanager
def track(caller: Caller, kind: str, target: str | None, *,
          on_cancel: Callable[[], None] | None = None, db_url: str | None = None
          ) -> Iterator[CliJob]:
    """A job row for a long operation a ``kvmops`` command runs (the API's runner
    tracks its own: for other callers the job is inert). Set ``job.result`` for the
    row's result; ``on_cancel`` is called once when a cancel is requested through the
    API (a backup signals itself, as ``kvmops backup cancel`` would)."""
    db = None
    if caller.via == "cli":
        from kvmops.store.direct import state_db

        db = state_db(db_url)
    job = CliJob(db, kind, target, caller.name, on_cancel)
    if job.id is not None:
        current_job.set(job.id)
    try:
        yield job
    except (CancelledError, KeyboardInterrupt) as err:
        job.finish(JobState.CANCELLED, error=str(err) or "interrupted",
                   error_kind="JobCancelled")
        raise
    except KvmopsError as err:
        job.finish(JobState.FAILED, error=str(err), error_kind=type(err).__name__)
        raise
    except BaseException as err:
        job.finish(JobState.FAILED, error=f"internal error: {type(err).__name__}: {err}",
                   error_kind="InternalError")
        raise
    job.finish(JobState.SUCCEEDED)


def __getattr__(name: str) -> Any:
    if name == "JobView":  # the job's JSON form; loading it loads SQLAlchemy
        from kvmops.store.jobs import JobView

        return JobView
    raise AttributeError(f"module 'kvmops.services.jobs' has no attribute {name!r}")


# The job store, as the faces read it ----------------------------------------------------
if TYPE_CHECKING:
    from kvmops.store.db import Store
    from kvmops.store.jobs import JobView as JobView  # loaded on use: see __getattr__


def create(store: Store, kind: str, target: str | None, user: str | None, *,
           params: dict[str, Any] | None = None, instance: str | None = None) -> JobView:
    """A ``queued`` row for a job the server ``instance`` is about to run, or (with
    ``params`` and no instance) one any server on the database may claim."""
    from kvmops.store import jobs as job_store

    return job_store.create(store, kind, target, user, params=params, instance=instance)


def claim(store: Store, instance: str, kinds: list[str] | None = None
          ) -> tuple[JobView, dict[str, Any]] | None:
    """The oldest job queued for any server, now running on ``instance`` (each queued job
    is claimed exactly once: ``SELECT ... FOR UPDATE SKIP LOCKED``)."""
    from kvmops.store import jobs as job_store

    return job_store.claim(store, instance, kinds)


def heartbeat(store: Store, instance: str) -> int:
    """Renew the lease of the jobs ``instance`` runs."""
    from kvmops.store import jobs as job_store

    return job_store.heartbeat(store, instance)


def reap_abandoned(store: Store, lease: float, exclude: str | None = None) -> list[str]:
    """Jobs of a server that stopped renewing their lease become ``interrupted``."""
    from kvmops.store import jobs as job_store

    return job_store.reap_abandoned(store, lease, exclude)


def update(store: Store, job_id: str, **fields: Any) -> None:
    """Write a job's state, progress, result or error (the row's column names)."""
    from kvmops.store import jobs as job_store

    job_store.update_job(store, job_id, **fields)


def cancel_requested(store: Store, job_id: str) -> bool:
    """Whether someone asked the job to stop (the API, the web UI, ``kvmops job cancel``)."""
    from kvmops.store import jobs as job_store

    return job_store.cancel_requested(store, job_id)


def list_jobs(store: Store, *, state: JobState | str | None = None,
              target: str | None = None, limit: int = 100) -> list[JobView]:
    """Every job, newest first, whoever started it (server, web UI, ``kvmops``)."""
    from kvmops.store import jobs as job_store

    return job_store.list_jobs(store, state=state, target=target, limit=limit)


def get(store: Store, job_id: str) -> JobView:
    from kvmops.store import jobs as job_store

    return job_store.get(store, job_id)


def request_cancel(store: Store, job_id: str) -> JobView:
    """Ask a job to stop: the server's runner cancels its own at once, a command's job
    hears it at its next progress report."""
    from kvmops.store import jobs as job_store

    return job_store.request_cancel(store, job_id)


@audited("job.cancel", target="job_id", db_arg="store")
def cancel(caller: Caller, store: Store, job_id: str) -> JobView:
    """A cancel asked for from the command line (the API's goes through its runner)."""
    return request_cancel(store, job_id)


def recover(store: Store, reason: str = "the kvmops server stopped while the job ran",
            *, instance: str | None = None, shared: bool = False) -> int:
    """At server start: jobs an earlier server left active, and jobs of commands that
    died, become ``interrupted``; running commands' jobs are left to them. ``shared``
    (several servers on one PostgreSQL): only rows no server holds, or with
    ``instance`` only that server's (it stops); other servers' jobs expire by lease."""
    from kvmops.store import jobs as job_store

    return job_store.mark_interrupted(store, reason, instance=instance, shared=shared)
