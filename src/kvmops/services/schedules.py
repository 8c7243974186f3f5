"""Backup schedules: add, list, remove, run now, run what is due.

Semantics (docs/operations/backup-schedules.md):

* A run is due at each time of the schedule's cron expression (UTC, or the schedule's
  time zone). :func:`run_due` claims, per schedule and VM, only the **newest** due slot
  after the last one claimed: after downtime spanning several slots exactly one
  catch-up run happens, never one per missed slot.
* Never piled up: a slot that comes due while the previous run of the same schedule and
  VM is still queued, running or waiting for a retry is recorded ``skipped``.
* Each slot is one row, unique per (schedule, VM, due time): of several servers on one
  PostgreSQL database exactly one claims it; starting it is a conditional update that
  also counts the running backups against the limits (``schedule_per_host``,
  ``schedule_per_repository``); a run over a limit waits, ``queued``, for the next pass.
* A failed attempt is retried after ``schedule_retry_minutes`` (1, 5, 15), then the run
  is ``failed`` and reported: an audit row, the metric (the collector reads the runs),
  the log, and a POST of JSON to ``schedule_webhook`` when set.
* A successful backup is followed by the schedule's retention (prune); every
  ``full_every``-th backup of a schedule and VM is a full.

The backup and the prune run in a child process (``python -m
kvmops.services.schedule_worker``): the engine's signal handlers need a main thread,
and ``kvmops backup cancel`` signals the process that holds the backup -- never the
server. ``clock`` and ``execute`` are injectable (tests use a fake clock and backups).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel

if TYPE_CHECKING:
    from kvmops.metrics.model import ScheduleSample

from kvmops.backup.retention import RetentionPolicy
from kvmops.errors import (
    KvmopsError,
    NotFoundError,
    PathRefusedError,
    ValidationError,
)
from kvmops.services.audit import audited
from kvmops.services.caller import Caller
from kvmops.store import schedules as store
from kvmops.store.db import Store
from kvmops.store.schedules import Limits, RunRow, ScheduleRow

log = logging.getLogger("kvmops.schedules")
Clock = Callable[[], datetime]
STALE_AFTER = timedelta(minutes=10)  # a running row whose scheduler stopped beating
HEARTBEAT_S = 60.0
KEEP_FIELDS = ("keep_last", "keep_hourly", "keep_daily", "keep_weekly", "keep_monthly",
               "keep_yearly")


def utc_now() -> datetime:
    return datetime.now(UTC)


# Models the faces show --------------------------------------------------------------------
class RunView(RunRow):
    """One run (a slot of a schedule for one VM)."""


class ScheduleView(ScheduleRow):
    next_due: datetime | None = None
    last_run: RunView | None = None


class ScheduleSpec(BaseModel):
    """What ``schedule add`` takes (the API's body too)."""

    vm: str | None = None
    tag: str | None = None
    repo: str
    cron: str
    timezone: str | None = None
    keep_last: int | None = None
    keep_hourly: int | None = None
    keep_daily: int | None = None
    keep_weekly: int | None = None
    keep_monthly: int | None = None
    keep_yearly: int | None = None
    full_every: int | None = None
    compress: str | None = None
    key_file: str | None = None
    host: str = "local"
    enabled: bool = True

    def retention(self) -> RetentionPolicy:
        return RetentionPolicy(**{k: getattr(self, k) or 0 for k in KEEP_FIELDS})


def retention_of(row: ScheduleRow) -> RetentionPolicy | None:
    policy = RetentionPolicy(**{k: getattr(row, k) or 0 for k in KEEP_FIELDS})
    return policy if any(getattr(policy, k) for k in KEEP_FIELDS) else None


@dataclass(frozen=True)
class SchedulerSettings:
    per_host: int = 2
    per_repository: int = 1
    retry_minutes: tuple[float, ...] = (1.0, 5.0, 15.0)
    webhook: str | None = None

    @classmethod
    def from_settings(cls) -> SchedulerSettings:
        from kvmops.config import settings

        cfg = settings()
        return cls(per_host=cfg.schedule_per_host,
                   per_repository=cfg.schedule_per_repository,
                   retry_minutes=tuple(cfg.schedule_retry_minutes),
                   webhook=cfg.schedule_webhook)


# Cron ---------------------------------------------------------------------------------------
def _zone(name: str | None) -> ZoneInfo | None:
    if not name:
        return None
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValidationError(f"unknown time zone '{name}'",
                              hint="use an IANA name such as Europe/Berlin, or none for UTC"
                              ) from None


def check_cron(expr: str) -> str:
    from croniter import croniter

    expr = " ".join(expr.split())
    if not expr or not croniter.is_valid(expr):
        raise ValidationError(f"'{expr}' is not a cron expression",
                              hint="five fields: minute hour day month weekday, e.g. "
                                   "'0 2 * * *' (02:00 daily), or @daily / @hourly")
    return expr


def next_slot(expr: str, after: datetime, tz: str | None = None) -> datetime:
    """The first cron time strictly after ``after`` (UTC)."""
    from croniter import croniter

    zone = _zone(tz)
    start = after.astimezone(zone) if zone else after.astimezone(UTC)
    value: datetime = croniter(expr, start).get_next(datetime)
    return value.astimezone(UTC)


def latest_slot(expr: str, after: datetime, now: datetime, tz: str | None = None
                ) -> datetime | None:
    """The newest cron time in (after, now], or None: the one slot a catch-up runs."""
    from croniter import croniter

    first = next_slot(expr, after, tz)
    if first > now:
        return None
    zone = _zone(tz)
    probe = (now + timedelta(microseconds=1))
    probe = probe.astimezone(zone) if zone else probe.astimezone(UTC)
    value: datetime = croniter(expr, probe).get_prev(datetime)
    latest = value.astimezone(UTC)
    return latest if latest > after else first


# Use cases -----------------------------------------------------------------------------------
def _is_remote(repo: str) -> bool:
    try:
        from kvmops.backup.store import is_remote_url
    except ImportError:  # pragma: no cover - the store module lands with H2b
        return "://" in repo
    return is_remote_url(repo)


def check_repo(caller: Caller, repo: str) -> str:
    """A repository through the path policy, or a remote URL through the allow-list."""
    if _is_remote(repo):
        try:
            from kvmops.backup.remote import check_remote_url
        except ImportError:  # pragma: no cover - remote stores land with H3
            if not caller.trusted_paths:
                raise PathRefusedError(f"remote repository {repo} is not allowed",
                                       hint="remote repositories are not available") from None
            return repo
        return check_remote_url(repo, trusted=caller.trusted_paths)
    from kvmops.paths import policy

    return str(policy().repository(repo, trusted=caller.trusted_paths))


def check_key_file(caller: Caller, key_file: str | None) -> str | None:
    """The key file's path (never its content). An API caller may name only files in
    the state directory's ``keys`` directory (the admin puts them there)."""
    if not key_file:
        return None
    path = Path(key_file)
    if not path.is_absolute():
        raise ValidationError(f"key file '{key_file}' must be an absolute path")
    if not caller.trusted_paths:
        from kvmops.config import settings

        keys = (settings().state_dir / "keys").resolve()
        if not path.resolve().is_relative_to(keys):
            raise PathRefusedError(f"key file {path} is outside {keys}",
                                   hint=f"an admin puts repository key files into {keys}")
    return str(path)


def check_compress(value: str | None) -> str | None:
    if not value:
        return None
    kind, _, level = value.partition(":")
    if kind != "zstd" or (level and not (level.isdigit() and 1 <= int(level) <= 19)):
        raise ValidationError(f"'{value}' is not a compression",
                              hint="use zstd or zstd:LEVEL (1..19)")
    return value


@audited("backup.schedule.add",
         target=lambda a: a["spec"].vm or f"tag:{a['spec'].tag}", db_arg="store_")
def add(store_: Store, caller: Caller, spec: ScheduleSpec, *, clock: Clock = utc_now
        ) -> ScheduleView:
    if (spec.vm is None) == (spec.tag is None):
        raise ValidationError("give a VM or --tag TAG (one of them)")
    if spec.tag is not None:
        from kvmops.vm.tags import check_tag

        check_tag(spec.tag)
    if spec.full_every is not None and spec.full_every < 1:
        raise ValidationError("--full-every must be at least 1")
    spec = spec.model_copy(update={
        "cron": check_cron(spec.cron), "repo": check_repo(caller, spec.repo),
        "key_file": check_key_file(caller, spec.key_file),
        "compress": check_compress(spec.compress)})
    _zone(spec.timezone)
    host_uri(store_, spec.host)  # a host kvmops knows (NotFoundError otherwise)
    spec.retention().validate_policy()  # a schedule without retention fills the disk
    row = store.add(store_, spec.model_dump(), caller.name, now=clock())
    return _view(store_, row)


def _view(store_: Store, row: ScheduleRow) -> ScheduleView:
    runs = store.runs(store_, schedule_id=row.id, limit=1)
    last = store.last_slot(store_, row.id, row.vm or "") if row.vm else None
    anchor = max(row.created_at, last) if last else row.created_at
    return ScheduleView(**row.model_dump(),
                        next_due=next_slot(row.cron, max(anchor, utc_now()), row.timezone)
                        if row.enabled else None,
                        last_run=RunView(**runs[0].model_dump()) if runs else None)


def list_schedules(store_: Store, vm: str | None = None) -> list[ScheduleView]:
    return [_view(store_, r) for r in store.schedules(store_, vm=vm)]


def schedules_covering(store_: Store, vm: str, uri: str | None = None) -> list[ScheduleView]:
    """The schedules that back ``vm`` up: its own and those of the tags it carries now
    (a VM not defined on the host: its own only)."""
    from kvmops.services import vm_tags

    try:
        tags = vm_tags.list_tags(uri, vm).get(vm, [])
    except KvmopsError:
        tags = []
    return [_view(store_, r) for r in store.schedules(store_, vm=vm, tags=tags)]


def get(store_: Store, schedule_id: int) -> ScheduleView:
    return _view(store_, store.get(store_, schedule_id))


@audited("backup.schedule.remove", target="schedule_id", db_arg="store_")
def remove(store_: Store, caller: Caller, schedule_id: int) -> ScheduleView:
    row = store.remove(store_, schedule_id)
    return ScheduleView(**row.model_dump())


def runs(store_: Store, schedule_id: int | None = None, vm: str | None = None,
         limit: int = 200) -> list[RunView]:
    if schedule_id is not None:
        store.get(store_, schedule_id)
    return [RunView(**r.model_dump())
            for r in store.runs(store_, schedule_id=schedule_id, vm=vm, limit=limit)]


# Running ------------------------------------------------------------------------------------
@dataclass
class Outcome:
    ok: bool
    backup_id: str | None = None
    kind: str | None = None
    pruned: int | None = None
    error: str | None = None


@dataclass(frozen=True)
class Job:
    """What one attempt does: back up ``vm`` into the schedule's repository."""

    schedule: ScheduleRow
    run: RunRow
    full: bool
    uri: str | None


Execute = Callable[[Job], Outcome]
Resolve = Callable[[ScheduleRow], list[str]]  # the VMs a schedule covers


def instance_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


@dataclass
class Scheduler:
    """One pass over the schedules (:meth:`run_due`); the server calls it every tick,
    ``kvmops backup schedule run-due`` once."""

    db: Store
    clock: Clock = utc_now
    execute: Execute | None = None
    resolve: Resolve | None = None
    cfg: SchedulerSettings = field(default_factory=SchedulerSettings.from_settings)
    instance: str = field(default_factory=instance_name)
    _threads: list[threading.Thread] = field(default_factory=list)

    # -- what is due
    def targets(self, schedule: ScheduleRow) -> list[str]:
        if schedule.vm is not None:
            return [schedule.vm]
        if self.resolve is not None:
            return self.resolve(schedule)
        return tagged_vms(schedule, host_uri(self.db, schedule.host))

    def claim_due(self, now: datetime) -> list[RunRow]:
        """Insert the newest due slot of each schedule and VM (one, even after downtime);
        ``skipped`` when the previous run is still active."""
        claimed: list[RunRow] = []
        for schedule in store.schedules(self.db, enabled_only=True):
            try:
                vms = self.targets(schedule)
            except KvmopsError as err:
                log.warning("schedule %s: cannot list the VMs of tag %s: %s", schedule.id,
                            schedule.tag, err)
                continue
            for vm in vms:
                last = store.last_slot(self.db, schedule.id, vm)
                anchor = max(schedule.created_at, last) if last else schedule.created_at
                slot = latest_slot(schedule.cron, anchor, now, schedule.timezone)
                if slot is None:
                    continue
                active = store.active_run(self.db, schedule.id, vm)
                if active is not None:
                    row = store.insert_run(
                        self.db, schedule=schedule, vm=vm, due_at=slot, trigger="cron",
                        result="skipped", now=now,
                        error=f"the run due {active.due_at:%Y-%m-%d %H:%M} is still "
                              f"{active.result}")
                else:
                    row = store.insert_run(self.db, schedule=schedule, vm=vm, due_at=slot,
                                           trigger="cron", result="queued", now=now)
                if row is not None:
                    claimed.append(row)
        return claimed

    def reap_stale(self) -> None:
        """Runs whose scheduler died mid-run count as a failed attempt."""
        for run in store.stale(self.db, utc_now() - STALE_AFTER):
            self._failed(run, "the scheduler running it stopped (no heartbeat)")

    # -- running
    def run_due(self, now: datetime | None = None, *, wait: bool = True) -> list[RunView]:
        """Claim what is due, start what the limits allow; with ``wait`` return when
        the started runs ended. Returns the runs touched (claimed or started)."""
        now = now or self.clock()
        self.reap_stale()
        touched = {r.id: r for r in self.claim_due(now)}
        for run in self.start_runnable(now):
            touched[run.id] = run
        if wait:
            self.wait()
        return [RunView(**store.get_run(self.db, i).model_dump()) for i in sorted(touched)]

    def start_runnable(self, now: datetime) -> list[RunRow]:
        limits = Limits(per_host=self.cfg.per_host, per_repository=self.cfg.per_repository)
        started: list[RunRow] = []
        for run in store.runnable(self.db, now):
            claimed = store.claim(self.db, run, instance=self.instance, now=self.clock(),
                                  limits=limits)
            if isinstance(claimed, str):
                log.info("run %s of schedule %s waits: %s", run.id, run.schedule_id, claimed)
                continue
            started.append(claimed)
            thread = threading.Thread(target=self._attempt, args=(claimed,),
                                      name=f"kvmops-schedule-run-{claimed.id}", daemon=True)
            self._threads.append(thread)
            thread.start()
        return started

    def wait(self) -> None:
        for thread in list(self._threads):
            thread.join()
        self._threads = [t for t in self._threads if t.is_alive()]

    def busy(self) -> bool:
        self._threads = [t for t in self._threads if t.is_alive()]
        return bool(self._threads)

    def run_now(self, schedule_id: int, *, wait: bool = True) -> list[RunView]:
        """A manual run of every VM of the schedule, now (limits apply: a run over one
        stays queued for the next pass)."""
        schedule = store.get(self.db, schedule_id)
        now = self.clock()
        ids: list[int] = []
        for vm in self.targets(schedule):
            row = store.insert_run(self.db, schedule=schedule, vm=vm, due_at=now,
                                   trigger="manual", result="queued", now=now)
            if row is not None:
                ids.append(row.id)
        for run in store.runnable(self.db, now):
            if run.id not in ids:
                continue
            limits = Limits(per_host=self.cfg.per_host,
                            per_repository=self.cfg.per_repository)
            claimed = store.claim(self.db, run, instance=self.instance, now=now,
                                  limits=limits)
            if isinstance(claimed, str):
                continue
            thread = threading.Thread(target=self._attempt, args=(claimed,), daemon=True,
                                      name=f"kvmops-schedule-run-{claimed.id}")
            self._threads.append(thread)
            thread.start()
        if wait:
            self.wait()
        return [RunView(**store.get_run(self.db, i).model_dump()) for i in ids]

    def _full(self, schedule: ScheduleRow, vm: str) -> bool:
        if not schedule.full_every:
            return False
        since, had_full = store.ok_since_full(self.db, schedule.id, vm)
        return not had_full or since >= schedule.full_every - 1

    def _attempt(self, run: RunRow) -> None:
        try:
            self._attempt_run(run)
        except KvmopsError as err:  # the database failed: the heartbeat goes stale and a
            log.warning("schedule run %s: %s", run.id, err)  # later pass retries it

    def _attempt_run(self, run: RunRow) -> None:
        try:
            schedule = store.get(self.db, run.schedule_id)
        except NotFoundError:
            return  # removed meanwhile (its runs went with it)
        try:
            uri = host_uri(self.db, schedule.host)
        except NotFoundError as err:  # the host was removed: a failed attempt
            self._failed(run, str(err))
            return
        job = Job(schedule=schedule, run=run, full=self._full(schedule, run.vm), uri=uri)
        stop = threading.Event()
        beat = threading.Thread(target=self._beat, args=(run.id, stop), daemon=True)
        beat.start()
        try:
            outcome = (self.execute or execute_in_child)(job)
        except Exception as err:  # an executor bug must not kill the scheduler
            outcome = Outcome(ok=False, error=f"internal error: {type(err).__name__}: {err}")
        finally:
            stop.set()
        try:
            if outcome.ok:
                done = store.finish(self.db, run.id, result="ok", now=self.clock(),
                                    backup_id=outcome.backup_id, kind=outcome.kind,
                                    pruned=outcome.pruned, error=outcome.error)
                self._audit(done, "backup.schedule.run", 200)
            else:
                self._failed(store.get_run(self.db, run.id), outcome.error or "failed")
        except NotFoundError:
            return

    def _beat(self, run_id: int, stop: threading.Event) -> None:
        while not stop.wait(HEARTBEAT_S):
            try:
                store.heartbeat(self.db, run_id)
            except KvmopsError as err:
                log.warning("heartbeat of schedule run %s failed: %s", run_id, err)

    def _failed(self, run: RunRow, error: str) -> None:
        """A failed attempt: retry after the next backoff step, or report it."""
        now = self.clock()
        steps = self.cfg.retry_minutes
        if run.attempt <= len(steps):
            delay = timedelta(minutes=steps[run.attempt - 1]) if run.attempt >= 1 \
                else timedelta(0)
            store.finish(self.db, run.id, result="retrying", now=now,
                         next_attempt_at=now + delay, error=error)
            log.warning("schedule %s: backup of %s failed (attempt %s), retrying at %s: %s",
                        run.schedule_id, run.vm, run.attempt, now + delay, error)
            return
        done = store.finish(self.db, run.id, result="failed", now=now, error=error)
        log.error("schedule %s: backup of %s failed after %s attempts: %s",
                  run.schedule_id, run.vm, run.attempt, error)
        self._audit(done, "backup.schedule.failed", 500)
        if self.cfg.webhook:
            post_webhook(self.cfg.webhook, done)

    def _audit(self, run: RunRow, action: str, status: int) -> None:
        from kvmops.services.audit import record_request

        try:
            record_request(self.db, user=f"schedule:{run.schedule_id}", method="RUN",
                           path=f"/backup-schedules/{run.schedule_id}/runs/{run.id}",
                           action=action, target=run.vm, status_code=status, via="cli")
        except KvmopsError as err:
            log.warning("audit of schedule run %s failed: %s", run.id, err)


def webhook_body(run: RunRow) -> dict[str, Any]:
    return {"event": "backup.schedule.failed", "schedule": run.schedule_id, "run": run.id,
            "vm": run.vm, "host": run.host, "repo": run.repo,
            "due": run.due_at.isoformat(), "attempts": run.attempt, "error": run.error,
            "instance": instance_name()}


def post_webhook(url: str, run: RunRow) -> bool:
    """POST the failed run as JSON; a webhook that fails is logged, never raised."""
    data = json.dumps(webhook_body(run)).encode()
    request = urllib.request.Request(url, data=data, method="POST",
                                     headers={"Content-Type": "application/json",
                                              "User-Agent": "kvmops-scheduler"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return bool(200 <= response.status < 300)
    except OSError as err:
        log.warning("webhook %s for schedule run %s failed: %s", url, run.id, err)
        return False


def host_uri(db: Store, host: str) -> str | None:
    if host in ("", "local"):
        return None
    from kvmops.store import hosts

    return hosts.get(db, host).uri


def tagged_vms(schedule: ScheduleRow, uri: str | None = None) -> list[str]:
    """The VMs carrying the schedule's tag now (``kvmops vm tag``)."""
    from kvmops.services import vm_tags

    return vm_tags.vms_with_tag(uri, schedule.tag or "")


# The child process ---------------------------------------------------------------------------
def job_request(job: Job) -> dict[str, Any]:
    s = job.schedule
    policy = retention_of(s)
    return {"vm": job.run.vm, "repo": s.repo, "uri": job.uri, "full": job.full,
            "compress": s.compress, "key_file": s.key_file,
            "retention": policy.model_dump() if policy else None,
            "user": f"schedule:{s.id}"}


def execute_in_child(job: Job) -> Outcome:
    proc = subprocess.run(
        [sys.executable, "-m", "kvmops.services.schedule_worker"],
        input=json.dumps(job_request(job)) + "\n", capture_output=True, text=True,
        env={**os.environ, "KVMOPS_DEBUG": "0"}, check=False)
    outcome: dict[str, Any] = {}
    for line in proc.stdout.splitlines():
        try:
            msg = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(msg, dict) and ("result" in msg or "error" in msg):
            outcome = msg
    if "result" in outcome:
        result = outcome["result"]
        return Outcome(ok=True, backup_id=result.get("id"), kind=result.get("type"),
                       pruned=result.get("pruned"), error=result.get("prune_error"))
    error = outcome.get("error") or (proc.stderr.strip().splitlines() or [""])[-1] \
        or f"backup process ended with code {proc.returncode}"
    return Outcome(ok=False, error=str(error))


# For the command line ------------------------------------------------------------------------
UNITS = ("kvmops-backup-schedules.service", "kvmops-backup-schedules.timer")


def systemd_units() -> dict[str, str]:
    """The service + timer pair that runs ``run-due`` every minute (package data)."""
    from importlib import resources

    base = resources.files("kvmops.services") / "units"
    return {name: (base / name).read_text() for name in UNITS}


def install_units(directory: Path) -> list[Path]:
    """Write the units into ``directory`` (``/etc/systemd/system``), atomically."""
    written: list[Path] = []
    for name, content in systemd_units().items():
        target = directory / name
        tmp = target.with_name(f".{name}.tmp")
        tmp.write_text(content)
        os.replace(tmp, target)
        written.append(target)
    return written


def parse_now(text: str | None) -> datetime | None:
    """``--now`` as an ISO time (UTC when it names no zone)."""
    if not text:
        return None
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValidationError(f"'{text}' is not an ISO time",
                              hint="e.g. 2026-12-02T02:00:00Z") from None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


@audited("backup.schedule.run-now", target="schedule_id", db_arg="store_")
def run_now(store_: Store, caller: Caller, schedule_id: int, *, wait: bool = True
            ) -> list[RunView]:
    """Run a schedule now, for every VM it covers (waits for the end unless not ``wait``)."""
    return Scheduler(store_).run_now(schedule_id, wait=wait)


def run_due(store_: Store, caller: Caller, *, now: datetime | None = None) -> list[RunView]:
    """One pass: claim what is due at ``now`` (the clock by default), run it, wait."""
    clock: Clock = (lambda: now) if now is not None else utc_now  # type: ignore[assignment,return-value]
    return Scheduler(store_, clock=clock).run_due()


# In the server ---------------------------------------------------------------------------------
TICK_S = 20.0


class SchedulerThread:
    """``kvmops serve``'s scheduler: a pass every ``tick`` seconds (runs started in the
    background, limits counted in the database); :meth:`stop` ends the loop and waits up
    to ``grace`` seconds for the backups in flight (a child left running past that is
    reaped by a later pass once its heartbeat is stale)."""

    def __init__(self, db: Store, tick: float = TICK_S, scheduler: Scheduler | None = None
                 ) -> None:
        self.scheduler = scheduler or Scheduler(db)
        self._reload = scheduler is None  # the settings may change while it runs
        self.tick = tick
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="kvmops-scheduler",
                                        daemon=True)

    def start(self) -> SchedulerThread:
        self._thread.start()
        log.info("backup scheduler started (a pass every %.0f s)", self.tick)
        return self

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                if self._reload:
                    self.scheduler.cfg = SchedulerSettings.from_settings()
                self.scheduler.run_due(wait=False)
            except KvmopsError as err:  # the database is down or busy: the next pass
                log.warning("backup scheduler pass failed: %s", err)
            except Exception:  # a bug must not end the scheduler either
                log.exception("backup scheduler pass failed")
            self._stop.wait(self.tick)

    def stop(self, grace: float = 20.0) -> None:
        self._stop.set()
        self._thread.join(timeout=self.tick + 5)
        deadline = time.monotonic() + grace
        for thread in list(self.scheduler._threads):
            thread.join(timeout=max(0.0, deadline - time.monotonic()))
        log.info("backup scheduler stopped")


_live: SchedulerThread | None = None


def start_scheduler(db: Store) -> SchedulerThread | None:
    """Start the server's scheduler (``KVMOPS_SCHEDULER=0`` turns it off)."""
    global _live
    if os.environ.get("KVMOPS_SCHEDULER", "1") == "0":
        return None
    tick = float(os.environ.get("KVMOPS_SCHEDULER_TICK", TICK_S))
    _live = SchedulerThread(db, tick).start()
    return _live


def stop_scheduler(thread: SchedulerThread | None) -> None:
    global _live
    if thread is not None:
        thread.stop()
    _live = None


def run_now_background(store_: Store, caller: Caller, schedule_id: int) -> list[RunView]:
    """The API's run-now: started (or queued behind a limit) and returned at once."""
    scheduler = _live.scheduler if _live is not None else Scheduler(store_)
    return scheduler.run_now(schedule_id, wait=False)


# Metrics --------------------------------------------------------------------------------------
def interval_s(row: ScheduleRow, now: datetime | None = None) -> float:
    """The time between the schedule's next two slots (what 'overdue' is measured by)."""
    first = next_slot(row.cron, now or utc_now(), row.timezone)
    return (next_slot(row.cron, first, row.timezone) - first).total_seconds()


def schedule_samples(db: Store) -> list[ScheduleSample]:
    """One sample per enabled schedule and VM (for the Prometheus collector)."""
    from kvmops.metrics.model import ScheduleSample

    samples: list[ScheduleSample] = []
    for row in store.schedules(db, enabled_only=True):
        history = store.runs(db, schedule_id=row.id, limit=500)
        vms = [row.vm] if row.vm else sorted({r.vm for r in history})
        for vm in vms:
            finished = [r for r in history if r.vm == vm and r.result in ("ok", "failed")
                        and r.ended_at is not None]
            finished.sort(key=lambda r: r.ended_at or row.created_at)
            last = finished[-1] if finished else None
            oks = [r for r in finished if r.result == "ok"]
            success_at = oks[-1].ended_at if oks and oks[-1].ended_at else row.created_at
            samples.append(ScheduleSample(
                schedule=row.id, domain=vm, host=row.host, interval_s=interval_s(row),
                last_run_time=last.ended_at.timestamp() if last and last.ended_at else None,
                last_success=(last.result == "ok") if last else None,
                last_success_time=success_at.timestamp()))
    return samples
