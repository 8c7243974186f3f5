"""API building blocks without a server: validators, roles, store, job runner."""

from __future__ import annotations

import threading
import time
from datetime import timedelta
from pathlib import Path

import pytest
from pydantic import BaseModel, ValidationError
from sqlalchemy import select

from kvmops.api.events import EventHub
from kvmops.api.runner import JobContext, JobRunner
from kvmops.api.validators import (
    AbsolutePath,
    IpAddress,
    MacAddress,
    Size,
    VmName,
)
from kvmops.errors import StorageError
from kvmops.store import Store, users
from kvmops.store import jobs as job_store
from kvmops.store.models import ApiToken


class Sample(BaseModel):
    name: VmName | None = None
    size: Size | None = None
    mac: MacAddress | None = None
    ip: IpAddress | None = None
    path: AbsolutePath | None = None


def _field_error(**values: object) -> tuple[str, str]:
    with pytest.raises(ValidationError) as info:
        Sample.model_validate(values)
    err = info.value.errors()[0]
    return str(err["loc"][0]), str(err["msg"])


def test_valid_values(tmp_path: Path) -> None:
    sample = Sample(name="web-1", size="10G", mac="52:54:00:AB:cd:01", ip="10.0.0.1",
                    path=str(tmp_path / "b.qcow2"))
    assert sample.size == 10 * 1024**3
    assert sample.mac == "52:54:00:ab:cd:01"
    assert sample.path == tmp_path / "b.qcow2"  # where it may point: the path policy's job


@pytest.mark.parametrize(("values", "field", "fragment"), [
    ({"name": "-bad"}, "name", "invalid VM name"),
    ({"name": "x" * 65}, "name", "invalid VM name"),
    ({"size": "12Q"}, "size", "invalid size"),
    ({"size": True}, "size", "size"),
    ({"mac": "52:54:00:00:00"}, "mac", "invalid MAC"),
    ({"mac": "01:00:5e:00:00:01"}, "mac", "multicast"),
    ({"ip": "300.1.1.1"}, "ip", "invalid IP"),
    ({"path": "relative/x"}, "path", "absolute"),
    ({"path": "/a\x00b"}, "path", "NUL"),
    ({"path": "/a\ud800b"}, "path", "UTF-8"),
    ({"size": "99999999999T"}, "size", "too large"),
])
def test_invalid_values_name_the_field(values: dict[str, object], field: str,
                                       fragment: str) -> None:
    loc, msg = _field_error(**values)
    assert loc == field and fragment in msg


@pytest.mark.parametrize(("role", "needed", "allowed"), [
    ("admin", "admin", True), ("admin", "viewer", True), ("operator", "operator", True),
    ("operator", "admin", False), ("viewer", "operator", False), ("viewer", "viewer", True),
    ("bogus", "viewer", False),
])
def test_role_checks(role: str, needed: users.Role, allowed: bool) -> None:
    assert users.role_allows(role, needed) is allowed


@pytest.fixture
def store(tmp_path: Path) -> Store:
    db = Store(f"sqlite:///{tmp_path / 'k.db'}")
    db.migrate()
    return db


def test_users_tokens_and_sessions(store: Store) -> None:
    assert users.ensure_initial_admin(store)
    assert users.ensure_initial_admin(store) is None
    users.add_user(store, "alice", "operator", "correct horse")
    assert users.verify_password(store, "alice", "wrong password") is None
    assert users.verify_password(store, "nobody", "correct horse") is None
    who = users.verify_password(store, "alice", "correct horse")
    assert who is not None and who.role == "operator"
    token = users.new_token(store, "alice")
    with store.session() as db:
        stored = db.execute(select(ApiToken.token_hash)).scalars().all()
    assert token not in stored and users.token_hash(token) in stored
    assert users.authenticate_token(store, token) is not None
    assert users.authenticate_token(store, token + "x") is None
    session, csrf = users.create_session(store, who, timedelta(hours=1))
    found = users.authenticate_session(store, session)
    assert found is not None and found.csrf_token == csrf
    expired, _ = users.create_session(store, who, timedelta(seconds=-1))
    assert users.authenticate_session(store, expired) is None
    users.delete_user(store, "alice")
    assert users.authenticate_token(store, token) is None


def test_restart_marks_active_jobs_interrupted(store: Store) -> None:
    running = job_store.create(store, "backup.create", "vm1", "admin")
    job_store.update_job(store, running.id, state="running")
    queued = job_store.create(store, "vm.clone", "vm2", "admin")
    done = job_store.create(store, "image.convert", "x", "admin")
    job_store.update_job(store, done.id, state="succeeded")
    assert job_store.mark_interrupted(store) == 2
    assert job_store.get(store, running.id).state == "interrupted"
    assert job_store.get(store, queued.id).state == "interrupted"
    assert job_store.get(store, done.id).state == "succeeded"


def _wait_final(store: Store, job_id: str) -> job_store.JobView:
    for _ in range(400):
        job = job_store.get(store, job_id)
        if job.state not in job_store.ACTIVE_STATES:
            return job
        time.sleep(0.05)
    return job_store.get(store, job_id)


def test_runner_success_failure_and_cancel(store: Store) -> None:
    runner = JobRunner(store, EventHub(), workers=2)
    try:
        def works(ctx: JobContext) -> dict[str, int]:
            ctx.bytes(5, 10)
            return {"answer": 42}

        def fails(_ctx: JobContext) -> None:
            raise StorageError("disk full")

        started = threading.Event()

        def waits(ctx: JobContext) -> None:
            started.set()
            while True:
                ctx.percent(1.0)
                time.sleep(0.02)

        ok = runner.submit("t.ok", None, "u", works)
        bad = runner.submit("t.bad", None, "u", fails)
        slow = runner.submit("t.slow", None, "u", waits)
        assert started.wait(10)
        runner.cancel(slow.id)
        assert _wait_final(store, ok.id).result == {"answer": 42}
        failed = _wait_final(store, bad.id)
        assert (failed.state, failed.error_kind, failed.error) == (
            "failed", "StorageError", "disk full")
        assert _wait_final(store, slow.id).state == "cancelled"
    finally:
        runner.shutdown()
