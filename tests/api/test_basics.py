"""Success paths that need no VM: health, host, list, log-in with CSRF, users and
tokens, audit, images and a job, the event stream."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import httpx

from tests.conftest import run_cli
from tests.integration.api_server import ApiServer, wait_job


def test_health_is_open_and_docs_exist(api: ApiServer) -> None:
    assert httpx.get(api.url + "/api/v1/health").json()["status"] == "ok"
    assert httpx.get(api.url + "/docs").status_code == 200
    spec = httpx.get(api.url + "/openapi.json").json()
    assert "/api/v1/vms" in spec["paths"]


def test_first_start_created_admin_and_printed_password(api: ApiServer) -> None:
    assert api.admin_password
    with api.client() as client:
        response = client.post("/login", json={"username": "admin",
                                               "password": api.admin_password})
    assert response.status_code == 200, response.text
    assert response.json()["role"] == "admin"


def test_host_and_vm_list(api: ApiServer) -> None:
    with api.client("viewer") as client:
        host = client.get("/host")
        vms = client.get("/vms")
    assert host.status_code == 200 and host.json()["accelerator"] in ("kvm", "tcg")
    assert vms.status_code == 200
    for vm in vms.json():
        assert {"name", "state", "vcpus", "memory", "accelerator"} <= set(vm)


def test_host_doctor(api: ApiServer) -> None:
    with api.client("viewer") as client:
        response = client.get("/host/doctor")
    assert response.status_code == 200
    report = response.json()
    checks = {c["name"]: c for c in report["checks"]}
    assert checks["libvirtd"]["status"] == "ok"
    assert {"virtlogd", "qemu", "qemu-img", "accelerator", "images-dir", "state-dir",
            "backup-jobs", "backup-api", "memory", "guest-agents"} <= set(checks)
    assert report["failed"] == sum(c["status"] == "fail" for c in report["checks"])
    assert report["ok"] is (report["failed"] == 0)


def test_login_session_cookie_and_csrf(api: ApiServer) -> None:
    with api.client() as client:
        bad = client.post("/login", json={"username": "op", "password": "wrong-password"})
        assert bad.status_code == 401
        ok = client.post("/login", json={"username": "op", "password": "password-op"})
        assert ok.status_code == 200
        cookie = ok.headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=strict" in cookie.replace("Strict", "strict")
        csrf = ok.json()["csrf_token"]
        assert client.get("/me").json()["name"] == "op"
        # A state-changing cookie request without the CSRF header is refused...
        refused = client.post("/jobs/nonexistent/cancel")
        assert refused.status_code == 403 and "CSRF" in refused.json()["error"]
        # ... and passes authentication with it (then: no such job).
        passed = client.post("/jobs/nonexistent/cancel", headers={"X-CSRF-Token": csrf})
        assert passed.status_code == 404
        out = client.post("/logout", headers={"X-CSRF-Token": csrf})
        assert out.status_code == 200
        assert client.get("/me").status_code == 401
    with api.client("operator") as client:
        assert client.get("/me").json()["via"] == "token"  # bearer needs no CSRF token
        assert client.post("/jobs/nonexistent/cancel").status_code == 404


def test_users_tokens_and_audit(api: ApiServer) -> None:
    with api.client("admin") as admin:
        created = admin.post("/users", json={"name": "auditee", "role": "viewer",
                                             "password": "password-auditee"})
        assert created.status_code == 201
        assert "password" not in created.text
        token = admin.post("/users/auditee/tokens").json()["token"]
        names = [u["name"] for u in admin.get("/users").json()]
        assert "auditee" in names
        with httpx.Client(base_url=api.url + "/api/v1",
                          headers={"Authorization": f"Bearer {token}"}) as user:
            assert user.get("/me").json()["name"] == "auditee"
            assert user.post("/vms/x/destroy").status_code == 403
        assert admin.delete("/users/auditee").status_code == 200
        with httpx.Client(base_url=api.url + "/api/v1",
                          headers={"Authorization": f"Bearer {token}"}) as user:
            assert user.get("/me").status_code == 401
        entries = admin.get("/audit?limit=200").json()
    text = json.dumps(entries)
    assert token not in text and "password-auditee" not in text
    actions = {(e["user"], e["action"], e["status_code"]) for e in entries}
    assert ("admin", "add_user", 201) in actions
    assert ("auditee", "destroy", 403) in actions
    assert ("admin", "delete_user", 200) in actions
    denied = [e for e in entries if e["action"] == "destroy" and e["user"] == "auditee"]
    assert denied[0]["target"] == "x" and denied[0]["result"] == "denied"


def test_cli_user_commands(api: ApiServer) -> None:
    listed = run_cli("user", "list", "--json", "--db", api.db)
    assert listed.code == 0, listed.stderr
    roles = {u["name"]: u["role"] for u in json.loads(listed.stdout)}
    assert roles["op"] == "operator" and roles["view"] == "viewer"
    dup = run_cli("user", "add", "op", "--role", "viewer", "--password-stdin", "--db", api.db,
                  input="password-x\n")
    assert dup.code == 4 and "already exists" in dup.stderr
    assert run_cli("user", "delete", "nobody", "--db", api.db).code == 3


def _collect_events(api: ApiServer, out: list[dict[str, Any]], ready: threading.Event,
                    job_done: threading.Event) -> None:
    headers = {"Authorization": f"Bearer {api.tokens['viewer']}"}
    with httpx.stream("GET", api.url + "/api/v1/events", headers=headers,
                      timeout=httpx.Timeout(120, read=120)) as response:
        event = None
        for line in response.iter_lines():
            if line.startswith(": connected"):
                ready.set()
            elif line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: ") and event == "job":
                data = json.loads(line[6:])
                out.append(data)
                if data.get("state") in ("succeeded", "failed"):
                    job_done.set()
                    return


def test_image_convert_job_with_events(api: ApiServer, images_dir: Path) -> None:
    src = images_dir / "api-src.qcow2"
    dst = images_dir / "api-dst.raw"
    events: list[dict[str, Any]] = []
    ready, done = threading.Event(), threading.Event()
    reader = threading.Thread(target=_collect_events, args=(api, events, ready, done),
                              daemon=True)
    reader.start()
    assert ready.wait(30)
    with api.client("operator") as client:
        made = client.post("/images", json={"path": str(src), "size": "8M"})
        assert made.status_code == 201, made.text
        info = client.get("/images/info", params={"path": str(src)})
        assert info.json()["virtual_size"] == 8 * 1024 * 1024
        assert client.post("/images/check", json={"path": str(src)}).status_code == 200
        started = client.post("/images/convert", json={"source": str(src),
                                                       "destination": str(dst),
                                                       "format": "raw"})
        assert started.status_code == 202, started.text
        job_id = started.json()["job_id"]
        job = wait_job(client, job_id)
        assert job["state"] == "succeeded", job
        assert job["result"]["format"] == "raw"
        assert any(j["id"] == job_id for j in client.get("/jobs").json())
    assert dst.is_file()
    assert done.wait(60)
    reader.join(10)
    assert [e["state"] for e in events if e["id"] == job_id and "state" in e][-1] == "succeeded"


def test_web_admin_pages_read_users_audit_and_jobs(api: ApiServer) -> None:
    """The web UI's users, audit and jobs pages (rendered on the server from the same
    database as the API) for an admin's log-in session; a viewer's session gets 403."""
    with api.client("admin") as admin:
        created = admin.post("/users", json={"name": "pages-admin", "role": "admin",
                                             "password": "password-pages"})
        assert created.status_code == 201, created.text
    with httpx.Client(base_url=api.url) as browser:
        login = browser.post("/api/v1/login", json={"username": "pages-admin",
                                                    "password": "password-pages"})
        assert login.status_code == 200, login.text
        users = browser.get("/users")
        assert users.status_code == 200, users.text
        for name in ("admin", "op", "view", "pages-admin"):
            assert f'data-user="{name}"' in users.text
        audit = browser.get("/audit", params={"who": "admin"})
        assert audit.status_code == 200 and "add_user" in audit.text
        assert browser.get("/jobs").status_code == 200
    with httpx.Client(base_url=api.url) as browser:
        login = browser.post("/api/v1/login", json={"username": "view",
                                                    "password": "password-view"})
        assert login.status_code == 200, login.text
        assert browser.get("/users").status_code == 403
        assert browser.get("/audit").status_code == 403
