"""A ``kvmops`` command's job and audit rows on PostgreSQL (plain SQL through SQLAlchemy
Core there), read back through the server's store."""

from __future__ import annotations

import uuid

import pytest

from kvmops.errors import NotFoundError
from kvmops.services import jobs
from kvmops.services.audit import audited
from kvmops.services.caller import Caller
from kvmops.store import Store, audit, direct
from kvmops.store import jobs as job_store


@audited("vm.start", target="vm")
def _start(caller: Caller, vm: str) -> None:
    raise NotFoundError(f"VM '{vm}' not found")


def test_cli_records_on_postgres(pg_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    vm = f"pg-vm-{uuid.uuid4().hex[:8]}"  # the database is shared with other tests
    store = Store(pg_url)
    store.migrate()
    monkeypatch.setenv("KVMOPS_DB", pg_url)
    direct._opened.pop(pg_url, None)
    try:
        with pytest.raises(NotFoundError):
            _start(Caller.local(), vm)
        with jobs.track(Caller.local(), "backup.create", vm) as job:
            assert job.id is not None
            assert job_store.get(store, job.id).state == "running"
            job.bytes(3, 4)
            job.note("copying")
            job.result = {"id": "x"}
        done = job_store.get(store, job.id)
        assert (done.state, done.result, done.message) == ("succeeded", {"id": "x"}, "copying")
        rows = [e for e in audit.entries(store) if e.via == "cli" and e.target == vm]
        assert [(e.action, e.target, e.result, e.user) for e in rows] == [
            ("vm.start", vm, "failed", Caller.local().name)]
    finally:
        opened = direct._opened.pop(pg_url, None)
        if opened is not None:
            opened.close()
        store.close()
