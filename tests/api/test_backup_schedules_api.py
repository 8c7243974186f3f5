"""Backup schedules over the API (``/api/v1/backup-schedules``): viewers list, operators
add, run now and remove; the repository goes through the path policy; a run started
through the API is followed in its runs; changes are in the audit log."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from tests.conftest import SESSION_PREFIX
from tests.integration.api_server import ApiServer


def test_schedules_roles_run_now_and_audit(api: ApiServer, backups_dir: Path) -> None:
    vm = f"{SESSION_PREFIX}api-schedule-missing"
    repo = str(backups_dir / f"sched-{time.monotonic_ns()}")
    body = {"vm": vm, "repo": repo, "cron": "0 3 1 1 *", "keep_daily": 7, "keep_monthly": 12}
    with api.client("viewer") as viewer, api.client("operator") as operator, \
            api.client("admin") as admin:
        assert viewer.post("/backup-schedules", json=body).status_code == 403
        refused = operator.post("/backup-schedules", json={**body, "repo": "/etc"})
        assert refused.status_code == 403, refused.text
        bad = operator.post("/backup-schedules", json={**body, "cron": "sometimes"})
        assert bad.status_code == 422 and "cron" in bad.json()["error"], bad.text
        nothing = operator.post("/backup-schedules", json={**body, "keep_daily": None,
                                                           "keep_monthly": None})
        assert nothing.status_code == 422 and "keeps nothing" in nothing.json()["error"]
        key = operator.post("/backup-schedules", json={**body, "key_file": "/etc/shadow"})
        assert key.status_code == 403 and "key file" in key.json()["error"], key.text
        added = operator.post("/backup-schedules", json=body)
        assert added.status_code == 201, added.text
        schedule = added.json()
        assert (schedule["vm"], schedule["repo"], schedule["created_by"]) == (vm, repo, "op")
        assert schedule["next_due"].endswith("T03:00:00Z")
        sid = schedule["id"]
        try:
            listed = viewer.get("/backup-schedules", params={"vm": vm})
            assert [s["id"] for s in listed.json()] == [sid], listed.text
            # a VM not defined on the host: "covering" lists its own schedules only
            covering = viewer.get("/backup-schedules", params={"covering": vm})
            assert [s["id"] for s in covering.json()] == [sid], covering.text
            assert viewer.get("/backup-schedules",
                              params={"covering": "-bad name"}).status_code == 422
            assert viewer.get(f"/backup-schedules/{sid}").json()["keep_monthly"] == 12
            assert viewer.post(f"/backup-schedules/{sid}/run-now").status_code == 403
            started = operator.post(f"/backup-schedules/{sid}/run-now")
            assert started.status_code == 202, started.text
            (run,) = started.json()
            assert (run["vm"], run["trigger"]) == (vm, "manual")
            deadline = time.monotonic() + 120
            while True:  # the backup runs in the server's child process
                (run,) = viewer.get(f"/backup-schedules/{sid}/runs").json()
                if run["result"] not in ("queued", "running") or time.monotonic() > deadline:
                    break
                time.sleep(0.5)
            assert (run["result"], run["attempt"]) == ("retrying", 1), run
            assert "not found" in run["error"] and run["next_attempt_at"]
            assert [r["id"] for r in viewer.get("/backup-schedules/runs",
                                                params={"vm": vm}).json()] == [run["id"]]
            assert viewer.delete(f"/backup-schedules/{sid}").status_code == 403
        finally:
            removed = operator.delete(f"/backup-schedules/{sid}")
        assert removed.status_code == 200, removed.text
        assert viewer.get(f"/backup-schedules/{sid}").status_code == 404
        assert operator.delete(f"/backup-schedules/{sid}").status_code == 404
        entries = admin.get("/audit", params={"limit": 500}).json()
    actions = {(e["user"], e["action"], e["target"], e["status_code"]) for e in entries}
    assert {("op", "add_schedule", vm, 201), ("op", "run_now", str(sid), 202),
            ("op", "remove_schedule", str(sid), 200)} <= actions, actions


@pytest.fixture
def pg_schedules_db(pg_url: str) -> Iterator[str]:
    """A database of its own in the session's PostgreSQL cluster (the servers of other
    tests on pg_url run schedulers of their own)."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    from kvmops.store.db import normalize_url

    name = f"kvmops_sched_{time.monotonic_ns()}"
    admin = create_engine(normalize_url(pg_url), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(pg_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def test_servers_on_postgresql_claim_each_slot_once(pg_schedules_db: str,
                                                    tmp_path: Path) -> None:
    """Several schedulers on one PostgreSQL database, racing on the same passes: each
    slot is run once, and the repository limit holds across them (the advisory lock)."""
    from kvmops.services import schedules as svc
    from kvmops.store.db import Store
    from tests.unit.test_backup_schedules import ROOT, T0, FakeBackups, FakeClock

    store = Store(pg_schedules_db)
    try:
        store.migrate()
        clock = FakeClock(T0)
        for vm in ("a", "b", "c"):
            svc.add(store, ROOT, svc.ScheduleSpec(vm=vm, repo=str(tmp_path / "repo"),
                                                  cron="0 * * * *", keep_last=2),
                    clock=clock)
        fake = FakeBackups()
        cfg = svc.SchedulerSettings(per_host=4, per_repository=1, retry_minutes=())
        servers = [svc.Scheduler(store, clock=clock, execute=fake, cfg=cfg,
                                 instance=f"server-{n}") for n in range(4)]
        for hour in (1, 2):
            clock.now = T0 + timedelta(hours=hour)
            barrier = threading.Barrier(len(servers))

            def one_pass(server: svc.Scheduler, barrier: threading.Barrier = barrier) -> None:
                barrier.wait()
                server.run_due(wait=False)

            threads = [threading.Thread(target=one_pass, args=(s,)) for s in servers]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            started = sum(1 for r in svc.runs(store) if r.result == "running")
            assert started <= 1  # one repository: one backup at a time, across servers
            for server in servers:
                server.wait()
            while any(r.result in ("queued", "running") for r in svc.runs(store)):
                for server in servers:
                    server.run_due(wait=True)
        runs = svc.runs(store)
        assert sorted((r.vm, r.due_at.hour) for r in runs) == sorted(
            (vm, (T0 + timedelta(hours=h)).hour) for vm in "abc" for h in (1, 2))
        assert all(r.result == "ok" and r.attempt == 1 for r in runs)
        assert len(fake.jobs) == 6  # each slot ran exactly once
    finally:
        store.close()
