"""Instant recovery over the API (no guest to wait for: an offline backup of a shut-off
VM whose disk holds a pattern): the recovery is a job that follows the copy to its end,
the list shows it completed, viewers are refused, an unknown recovery is a 404."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from kvmops.devguest.build import GuestImage
from kvmops.host.connection import Host
from tests.conftest import SESSION_PREFIX
from tests.integration.api_server import ApiServer, wait_job
from tests.integration.backup_util import offline_point
from tests.integration.test_backup_instant import _recovered


@pytest.fixture(scope="module")
def point(host: Host, tiny_guest: GuestImage, images_dir: Path, backups_dir: Path
          ) -> Iterator[tuple[str, Path, str, Path]]:
    """(VM, repository, backup id, its disk image) of an offline full backup."""
    name = f"{SESSION_PREFIX}iapi"
    image = images_dir / f"{name}-vda.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(image), "64M"], check=True)
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", "write -P 0x5a 1M 6M", str(image)],
                   check=True, capture_output=True)
    try:
        with offline_point(host, tiny_guest, name, backups_dir,
                           "--disk", f"path={image},format=qcow2") as (repo, backup_id):
            yield name, repo, backup_id, image
    finally:
        image.unlink(missing_ok=True)


def test_instant_recovery_job(api: ApiServer, point: tuple[str, Path, str, Path],
                              images_dir: Path, host: Host) -> None:
    vm, repo, backup_id, image = point
    new = f"{SESSION_PREFIX}iapi-new"
    body = {"repo": str(repo), "at": backup_id, "new_vm": new, "images_dir": str(images_dir)}
    with _recovered(host, new):
        with api.client("operator") as op, api.client("viewer") as viewer:
            assert viewer.post(f"/vms/{vm}/backups/instant", json=body).status_code == 403
            assert op.post("/backups/instant/nosuch-vm/resume", json={}).status_code == 404
            started = op.post(f"/vms/{vm}/backups/instant", json=body)
            assert started.status_code == 202, started.text
            job = wait_job(op, started.json()["job_id"])
            assert job["state"] == "succeeded", job
            assert job["kind"] == "backup.instant" and job["target"] == new
            assert job["result"]["record"]["state"] == "completed", job["result"]
            assert job["result"]["percent_done"] == 100.0
            assert job["progress"] and job["progress"]["total"] > 0, job

            listed = {s["record"]["vm"]: s for s in viewer.get("/backups/instant").json()}
            assert listed[new]["record"]["state"] == "completed"
            assert listed[new]["record"]["backup_id"] == backup_id
        overlay = Path(listed[new]["record"]["disks"][0]["overlay"])
        host.domain(new).destroy()
        info = json.loads(subprocess.run(
            ["qemu-img", "info", "-f", "qcow2", "--output=json", str(overlay)],
            capture_output=True, text=True, check=True).stdout)
        assert "backing-filename" not in info, info
        compare = subprocess.run(["qemu-img", "compare", "-f", "qcow2", "-F", "qcow2",
                                  str(overlay), str(image)], capture_output=True, text=True)
        assert compare.returncode == 0, compare.stdout + compare.stderr
