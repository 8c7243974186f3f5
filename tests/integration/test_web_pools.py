"""The web UI's Pools page end to end: a real ``kvmops serve`` and Debian's chromium
driven by Playwright. An admin creates a dir pool through the form and is refused one
outside the allowed directories (one line); an operator creates a volume in it, sees
it listed, and deletes it, uploads a file into a volume and downloads it, but has no
pool create or delete controls; a viewer reads
pools and volumes without any control; the admin deletes the pool."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kvmops.host import pools as host_pools
from kvmops.host.connection import Host
from tests.conftest import SESSION_PREFIX, run_cli
from tests.integration.api_server import ApiServer
from tests.integration.browser import CHROMIUM, chromium_page, log_in, web_server

pytest.importorskip("playwright.sync_api")

ADMIN, ADMIN_PASSWORD = f"{SESSION_PREFIX}pooladm"[:60], "pool-admin-1"
OPERATOR, OPERATOR_PASSWORD = f"{SESSION_PREFIX}poolop"[:60], "pool-operator-1"
VIEWER, VIEWER_PASSWORD = f"{SESSION_PREFIX}poolview"[:60], "pool-viewer-1"
POOL = f"{SESSION_PREFIX}webpool"

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(),
                                reason="chromium missing: run scripts/setup-host.sh")


@pytest.fixture(scope="module")
def web() -> Iterator[ApiServer]:
    with web_server("kvmops-webpool-", [(ADMIN, "admin", ADMIN_PASSWORD),
                                        (OPERATOR, "operator", OPERATOR_PASSWORD),
                                        (VIEWER, "viewer", VIEWER_PASSWORD)]) as server:
        yield server


@pytest.fixture
def pool(host: Host) -> Iterator[str]:
    yield POOL
    with contextlib.suppress(Exception):
        host_pools.stop(host, POOL)
    with contextlib.suppress(Exception):
        host_pools.undefine(host, POOL)


def _log_in_as(page: Any, web: ApiServer, name: str, password: str) -> None:
    page.context.clear_cookies()
    log_in(page, web.url, name, password)
    page.click("nav a[href='/pools']")
    page.wait_for_url(f"{web.url}/pools")


def _upload_and_download(page: Any, pool: str, images_dir: Path) -> None:
    """The operator uploads a file into a raw volume through the page (the bar shows
    the upload's progress), the volume holds its bytes (read with ``kvmops volume
    download``), the page's Download link gives them back, and a file larger than the
    volume is refused in one line (by the page, before sending: the API test shows
    the server refusing it too)."""
    section = page.locator(f"section[data-volumes='{pool}']")
    vol_form = section.locator("form.volume-create")
    vol_form.locator("input[name=name]").fill("up.raw")
    vol_form.locator("input[name=size]").fill("1M")
    vol_form.locator("select[name=format]").select_option("raw")
    vol_form.locator("button[type=submit]").click()
    row = page.locator(f"section[data-volumes='{pool}'] tr[data-volume='up.raw']")
    row.wait_for()
    data = os.urandom(300 * 1024 + 17)
    source = images_dir / f"{SESSION_PREFIX}web-up.raw"
    source.write_bytes(data)
    upload = row.locator("form.volume-upload")
    assert upload.locator("select[name=format]").input_value() == "raw"
    upload.locator("input[type=file]").set_input_files(str(source))
    with page.expect_navigation():  # the page reloads once the upload is in
        upload.locator("button[type=submit]").click()
    dest = images_dir / f"{SESSION_PREFIX}web-down.raw"
    try:
        result = run_cli("volume", "download", pool, "up.raw", str(dest))
        assert result.code == 0, result.stderr
        stored = dest.read_bytes()
        assert stored[:len(data)] == data and stored[len(data):] == bytes(1024 * 1024
                                                                          - len(data))
        link = page.locator(f"section[data-volumes='{pool}'] tr[data-volume='up.raw'] "
                            "a[data-volume-download]")
        got = page.request.get(page.url.rsplit("/", 1)[0] + link.get_attribute("href"))
        assert got.status == 200 and got.body() == stored
        # Too big for the volume: refused in one line, the volume unchanged.
        source.write_bytes(os.urandom(1024 * 1024 + 1))
        upload = page.locator(f"section[data-volumes='{pool}'] tr[data-volume='up.raw'] "
                              "form.volume-upload")
        upload.locator("input[type=file]").set_input_files(str(source))
        upload.locator("button[type=submit]").click()
        error = page.locator("#pool-error")
        error.wait_for()
        assert "resize the volume" in error.inner_text()
        assert "\n" not in error.inner_text()
    finally:
        source.unlink()
        dest.unlink(missing_ok=True)


def test_pools_page_by_role(web: ApiServer, host: Host, pool: str, images_dir: Path) -> None:
    target = images_dir / f"{pool}-dir"
    with chromium_page() as page:
        _log_in_as(page, web, ADMIN, ADMIN_PASSWORD)
        form = page.locator("#pool-create")
        form.locator("input[name=name]").fill(pool)
        form.locator("select[name=type]").select_option("dir")
        form.locator("input[name=target]").fill("/tmp")
        form.locator("input[name=build]").check()
        form.locator("button[type=submit]").click()
        error = page.locator("#pool-error")
        error.wait_for()
        text = error.inner_text()
        assert "outside the allowed image directories" in text and "\n" not in text
        assert not host_pools.exists(host, pool)
        form.locator("input[name=target]").fill(str(target))
        form.locator("button[type=submit]").click()
        row = page.locator(f"#pool-rows tr[data-pool='{pool}']")
        row.wait_for()
        assert row.get_attribute("data-active") == "yes"
        assert row.locator("[data-field=type]").inner_text().strip() == "dir"
        assert host_pools.pool(host, pool).active and target.is_dir()

        _log_in_as(page, web, OPERATOR, OPERATOR_PASSWORD)
        assert page.locator("#pool-create").count() == 0
        assert page.locator("button[data-pool-action=delete]").count() == 0
        section = page.locator(f"section[data-volumes='{pool}']")
        vol_form = section.locator("form.volume-create")
        vol_form.locator("input[name=name]").fill("web.qcow2")
        vol_form.locator("input[name=size]").fill("16M")
        vol_form.locator("select[name=format]").select_option("qcow2")
        vol_form.locator("button[type=submit]").click()
        vol_row = page.locator(f"section[data-volumes='{pool}'] tr[data-volume='web.qcow2']")
        vol_row.wait_for()
        assert vol_row.locator("[data-field=format]").inner_text() == "qcow2"
        assert vol_row.locator("[data-field=capacity]").inner_text() == "16.0 MiB"
        assert (target / "web.qcow2").is_file()
        page.once("dialog", lambda dialog: dialog.accept())
        vol_row.locator("button[data-volume-action=delete]").click()
        vol_row.wait_for(state="detached")
        assert not (target / "web.qcow2").exists()
        _upload_and_download(page, pool, images_dir)

        _log_in_as(page, web, VIEWER, VIEWER_PASSWORD)
        assert pool in page.locator("main").inner_text()
        for control in ("#pool-create", "form.volume-create", "button[data-pool-action]",
                        "button[data-volume-action]"):
            assert page.locator(control).count() == 0, control

        _log_in_as(page, web, ADMIN, ADMIN_PASSWORD)
        row = page.locator(f"#pool-rows tr[data-pool='{pool}']")
        page.once("dialog", lambda dialog: dialog.accept())
        row.locator("button[data-pool-action=delete]").click()
        row.wait_for(state="detached")
        assert not host_pools.exists(host, pool)
