"""Replication over the API (no guest: the points are made with qemu-img, see
tests/unit/test_remote_replicate.py): a job for an operator, refused for a viewer; a
remote URL outside the server's ``remote_repositories`` is refused (403) before any job
and audited as denied; one inside it replicates, verified, with progress."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from kvmops.backup.repository import Repository
from kvmops.backup.storerepo import open_repository
from tests.integration.api_server import ApiServer, add_users, start_server, wait_job
from tests.integration.remote_servers import S3Server
from tests.unit.test_remote_replicate import VM, add_point

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def server(s3: S3Server, tmp_path_factory: pytest.TempPathFactory, backups_dir: Path
           ) -> Iterator[ApiServer]:
    work = tmp_path_factory.mktemp("replapi")
    allowed = s3.url(s3.bucket("kvmops-api"), "allowed")
    started = start_server(f"sqlite:///{work / 'api.db'}", work, "--backup-dir",
                           str(backups_dir),
                           extra_env={**s3.env(), "KVMOPS_REMOTE_REPOSITORIES": allowed})
    try:
        add_users(started)
        yield started
    finally:
        started.stop()


def test_replicate_job_and_allow_list(server: ApiServer, s3: S3Server, backups_dir: Path,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    source = Repository(backups_dir / f"replapi-{time.monotonic_ns()}")
    full = add_point(source, 1, None)
    inc = add_point(source, 2, full)
    allowed = s3.url("kvmops-api", "allowed/site-b")
    outside = s3.url("kvmops-api", "elsewhere")
    body = {"source": str(source.root), "target": allowed, "vm": VM}
    with server.client("operator") as op, server.client("viewer") as viewer, \
            server.client("admin") as admin:
        assert viewer.post("/backups/replicate", json=body).status_code == 403
        refused = op.post("/backups/replicate", json={**body, "target": outside})
        assert refused.status_code == 403, refused.text
        assert "not in the allowed remote repositories" in refused.text
        other_endpoint = s3.url("kvmops-api", "allowed").replace("127.0.0.1", "localhost")
        assert op.post("/backups/replicate",
                       json={**body, "target": other_endpoint}).status_code == 403
        assert op.post("/backups/replicate", json={**body, "vm": None}).status_code == 422
        started = op.post("/backups/replicate", json=body)
        assert started.status_code == 202, started.text
        job = wait_job(op, started.json()["job_id"])
        assert job["state"] == "succeeded", job
        assert job["kind"] == "backup.replicate"
        assert [p["backup_id"] for p in job["result"]["shipped"]] == [full.id, inc.id]
        rows = admin.get("/audit", params={"limit": 200}).json()
    assert any(r["path"] == "/api/v1/backups/replicate" and r["result"] == "denied"
               and r["status_code"] == 403 and r["user"] == "op" for r in rows)
    for name, value in s3.env().items():
        monkeypatch.setenv(name, value)
    assert [m.id for m in open_repository(allowed).scan(VM)[0]] == [full.id, inc.id]
