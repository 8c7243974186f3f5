"""The per-VM backup lock of this host, and the backup event log.

A backup's *job* -- its state, progress, result, who started it -- is a row of the one
job store (:mod:`kvmops.store.jobs`, :class:`~kvmops.jobstate.JobState`),
whoever started it. This module only keeps one backup of a VM at a time on this host:
each running backup holds ``STATE/jobs/VM.lock`` and describes itself in
``STATE/jobs/VM.json`` (pid, repository, start, its job's id when one was recorded)
so ``kvmops backup cancel/pause`` can signal it; every state change appends one JSON
line to ``STATE/events.jsonl``.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel

from kvmops.config import settings
from kvmops.errors import StateError
from kvmops.jobstate import current_job


class JobRecord(BaseModel):
    vm: str
    pid: int
    repo: str
    started: datetime
    transport: str = "libvirt"  # or "qmp" (a hand-started QEMU: pause/resume possible)
    state: Literal["running", "paused"] = "running"  # the copy's, not the job's
    job_id: str | None = None  # its row in the job store, when the database was reachable


def _jobs_dir() -> Path:
    return settings().state_dir / "jobs"


def events_path() -> Path:
    return settings().state_dir / "events.jsonl"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def registered(vm: str, repo: str, transport: str = "libvirt") -> Iterator[JobRecord]:
    """Register this process's backup of ``vm``; one backup of a VM at a time, whatever
    the repository (``STATE/jobs/VM.lock``, released when the process ends, even by
    SIGKILL): a second one is refused at once in one line."""
    directory = _jobs_dir()
    directory.mkdir(parents=True, exist_ok=True)
    fd = os.open(directory / f"{vm}.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            if err.errno not in (errno.EAGAIN, errno.EWOULDBLOCK):
                raise
            other = running_job(vm)
            where = f" (pid {other.pid}, into {other.repo})" if other else ""
            raise StateError(f"a backup of VM '{vm}' is already running{where}",
                             hint=f"wait for it, or cancel it with 'kvmops backup cancel {vm}'"
                             ) from err
        record = JobRecord(vm=vm, pid=os.getpid(), repo=repo, started=datetime.now(UTC),
                           transport=transport, job_id=current_job.get())
        path = directory / f"{vm}.json"
        path.write_text(record.model_dump_json())
        try:
            yield record
        finally:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
    finally:
        os.close(fd)


def set_state(vm: str, state: str) -> None:
    """Record that this process's backup of ``vm`` is now running or paused."""
    path = _jobs_dir() / f"{vm}.json"
    try:
        record = JobRecord.model_validate_json(path.read_text())
    except (OSError, ValueError):
        return
    if record.pid == os.getpid():
        path.write_text(record.model_copy(update={"state": "paused" if state == "paused"
                                                  else "running"}).model_dump_json())


def running_job(vm: str) -> JobRecord | None:
    path = _jobs_dir() / f"{vm}.json"
    try:
        record = JobRecord.model_validate_json(path.read_text())
    except (OSError, ValueError):
        return None
    return record if _alive(record.pid) else None


def running_jobs() -> list[JobRecord]:
    directory = _jobs_dir()
    if not directory.is_dir():
        return []
    found = [running_job(p.stem) for p in sorted(directory.glob("*.json"))]
    return [j for j in found if j is not None]


def stale_jobs() -> list[JobRecord]:
    """Registered backups whose process is gone (killed before it could clean up)."""
    directory = _jobs_dir()
    stale = []
    for path in sorted(directory.glob("*.json")) if directory.is_dir() else []:
        try:
            record = JobRecord.model_validate_json(path.read_text())
        except (OSError, ValueError):
            continue
        if not _alive(record.pid):
            stale.append(record)
    return stale


def record_event(vm: str, kind: str, **data: Any) -> None:
    """Append one event (started, progress, completed, failed, cancelled) to the log."""
    event = {"time": datetime.now(UTC).isoformat(), "vm": vm, "event": kind, **data}
    path = events_path()
    with contextlib.suppress(OSError):
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a") as fh:
            fh.write(json.dumps(event, default=str) + "\n")


def read_events(vm: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
    try:
        lines = events_path().read_text().splitlines()
    except OSError:
        return []
    events = [json.loads(line) for line in lines if line.strip()]
    if vm:
        events = [e for e in events if e.get("vm") == vm]
    return events[-limit:]
