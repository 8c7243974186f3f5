"""File-level restore over the API (no guest boot: an offline backup of a shut-off VM
whose disk holds a partition table and ext4): list files, restore-file as a job,
download, escaping paths refused, viewers refused."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from kvmops.devguest.build import GuestImage
from kvmops.host.connection import Host
from tests.conftest import SESSION_PREFIX, run_cli
from tests.integration.api_server import ApiServer, wait_job
from tests.integration.conftest import remove_vm
from tests.integration.test_backup_files import make_partitioned_disk


@pytest.fixture(scope="module")
def point(host: Host, tiny_guest: GuestImage, images_dir: Path, backups_dir: Path,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path, str]]:
    """(VM, repository, backup id) of an offline full backup."""
    name = f"{SESSION_PREFIX}frapi"
    image = images_dir / f"{name}-vda.qcow2"
    make_partitioned_disk(image, tmp_path_factory.mktemp("frapi"))
    repo = backups_dir / f"frapi-{time.monotonic_ns()}"
    repo.mkdir(mode=0o755)
    try:
        made = run_cli("vm", "create", name, "--memory", "256M", "--vcpus", "1", "--kernel",
                       str(tiny_guest.kernel), "--initrd", str(tiny_guest.initrd),
                       "--cmdline", "console=ttyS0", "--disk", f"path={image},format=qcow2")
        assert made.code == 0, made.stderr
        result = run_cli("backup", "create", name, "--repo", str(repo), "--full", "--json")
        assert result.code == 0, result.stderr
        yield name, repo, str(json.loads(result.stdout)["id"])
    finally:
        remove_vm(host, name)
        image.unlink(missing_ok=True)
        run_cli("backup", "umount", "--all")


def test_files_restore_file_download(api: ApiServer, point: tuple[str, Path, str],
                                     images_dir: Path) -> None:
    vm, repo, backup_id = point
    base = f"/vms/{vm}/backups/{backup_id}"
    expected = "hello from the backup\n"
    with api.client("operator") as op, api.client("viewer") as viewer:
        listed = op.get(f"{base}/files", params={"repo": str(repo), "path": "/data"})
        assert listed.status_code == 200, listed.text
        names = {e["name"]: e for e in listed.json()["entries"]}
        assert names["hello.txt"]["size"] == len(expected)
        assert names["escape"]["type"] == "symlink"
        assert viewer.get(f"{base}/files", params={"repo": str(repo)}).status_code == 403

        got = op.get(f"{base}/file", params={"repo": str(repo), "path": "/data/hello.txt"})
        assert got.status_code == 200, got.text
        assert got.content.decode() == expected

        refused = op.get(f"{base}/files", params={"repo": str(repo),
                                                   "path": "/data/escape/passwd"})
        assert refused.status_code in (400, 403), refused.text
        assert "leaves the file system" in refused.json()["error"]

        out = images_dir / f"frapi-out-{time.monotonic_ns()}"
        started = op.post(f"{base}/restore-file", json={
            "repo": str(repo), "path": "/data/hello.txt", "to": str(out)})
        assert started.status_code == 202, started.text
        job = wait_job(op, started.json()["job_id"])
        assert job["state"] == "succeeded", job
        assert job["result"]["written"] == str(out / "hello.txt")
        assert (out / "hello.txt").read_text() == expected
        assert job["result"]["sha256"] == hashlib.sha256(expected.encode()).hexdigest()

        outside = op.post(f"{base}/restore-file", json={
            "repo": str(repo), "path": "/data/hello.txt", "to": "/etc/kvmops-nope"})
        assert outside.status_code in (400, 403), outside.text
