"""Jobs and audit rows a ``kvmops`` command writes without SQLAlchemy, read back through
the server's store: one job model and one audit log whoever acted."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from kvmops.errors import CancelledError, NotFoundError
from kvmops.jobstate import JobState, can_move
from kvmops.services import jobs
from kvmops.services.audit import audited
from kvmops.services.caller import Caller
from kvmops.store import Store, audit, direct
from kvmops.store import jobs as job_store


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Store]:
    url = f"sqlite:///{tmp_path / 'state.db'}"
    monkeypatch.setenv("KVMOPS_DB", url)
    direct._opened.clear()
    db = Store(url)
    db.migrate()
    yield db
    for opened in direct._opened.values():
        if opened is not None:
            opened.close()
    direct._opened.clear()
    db.close()


@audited("vm.start", target="vm")
def _start(caller: Caller, vm: str, *, fail: bool = False) -> str:
    if fail:
        raise NotFoundError(f"VM '{vm}' not found")
    return _inner(caller, vm)


@audited("vm.inner", target="vm")
def _inner(caller: Caller, vm: str) -> str:
    return f"started {vm}"


def test_cli_action_is_audited_with_the_os_user(store: Store) -> None:
    caller = Caller.local()
    assert _start(caller, "web-1") == "started web-1"
    with pytest.raises(NotFoundError):
        _start(caller, "gone", fail=True)
    rows = audit.entries(store)
    assert [(r.action, r.target, r.result, r.status_code, r.via, r.user, r.method)
            for r in rows] == [
        ("vm.start", "gone", "failed", NotFoundError.exit_code, "cli", caller.name, "CLI"),
        ("vm.start", "web-1", "ok", 0, "cli", caller.name, "CLI")]  # the inner call: no row
    assert rows[0].path == "kvmops vm start"


def test_api_callers_are_audited_by_the_middleware_not_here(store: Store) -> None:
    _start(Caller(name="admin", role="admin", via="api"), "web-1")
    assert audit.entries(store) == []


def test_no_database_no_record_and_none_created(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    missing = tmp_path / "none" / "kvmops.db"
    monkeypatch.setenv("KVMOPS_DB", f"sqlite:///{missing}")
    direct._opened.clear()
    assert _start(Caller.local(), "web-1") == "started web-1"
    with jobs.track(Caller.local(), "backup.create", "web-1") as job:
        job.bytes(1, 2)
    assert job.id is None
    assert not missing.exists()
    direct._opened.clear()


def test_a_fresh_hosts_first_command_creates_its_state_database(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No server has run yet: the state directory's database is created by the first
    command, so its job and its audit row are there for ``kvmops job list``."""
    state = tmp_path / "state"
    monkeypatch.delenv("KVMOPS_DB", raising=False)
    monkeypatch.setenv("KVMOPS_STATE_DIR", str(state))
    direct._opened.clear()
    try:
        assert _start(Caller.local(), "web-1") == "started web-1"
        with jobs.track(Caller.local(), "vm.dump", "web-1") as job:
            job.bytes(1, 2)
        assert job.id is not None
        created = Store(direct.state_db_url())
        try:
            assert [(j.id, j.kind, j.state) for j in job_store.list_jobs(created)] == [
                (job.id, "vm.dump", "succeeded")]
            assert [r.action for r in audit.entries(created)] == ["vm.start"]
        finally:
            created.close()
    finally:
        for opened in direct._opened.values():
            if opened is not None:
                opened.close()
        direct._opened.clear()


def test_cli_job_runs_then_succeeds(store: Store) -> None:
    with jobs.track(Caller.local(), "backup.create", "web-1") as job:
        assert job.id is not None
        seen = job_store.get(store, job.id)
        assert seen.state is JobState.RUNNING and seen.created_by == Caller.local().name
        job.bytes(50, 100)
        job.note("freezing")
        assert job_store.get(store, job.id).message == "freezing"
        job.result = {"id": "20261201T000000"}
    done = job_store.get(store, job.id)
    assert done.state == "succeeded" and done.result == {"id": "20261201T000000"}
    assert done.progress is not None and done.progress["percent"] == 100.0
    assert [j.id for j in job_store.list_jobs(store, state=JobState.SUCCEEDED)] == [job.id]


def test_cli_job_failure_and_cancel(store: Store) -> None:
    with pytest.raises(NotFoundError), jobs.track(Caller.local(), "backup.create", "a") as a:
        raise NotFoundError("VM 'a' not found")
    with pytest.raises(CancelledError), jobs.track(Caller.local(), "backup.create", "b") as b:
        raise CancelledError("backup cancelled")
    assert a.id and b.id
    failed, cancelled = job_store.get(store, a.id), job_store.get(store, b.id)
    assert (failed.state, failed.error_kind) == ("failed", "NotFoundError")
    assert (cancelled.state, cancelled.error) == ("cancelled", "backup cancelled")


def test_cancel_requested_through_the_api_reaches_the_command(store: Store) -> None:
    asked: list[str] = []
    with jobs.track(Caller.local(), "backup.create", "web-1",
                    on_cancel=lambda: asked.append("cancel")) as job:
        assert job.id is not None
        job_store.request_cancel(store, job.id)
        job.note("still copying")  # a report: the command hears the request
        job.note("again")
    assert asked == ["cancel"]


def test_dead_cli_job_is_interrupted_and_a_live_one_survives_server_start(store: Store
                                                                         ) -> None:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    db = direct.state_db()
    assert db is not None
    db.job_create("dead-job", "backup.create", "x", "root", proc.pid, "running")
    db.job_create("live-job", "backup.create", "y", "root", os.getpid(), "running")
    assert job_store.mark_interrupted(store) == 1
    assert job_store.get(store, "dead-job").state == "interrupted"
    assert job_store.get(store, "live-job").state == "running"


def test_state_machine() -> None:
    assert can_move("queued", "running") and can_move(JobState.RUNNING, "failed")
    assert not can_move("succeeded", "running")
    assert not JobState.RUNNING.final and JobState.INTERRUPTED.final
    assert {s.value for s in JobState} == {"queued", "running", "succeeded", "failed",
                                           "cancelled", "interrupted"}


def test_server_job_hears_a_cancel_asked_outside_the_server(store: Store) -> None:
    """``kvmops job cancel`` only sets the flag: the runner's job hears it at its next
    progress report and ends cancelled."""
    from kvmops.api.events import EventHub
    from kvmops.api.runner import JobContext, JobRunner

    runner = JobRunner(store, EventHub(), workers=1)
    started, asked = threading.Event(), threading.Event()

    def copies(ctx: JobContext) -> None:
        started.set()
        asked.wait(30)
        ctx.note("still copying")  # the report that hears it
        raise AssertionError("not cancelled")

    try:
        job = runner.submit("image.convert", "x", "root", copies)
        assert started.wait(30)
        jobs.cancel(Caller.local(), store, job.id)
        asked.set()
        for _ in range(600):
            if job_store.get(store, job.id).state not in job_store.ACTIVE_STATES:
                break
            time.sleep(0.05)
        assert job_store.get(store, job.id).state == "cancelled"
    finally:
        runner.shutdown()
    rows = [e for e in audit.entries(store) if e.action == "job.cancel"]
    assert [(r.target, r.via, r.result) for r in rows] == [(job.id, "cli", "ok")]
