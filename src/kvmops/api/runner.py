"""The job runner: long operations in a thread pool, their state in the database.

``submit(kind, target, user, fn)`` creates a ``queued`` row and returns it at
once; a worker thread runs ``fn(ctx)`` where ``ctx`` (:class:`JobContext`)
reports progress (bytes or percent) and notes, and lets the job notice a
cancel request. Progress goes to the row (throttled) and to the event hub
(``event: job`` on ``GET /api/v1/events``). States are the one
:class:`~kvmops.jobstate.JobState` machine; the final state is ``succeeded``
(with the JSON result), ``failed`` (error message and kind), or ``cancelled``.
Rows left active by an earlier server process are marked ``interrupted`` at
start-up (:func:`kvmops.services.jobs.recover`).
"""

from __future__ import annotations

import contextlib
import logging
import subprocess
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

from fastapi.encoders import jsonable_encoder

from kvmops.api.events import EventHub
from kvmops.errors import CancelledError, KvmopsError
from kvmops.services import jobs as job_service
from kvmops.services.database import Store
from kvmops.services.jobs import JobState, JobView

log = logging.getLogger("kvmops.api")
UPDATE_INTERVAL = 0.5  # seconds between progress writes to the DB


# Raised inside a job when its cancellation was requested (one class for every cancel).
JobCancelled = CancelledError


class JobContext(job_service.ProgressFields):
    """What a running job sees: progress reporting and its cancel flag."""

    def __init__(self, runner: JobRunner, job: JobView) -> None:
        self.runner = runner
        self.id = job.id
        self.kind = job.kind
        self.target = job.target
        self.cancelled = threading.Event()
        self.process: subprocess.Popen[str] | None = None
        self._last_write = 0.0
        self._pending: dict[str, Any] = {}
        self._lock = threading.Lock()

    # progress (bytes/percent/note come from ProgressFields) -------------------
    def _progress(self, force: bool = False, **fields: Any) -> None:
        self.check()
        now = time.monotonic()
        with self._lock:
            self._pending.update(fields)
            due = force or now - self._last_write >= UPDATE_INTERVAL
            if not due:
                return
            pending, self._pending = self._pending, {}
            self._last_write = now
        self.runner.update(self.id, publish_extra={"target": self.target, "kind": self.kind},
                           **pending)
        if self.runner.cancel_requested(self.id):  # asked outside this server (kvmops job)
            self.cancel()
            self.check()

    def flush(self) -> None:
        with self._lock:
            pending, self._pending = self._pending, {}
        if pending:
            self.runner.update(self.id, publish_extra={"target": self.target,
                                                       "kind": self.kind}, **pending)

    # cancellation --------------------------------------------------------
    def check(self) -> None:
        """Raise JobCancelled when cancellation was requested."""
        if self.cancelled.is_set():
            raise JobCancelled(f"job {self.id} ({self.kind}) was cancelled")

    def cancel(self) -> None:
        self.cancelled.set()
        proc = self.process
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()


JobFn = Callable[[JobContext], Any]


class JobRunner:
    def __init__(self, store: Store, hub: EventHub, workers: int = 4) -> None:
        self.store = store
        self.hub = hub
        self._pool = ThreadPoolExecutor(max_workers=max(1, workers),
                                        thread_name_prefix="kvmops-job")
        self._active: dict[str, JobContext] = {}
        self._lock = threading.Lock()
        self._closed = False

    def submit(self, kind: str, target: str | None, user: str | None, fn: JobFn) -> JobView:
        job = job_service.create(self.store, kind, target, user)
        ctx = JobContext(self, job)
        with self._lock:
            self._active[job.id] = ctx
        self.hub.publish("job", {"id": job.id, "kind": kind, "target": target,
                                 "state": JobState.QUEUED.value})
        self._pool.submit(self._run, ctx, fn)
        return job

    def active(self, kind: str | None = None, target: str | None = None) -> list[JobContext]:
        with self._lock:
            found = list(self._active.values())
        return [c for c in found if (kind is None or c.kind == kind)
                and (target is None or c.target == target)]

    def update(self, job_id: str, publish_extra: dict[str, Any] | None = None,
               **fields: Any) -> None:
        try:
            job_service.update(self.store, job_id, **fields)
        except KvmopsError as err:  # a progress write failing must not kill the job
            log.warning("job %s: cannot record progress: %s", job_id, err)
        event = {"id": job_id, **(publish_extra or {}), **fields}
        if "result" in event:
            event["result"] = jsonable_encoder(event["result"])
        self.hub.publish("job", event)

    def cancel_requested(self, job_id: str) -> bool:
        try:
            return job_service.cancel_requested(self.store, job_id)
        except KvmopsError:  # a read failing must not kill the job
            return False

    def _run(self, ctx: JobContext, fn: JobFn) -> None:
        extra = {"kind": ctx.kind, "target": ctx.target}
        try:
            if ctx.cancelled.is_set() or self._closed:
                raise JobCancelled(f"job {ctx.id} was cancelled before it started")
            self.update(ctx.id, publish_extra=extra, state=JobState.RUNNING.value,
                        started_at=datetime.now(UTC))
            result = fn(ctx)
            ctx.flush()
            self.update(ctx.id, publish_extra=extra, state=JobState.SUCCEEDED.value,
                        finished_at=datetime.now(UTC), result=jsonable_encoder(result))
        except BaseException as err:
            with contextlib.suppress(Exception):
                ctx.flush()
            if ctx.cancelled.is_set() or isinstance(err, JobCancelled):
                state = JobState.INTERRUPTED if self._closed else JobState.CANCELLED
                message = str(err) if isinstance(err, JobCancelled) else (
                    f"job {ctx.id} ({ctx.kind}) was cancelled: {err}")
                kind = "JobCancelled"
            elif isinstance(err, KvmopsError):
                state, message, kind = JobState.FAILED, str(err), type(err).__name__
            else:
                log.exception("job %s (%s) failed unexpectedly", ctx.id, ctx.kind)
                state, message, kind = (JobState.FAILED,
                                        f"internal error: {type(err).__name__}: {err}",
                                        "InternalError")
            self.update(ctx.id, publish_extra=extra, state=state.value, error=message,
                        error_kind=kind, finished_at=datetime.now(UTC))
            if not isinstance(err, Exception):
                raise
        finally:
            with self._lock:
                self._active.pop(ctx.id, None)

    def cancel(self, job_id: str) -> JobView:
        view = job_service.request_cancel(self.store, job_id)
        with self._lock:
            ctx = self._active.get(job_id)
        if ctx is not None:
            ctx.cancel()
        return view

    def shutdown(self) -> None:
        """Stop: cancel what runs, wait briefly, mark whatever is left interrupted."""
        self._closed = True
        for ctx in self.active():
            ctx.cancel()
        self._pool.shutdown(wait=False, cancel_futures=True)
        deadline = time.monotonic() + 10
        while self.active() and time.monotonic() < deadline:
            time.sleep(0.1)
        with contextlib.suppress(KvmopsError):
            job_service.recover(self.store, "the kvmops server stopped while the job ran")
