"""Restore drills over the API and on the backups page (no guest boot here: the boot is
tests/integration/test_backup_drill.py's): a drill is a job, its record is listed for
viewers, a failed drill fails its job and is recorded, viewers cannot start one."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from kvmops.backup.repository import Repository
from kvmops.devguest.build import GuestImage
from kvmops.host.connection import Host
from tests.conftest import SESSION_PREFIX
from tests.integration.api_server import ApiServer, wait_job
from tests.integration.backup_util import offline_point

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def point(host: Host, tiny_guest: GuestImage, images_dir: Path, backups_dir: Path
          ) -> Iterator[tuple[str, Path, str]]:
    """(VM, repository, backup id) of an offline full backup of a shut-off VM."""
    name = f"{SESSION_PREFIX}drapi"
    with offline_point(host, tiny_guest, name, backups_dir, "--disk", "size=16M",
                       "--images-dir", str(images_dir)) as (repo, backup_id):
        yield name, repo, backup_id


def test_drill_job_and_log(api: ApiServer, point: tuple[str, Path, str], images_dir: Path,
                           host: Host) -> None:
    vm, repo, backup_id = point
    body = {"repo": str(repo), "boot": False, "images_dir": str(images_dir)}
    with api.client("operator") as op, api.client("viewer") as viewer:
        assert viewer.post(f"/vms/{vm}/backups/drill", json=body).status_code == 403
        started = op.post(f"/vms/{vm}/backups/drill", json=body)
        assert started.status_code == 202, started.text
        job = wait_job(op, started.json()["job_id"])
        assert job["state"] == "succeeded", job
        record = job["result"]
        assert record["ok"] and record["verified"] and record["restored"]
        assert record["booted"] is None and record["backup_id"] == backup_id
        assert not any(d.name().startswith("drill-") for d in host.domains())

        listed = viewer.get(f"/vms/{vm}/backups/drills")
        assert listed.status_code == 200, listed.text
        assert listed.json()[0]["id"] == record["id"] and listed.json()[0]["authentic"]
        assert any(r["id"] == record["id"] for r in viewer.get("/backups/drills").json())

        # a damaged chain: the job fails, the record says why
        data = Repository(repo).backups_dir(vm) / backup_id / "vda.qcow2"
        original = data.read_bytes()
        try:
            data.write_bytes(original[:-4096] + bytes(b ^ 0xFF for b in original[-4096:]))
            failed = wait_job(op, op.post(f"/vms/{vm}/backups/drill", json=body
                                          ).json()["job_id"])
            assert failed["state"] == "failed" and "verification" in failed["error"], failed
            last = viewer.get(f"/vms/{vm}/backups/drills").json()[0]
            assert last["ok"] is False and last["problems"]
        finally:
            data.write_bytes(original)


def test_drills_card_in_chromium(point: tuple[str, Path, str], images_dir: Path,
                                 backups_dir: Path, tiny_guest: GuestImage) -> None:
    """The backups page's 'Restore drills' card: run one (no boot), see it passed."""
    pytest.importorskip("playwright.sync_api")
    from tests.integration.browser import CHROMIUM, LAPTOP, chromium_page, log_in, web_server

    if not CHROMIUM.exists():
        pytest.fail("chromium missing: run scripts/setup-host.sh")
    vm, repo, backup_id = point
    user, password = "drweb", "dr-web-password-1"
    with web_server("kvmops-drweb-", [(user, "operator", password)], "--allow-dir",
                    str(images_dir), "--allow-dir", str(tiny_guest.kernel.parent),
                    "--backup-dir", str(backups_dir)) as server, \
            chromium_page(LAPTOP) as page:
        log_in(page, server.url, user, password)
        page.goto(f"{server.url}/vms/{vm}/backups?repo={repo}")
        page.locator("#drill-rows tr").first.wait_for(timeout=60_000)
        before = page.locator("#drill-rows tr[data-drill]").count()
        page.uncheck("#drill-form input[name=boot]")
        page.click("#drill-form button[type=submit]")
        page.locator(f"#drill-rows tr[data-drill]:nth-child({before + 1})").wait_for(
            timeout=180_000)
        first = page.locator("#drill-rows tr[data-drill]").first
        assert first.get_attribute("data-ok") == "1"
        assert backup_id in first.inner_text() and "passed" in first.inner_text()
