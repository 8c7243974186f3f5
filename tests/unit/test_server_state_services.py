"""The state database as the server's faces reach it: only through kvmops.services
(database, auth, users, jobs, audit), on the one handle the server opened."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from kvmops.errors import NotFoundError
from kvmops.services import audit, auth, jobs
from kvmops.services import users as user_service
from kvmops.services.caller import Caller
from kvmops.services.database import Store, migrated, open_database, prepare_for_server

ADMIN = Caller(name="admin", role="admin", via="api", address="127.0.0.1")


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    handle = open_database(f"sqlite:///{tmp_path / 'state.db'}")
    handle.migrate()
    try:
        yield handle
    finally:
        handle.close()


def test_prepare_creates_admin_once_and_the_server_handle_authenticates(tmp_path: Path
                                                                        ) -> None:
    url = f"sqlite:///{tmp_path / 'state.db'}"
    first = prepare_for_server(url)
    assert first.url == url and first.initial_admin_password
    again = prepare_for_server(url)
    assert again.initial_admin_password is None  # shown once, never reset
    store = open_database(url)
    try:
        who = auth.check_password(store, "admin", first.initial_admin_password)
        assert who is not None and who.role == "admin"
        assert auth.check_password(store, "admin", "not-the-password") is None
    finally:
        store.close()


def test_migrated_opens_a_database_a_command_names(tmp_path: Path) -> None:
    with migrated(f"sqlite:///{tmp_path / 'cli.db'}") as store:
        assert {"users", "jobs", "audit_log"} <= set(store.tables())


def test_users_sessions_tokens_and_passwords_on_the_open_store(store: Store) -> None:
    added = user_service.add(ADMIN, store, "alice", "operator", "password-alice")
    assert (added.name, added.role, added.tokens) == ("alice", "operator", 0)
    token = user_service.new_token(ADMIN, store, "alice")
    assert [u.tokens for u in user_service.list_users(ADMIN, store)] == [1]
    by_token = auth.authenticate_token(store, token)
    assert by_token is not None and by_token.via == "token"
    assert auth.role_allows(by_token.role, "operator")
    assert not auth.role_allows(by_token.role, "admin")

    alice = auth.check_password(store, "alice", "password-alice")
    assert alice is not None
    session, csrf = auth.start_session(store, alice, timedelta(hours=1))
    seen = auth.authenticate_session(store, session)
    assert seen is not None and seen.name == "alice" and seen.csrf_token == csrf
    auth.end_session(store, session)
    assert auth.authenticate_session(store, session) is None

    session, _csrf = auth.start_session(store, alice, timedelta(hours=1))
    assert not auth.change_password(store, "alice", "wrong-password", "password-new")
    assert auth.authenticate_session(store, session) is not None  # nothing changed
    assert auth.change_password(store, "alice", "password-alice", "password-new")
    assert auth.authenticate_session(store, session) is None  # its sessions ended
    assert auth.check_password(store, "alice", "password-new") is not None

    user_service.delete(ADMIN, store, "alice")
    assert auth.authenticate_token(store, token) is None
    with pytest.raises(NotFoundError):
        user_service.delete(ADMIN, store, "alice")


def test_request_rows_and_the_log(store: Store) -> None:
    audit.record_request(store, user="bob", method="POST", path="/api/v1/vms/x/start",
                         action="start", target="x", status_code=202, job_id="j1",
                         address="10.0.0.1", via="api")
    audit.record_request(store, user="eve", method="WS", path="/ws/vms/x/vnc",
                         action="console", target="x", status_code=403)
    rows = audit.entries(store)
    assert [(r.user, r.result, r.via) for r in rows] == [("eve", "denied", None),
                                                         ("bob", "ok", "api")]
    assert [r.job_id for r in audit.entries(store, user="bob")] == ["j1"]
    assert 403 in audit.DENIED and 202 not in audit.DENIED
    assert audit.AuditView.model_validate(rows[0].model_dump()) == rows[0]


def test_job_rows_the_runner_writes(store: Store) -> None:
    job = jobs.create(store, "backup.create", "vm1", "bob")
    assert job.state is jobs.JobState.QUEUED and isinstance(job, jobs.JobView)
    jobs.update(store, job.id, state=jobs.JobState.RUNNING.value, percent=50.0)
    assert not jobs.cancel_requested(store, job.id)
    jobs.request_cancel(store, job.id)
    assert jobs.cancel_requested(store, job.id)
    assert jobs.recover(store) == 1
    assert jobs.get(store, job.id).state is jobs.JobState.INTERRUPTED
