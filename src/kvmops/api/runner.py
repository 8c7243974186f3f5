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

Scale-out (several servers on one PostgreSQL database): ``enqueue(kind, target,
caller, params)`` -- for kinds registered with :func:`queued_kind` -- only writes a
``queued`` row with JSON parameters; every server's claim thread takes such rows with
``SELECT ... FOR UPDATE SKIP LOCKED`` (:func:`kvmops.services.jobs.claim`), so each job
runs exactly once, on whichever server has a free worker. A row names the server
running it (``instance``: host:pid:server-id) and holds a lease that server renews;
when a server dies mid-job the others mark its jobs ``interrupted`` (error kind
``Abandoned``) once the lease expires -- never run twice silently. Closures passed to
``submit`` run on the server that received the request, as with SQLite, where
``enqueue`` runs the job in-process too.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

from fastapi.encoders import jsonable_encoder

from kvmops.api.events import EventHub
from kvmops.errors import CancelledError, KvmopsError
from kvmops.services import jobs as job_service
from kvmops.services.caller import Caller
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
#: A job any server may run: (its context, who asked, the JSON parameters) -> result.
QueuedFn = Callable[[JobContext, Caller, dict[str, Any]], Any]
QUEUED_KINDS: dict[str, QueuedFn] = {}


def queued_kind(kind: str) -> Callable[[QueuedFn], QueuedFn]:
    """Register the code of a job kind that may run on any server (its parameters are
    JSON in the row: the claiming server has no closure of the request)."""
    def register(fn: QueuedFn) -> QueuedFn:
        QUEUED_KINDS[kind] = fn
        return fn
    return register


def instance_name() -> str:
    """This server: host, process id and a random id (a pid may come back)."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class JobRunner:
    def __init__(self, store: Store, hub: EventHub, workers: int = 4, *,
                 shared: bool = False, lease: float = 30.0) -> None:
        self.store = store
        self.hub = hub
        self.workers = max(1, workers)
        self.shared = shared
        self.lease = lease
        self.instance = instance_name()
        self._pool = ThreadPoolExecutor(max_workers=self.workers,
                                        thread_name_prefix="kvmops-job")
        self._active: dict[str, JobContext] = {}
        self._lock = threading.Lock()
        self._closed = False
        self._wake = threading.Event()
        self._claimer: threading.Thread | None = None

    def start(self) -> None:
        """Shared database: start claiming queued jobs and renewing leases."""
        if self.shared and self._claimer is None:
            self._claimer = threading.Thread(target=self._claim_loop, daemon=True,
                                             name="kvmops-job-claim")
            self._claimer.start()

    def wake(self) -> None:
        """A job was queued (here or on another server): look for it now."""
        self._wake.set()

    def submit(self, kind: str, target: str | None, user: str | None, fn: JobFn) -> JobView:
        """Run ``fn`` on this server (a row names it as the job's instance)."""
        job = job_service.create(self.store, kind, target, user,
                                 instance=self.instance if self.shared else None)
        ctx = JobContext(self, job)
        with self._lock:
            self._active[job.id] = ctx
        self.hub.publish("job", {"id": job.id, "kind": kind, "target": target,
                                 "state": JobState.QUEUED.value})
        self._pool.submit(self._run, ctx, fn)
        return job

    def enqueue(self, kind: str, target: str | None, caller: Caller,
                params: dict[str, Any]) -> JobView:
        """A job of a :func:`queued_kind`: on a shared database queued for whichever
        server claims it first; alone, run here as :meth:`submit` does."""
        fn = QUEUED_KINDS[kind]
        if not self.shared:
            return self.submit(kind, target, caller.name,
                               lambda ctx: fn(ctx, caller, params))
        job = job_service.create(self.store, kind, target, caller.name,
                                 params={"caller": dataclasses.asdict(caller),
                                         "args": params})
        self.hub.publish("job", {"id": job.id, "kind": kind, "target": target,
                                 "state": JobState.QUEUED.value})
        self.wake()
        return job

    def _claim_loop(self) -> None:
        beat_every = max(0.5, self.lease / 3)
        next_beat = 0.0
        while not self._closed:
            now = time.monotonic()
            if now >= next_beat:
                next_beat = now + beat_every
                self._beat()
            claimed = False
            if len(self.active()) < self.workers:
                claimed = self._claim_one()
            if not claimed:
                self._wake.wait(1.0)
                self._wake.clear()

    def _beat(self) -> None:
        try:
            job_service.heartbeat(self.store, self.instance)
            gone = job_service.reap_abandoned(self.store, self.lease, exclude=self.instance)
        except Exception as err:  # the database is away: try again at the next beat
            log.warning("job leases: %s", err)
            return
        for job_id in gone:
            log.warning("job %s abandoned by its server (lease expired): interrupted", job_id)
            self.hub.publish("job", {"id": job_id, "state": JobState.INTERRUPTED.value,
                                     "error_kind": "Abandoned"})

    def _claim_one(self) -> bool:
        try:
            got = job_service.claim(self.store, self.instance, sorted(QUEUED_KINDS))
        except Exception as err:
            log.warning("claiming a queued job: %s", err)
            return False
        if got is None:
            return False
        job, params = got
        fn = QUEUED_KINDS[job.kind]
        try:
            caller = Caller(**params["caller"])
            args = dict(params["args"])
        except (KeyError, TypeError, ValueError) as err:
            self.update(job.id, state=JobState.FAILED.value, error_kind="InternalError",
                        error=f"unreadable job parameters: {err}",
                        finished_at=datetime.now(UTC))
            return True
        ctx = JobContext(self, job)
        with self._lock:
            self._active[job.id] = ctx
        self._pool.submit(self._run, ctx, lambda c: fn(c, caller, args))
        return True

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
            self.update(ctx.id, publish_extra={**extra, "instance": self.instance},
                        state=JobState.RUNNING.value, started_at=datetime.now(UTC))
            log.info("job %s (%s) started on %s", ctx.id, ctx.kind, self.instance)
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
        self._wake.set()
        if self._claimer is not None:
            self._claimer.join(timeout=5)
        for ctx in self.active():
            ctx.cancel()
        self._pool.shutdown(wait=False, cancel_futures=True)
        deadline = time.monotonic() + 10
        while self.active() and time.monotonic() < deadline:
            time.sleep(0.1)
        with contextlib.suppress(KvmopsError):
            job_service.recover(self.store, "the kvmops server stopped while the job ran",
                                instance=self.instance if self.shared else None,
                                shared=self.shared)
