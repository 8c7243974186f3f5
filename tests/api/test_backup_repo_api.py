"""A repository's identity over the API and on the backups page: `GET /backups/repo`
(as `backup repo info`), `POST /backups/repo/rekey` (admins; as `backup repo rekey`),
and the prune policy's hourly/monthly/yearly counts."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from kvmops.backup import repokey
from kvmops.backup.storerepo import open_repository, prepare_repository
from kvmops.config import settings
from kvmops.devguest.build import GuestImage
from kvmops.errors import KeyRequiredError
from kvmops.host.connection import Host
from tests.conftest import SESSION_PREFIX
from tests.integration.api_server import ApiServer
from tests.integration.backup_util import offline_point

pytestmark = pytest.mark.integration


@contextlib.contextmanager
def _key_files(*names: str) -> Iterator[list[Path]]:
    """Key files in the server's key directory, removed at the end (made or not)."""
    base = settings().state_dir / "keys" / "repository"
    base.mkdir(parents=True, exist_ok=True, mode=0o700)
    paths = [base / f"{SESSION_PREFIX}{name}" for name in names]
    try:
        yield paths
    finally:
        for path in paths:
            path.unlink(missing_ok=True)


@pytest.fixture()
def encrypted_repo(repo_dir: Path) -> Iterator[tuple[Path, Path, Path]]:
    """(repository, its key file, a not yet existing second key file), both in the
    server's key directory."""
    with _key_files("old.key", "new.key") as (old, new):
        repokey.create_key_file(old)
        prepare_repository(repo_dir, encrypt=True, key_file=old, compress="zstd:3")
        yield repo_dir, old, new


def test_repo_info_and_rekey(api: ApiServer, encrypted_repo: tuple[Path, Path, Path]) -> None:
    repo, old, new = encrypted_repo
    vm = f"{SESSION_PREFIX}nosuchvm"
    with api.client("viewer") as viewer, api.client("operator") as op, \
            api.client("admin") as admin:
        shown = viewer.get("/backups/repo", params={"repo": str(repo)})
        assert shown.status_code == 200, shown.text
        info = shown.json()
        assert info["encrypted"] is True and info["compression"] == "zstd:3"
        assert info["format"] == "sealed" and info["cipher"] == "aes-256-gcm"
        assert info["key_id"] and "wrapped" not in shown.text and old.read_text() not in shown.text

        body = {"repo": str(repo), "key_file": old.name, "new_key_file": new.name}
        assert op.post("/backups/repo/rekey", json=body).status_code == 403
        missing = admin.post("/backups/repo/rekey", json={"repo": str(repo),
                                                           "key_file": old.name})
        assert missing.status_code == 422 and "new key" in missing.text
        outside = admin.post("/backups/repo/rekey", json={**body, "key_file": "/etc/shadow"})
        assert outside.status_code == 403, outside.text
        wrong = admin.post("/backups/repo/rekey", json={**body, "key_file": new.name,
                                                         "new_key_file": old.name})
        assert wrong.status_code >= 400 and not new.exists()  # "new" named as old: absent

        changed = admin.post("/backups/repo/rekey", json=body)
        assert changed.status_code == 200, changed.text
        # the same data key (no data rewritten), wrapped by the new key file it made
        assert changed.json()["key_id"] == info["key_id"] and new.is_file()
        # the old key no longer opens it; the new one does
        refused = viewer.get(f"/vms/{vm}/backups", params={"repo": str(repo),
                                                           "key_file": old.name})
        assert refused.status_code >= 400 and "key" in refused.json()["error"]
        opened = viewer.get(f"/vms/{vm}/backups", params={"repo": str(repo),
                                                          "key_file": new.name})
        assert opened.status_code == 200 and opened.json() == [], opened.text

        rows = admin.get("/audit", params={"limit": 200}).json()
        rekeys = [r for r in rows if r["path"] == "/api/v1/backups/repo/rekey"]
        assert any(r["status_code"] == 200 and r["user"] == "admin" for r in rekeys)
        assert any(r["result"] == "denied" and r["user"] == "op" for r in rekeys)


def test_repo_info_of_plain_and_missing(api: ApiServer, repo_dir: Path) -> None:
    with api.client("viewer") as viewer:
        plain = viewer.get("/backups/repo", params={"repo": str(repo_dir)})
        assert plain.status_code == 200 and plain.json()["encrypted"] is False
        assert plain.json()["format"] == "plain"
        gone = viewer.get("/backups/repo", params={"repo": str(repo_dir / "nothing")})
        assert gone.status_code == 404, gone.text
        outside = viewer.get("/backups/repo", params={"repo": "/etc"})
        assert outside.status_code == 403, outside.text


def test_prune_policy_counts(api: ApiServer, repo_dir: Path) -> None:
    vm = f"{SESSION_PREFIX}nosuchvm"
    with api.client("operator") as op:
        nothing = op.post(f"/vms/{vm}/backups/prune", json={"repo": str(repo_dir)})
        assert nothing.status_code == 422 and "keep_monthly" in nothing.text
        for count in ("keep_hourly", "keep_monthly", "keep_yearly"):
            started = op.post(f"/vms/{vm}/backups/prune",
                              json={"repo": str(repo_dir), count: 1, "dry_run": True})
            assert started.status_code == 202, started.text


def test_repo_card_and_rekey_in_chromium(host: Host, tiny_guest: GuestImage, images_dir: Path,
                                         backups_dir: Path,
                                         encrypted_repo: tuple[Path, Path, Path]) -> None:
    """The backups page names the repository's encryption and key id; an admin changes
    the key there."""
    pytest.importorskip("playwright.sync_api")
    from tests.integration.browser import CHROMIUM, LAPTOP, chromium_page, log_in, web_server

    if not CHROMIUM.exists():
        pytest.fail("chromium missing: run scripts/setup-host.sh")
    repo, old, new = encrypted_repo
    name = f"{SESSION_PREFIX}rekeyweb"
    user, password = "rkweb", "rk-web-password-1"
    with offline_point(host, tiny_guest, name, backups_dir, "--disk", "size=16M",
                       "--images-dir", str(images_dir)), \
            web_server("kvmops-rkweb-", [(user, "admin", password)], "--allow-dir",
                       str(images_dir), "--backup-dir", str(backups_dir)) as server, \
            chromium_page(LAPTOP) as page:
        log_in(page, server.url, user, password)
        page.goto(f"{server.url}/vms/{name}/backups?repo={repo}")
        info = page.locator("#repo-info")
        assert info.get_attribute("data-encrypted") == "yes"
        before = info.get_attribute("data-key-id")
        assert before and before in info.inner_text() and "zstd:3" in info.inner_text()
        page.click("#rekey summary")
        page.fill("#rekey-form input[name=key_file]", old.name)
        page.fill("#rekey-form input[name=new_key_file]", new.name)
        page.click("#rekey-form button[type=submit]")
        result = page.locator("#rekey-result")
        result.wait_for(state="visible")
        assert "new key only" in result.inner_text(), result.inner_text()
        assert result.get_attribute("data-key-id") == before and new.is_file()
        with pytest.raises(KeyRequiredError):
            open_repository(repo, key_file=old)
        assert open_repository(repo, key_file=new).identity()
