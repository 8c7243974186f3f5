"""File-level restore over the API (no guest boot: an offline backup of a shut-off VM
whose disk holds a partition table and ext4): list files, restore-file as a job,
download, escaping paths refused, viewers refused."""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from kvmops.devguest.build import GuestImage
from kvmops.errors import KeyRequiredError
from kvmops.host.connection import Host
from tests.conftest import SESSION_PREFIX, assert_one_line_error, run_cli
from tests.integration.api_server import ApiServer, wait_job
from tests.integration.backup_util import offline_point
from tests.integration.test_backup_files import make_partitioned_disk


@pytest.fixture(scope="module")
def point(host: Host, tiny_guest: GuestImage, images_dir: Path, backups_dir: Path,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path, str]]:
    """(VM, repository, backup id) of an offline full backup."""
    name = f"{SESSION_PREFIX}frapi"
    image = images_dir / f"{name}-vda.qcow2"
    make_partitioned_disk(image, tmp_path_factory.mktemp("frapi"))
    try:
        with offline_point(host, tiny_guest, name, backups_dir,
                           "--disk", f"path={image},format=qcow2") as (repo, backup_id):
            yield name, repo, backup_id
    finally:
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


def test_browse_files_dialog_in_chromium(point: tuple[str, Path, str], images_dir: Path,
                                         backups_dir: Path) -> None:
    """The backups page's 'Browse files…': list the point, walk into /data, download."""
    pytest.importorskip("playwright.sync_api")
    from tests.integration.browser import CHROMIUM, LAPTOP, chromium_page, log_in, web_server

    if not CHROMIUM.exists():
        pytest.fail("chromium missing: run scripts/setup-host.sh")
    vm, repo, backup_id = point
    user, password = "frweb", "fr-web-password-1"
    with web_server("kvmops-frweb-", [(user, "operator", password)], "--allow-dir",
                    str(images_dir), "--backup-dir", str(backups_dir)) as server, \
            chromium_page(LAPTOP) as page:
        log_in(page, server.url, user, password)
        page.goto(f"{server.url}/vms/{vm}/backups?repo={repo}")
        page.locator(f"#points-table button[data-browse='{backup_id}']").click()
        rows = page.locator("#files-rows tr")
        page.locator("#files-rows tr[data-name='data']").wait_for(timeout=120_000)
        assert page.locator("#files-dialog [data-field=point]").inner_text() == backup_id
        page.locator("#files-rows tr[data-name='data'] button[data-open]").click()
        page.locator("#files-rows tr[data-name='hello.txt']").wait_for(timeout=120_000)
        assert page.locator("#files-dialog [data-field=path]").inner_text() == "/data"
        assert rows.filter(has_text="escape").locator("td").nth(1).inner_text() == "symlink"
        with page.expect_download(timeout=120_000) as info:
            page.locator("#files-rows tr[data-name='hello.txt'] a").click()
        assert Path(info.value.path()).read_text() == "hello from the backup\n"
        assert page.locator("#files-rows tr[data-name='hello.txt'] "
                            "button[data-restore-file]").count() == 1


def test_encrypted_repository_restore_file_needs_its_key(
        point: tuple[str, Path, str], backups_dir: Path, images_dir: Path,
        tmp_path: Path) -> None:
    """The interface contract: restore-file ... --key-file FILE writes DIR/<basename>;
    without the key it exits non-zero and writes nothing."""
    vm, _repo, _id = point
    key = tmp_path / "repo.key"
    key.write_bytes(os.urandom(32).hex().encode())
    key.chmod(0o600)
    repo = backups_dir / f"frenc-{time.monotonic_ns()}"
    repo.mkdir(mode=0o755)
    made = run_cli("backup", "create", vm, "--repo", str(repo), "--full", "--encrypt",
                   "--key-file", str(key), "--json")
    assert made.code == 0, made.stderr
    at = str(json.loads(made.stdout)["id"])
    out = images_dir / f"frenc-out-{time.monotonic_ns()}"
    refused = run_cli("backup", "restore-file", vm, "--repo", str(repo), "--at", at,
                      "--path", "/data/hello.txt", "--to", str(out))
    assert_one_line_error(refused, KeyRequiredError.exit_code, "--key-file")
    assert not out.exists()
    done = run_cli("backup", "restore-file", vm, "--repo", str(repo), "--at", at, "--path",
                   "/data/hello.txt", "--to", str(out), "--key-file", str(key))
    assert done.code == 0, done.stderr
    assert (out / "hello.txt").read_text() == "hello from the backup\n"
