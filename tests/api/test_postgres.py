"""Users, tokens, audit and interrupted jobs against PostgreSQL (a private cluster)."""

from __future__ import annotations

from pathlib import Path

from kvmops.store import Store
from kvmops.store import jobs as job_store
from tests.integration.api_server import add_users, start_server


def test_users_tokens_audit_and_restart_on_postgres(pg_url: str, workdir: Path) -> None:
    server = start_server(pg_url, workdir)
    try:
        assert server.admin_password
        add_users(server)
        with server.client() as anonymous:
            assert anonymous.get("/vms").status_code == 401
        with server.client("viewer") as viewer:
            vms = viewer.get("/vms")
            assert vms.status_code == 200
            assert all({"name", "state"} <= set(vm) for vm in vms.json())
            assert viewer.post("/vms/x/destroy").status_code == 403
        with server.client("admin") as admin:
            assert admin.post("/users", json={"name": "pguser", "role": "operator",
                                              "password": "password-pg"}).status_code == 201
            entries = admin.get("/audit").json()
        assert {("view", "destroy", 403), ("admin", "add_user", 201)} <= {
            (e["user"], e["action"], e["status_code"]) for e in entries}
    finally:
        server.stop()

    # A job the server left running is 'interrupted' after the next start.
    store = Store(pg_url)
    job = job_store.create(store, "backup.create", "some-vm", "admin")
    job_store.update_job(store, job.id, state="running")
    store.close()
    server = start_server(pg_url, workdir)
    try:
        assert server.admin_password is None  # only the first start creates 'admin'
        with server.client() as client:
            login = client.post("/login", json={"username": "pguser",
                                                "password": "password-pg"})
            assert login.status_code == 200
            seen = client.get(f"/jobs/{job.id}").json()
        assert seen["state"] == "interrupted" and seen["error"]
    finally:
        server.stop()
