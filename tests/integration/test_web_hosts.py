"""The web UI's Hosts page: every host with its state (``local`` reachable, a host on a
closed port unreachable with the reason); an admin adds (a refused check is shown on
the page) and removes hosts through /api/v1/hosts; a viewer reads without the controls."""

from __future__ import annotations

import pytest

CLOSED = "qemu+tcp://127.0.0.1:1/system"  # nothing listens on port 1


def test_hosts_page_admin_adds_and_removes_viewer_reads() -> None:
    pytest.importorskip("playwright.sync_api")
    from tests.integration.browser import CHROMIUM, chromium_page, log_in, web_server

    if not CHROMIUM.exists():
        pytest.fail("chromium missing: run scripts/setup-host.sh")
    users = [("hadmin", "admin", "hosts-admin-1"), ("hview", "viewer", "hosts-view-1")]
    with web_server("kvmops-webhosts-", users) as server, chromium_page() as page:
        log_in(page, server.url, "hadmin", "hosts-admin-1")
        page.click("nav a[href='/hosts']")
        page.wait_for_url(server.url + "/hosts")
        local = page.locator("#hosts-table tr[data-host=local]")
        assert local.get_attribute("data-reachable") == "true"
        assert local.locator("button[data-host-remove]").count() == 0

        page.fill("#hosts-add input[name=name]", "webclosed")
        page.fill("#hosts-add input[name=uri]", CLOSED)
        page.click("#hosts-add button[type=submit]")
        page.wait_for_selector("#hosts-error:not([hidden])")
        error = page.inner_text("#hosts-error")
        assert "host 'webclosed'" in error and "Connection refused" in error, error
        page.uncheck("#hosts-add input[name=check]")
        page.click("#hosts-add button[type=submit]")
        page.wait_for_selector("#hosts-table tr[data-host=webclosed]")
        row = page.locator("#hosts-table tr[data-host=webclosed]")
        assert row.get_attribute("data-reachable") == "false"
        assert "Connection refused" in row.inner_text()
        assert page.inner_text("#hosts-total") == "2"

        page.on("dialog", lambda dialog: dialog.accept())
        row.locator("button[data-host-remove]").click()
        page.wait_for_selector("#hosts-table tr[data-host=webclosed]", state="detached")

        page.context.clear_cookies()
        log_in(page, server.url, "hview", "hosts-view-1")
        page.goto(server.url + "/hosts")
        assert page.locator("#hosts-table tr[data-host=local]").count() == 1
        assert page.locator("#hosts-add").count() == 0
        assert page.locator("button[data-host-remove]").count() == 0
