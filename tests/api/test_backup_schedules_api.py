"""Backup schedules over the API (``/api/v1/backup-schedules``): viewers list, operators
add, run now and remove; the repository goes through the path policy; a run started
through the API is followed in its runs; changes are in the audit log."""

from __future__ import annotations

import time
from pathlib import Path

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
