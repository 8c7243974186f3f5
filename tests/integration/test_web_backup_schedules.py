"""The VM page's "Backup schedules" card end to end: a real ``kvmops serve`` and Debian's
chromium driven by Playwright. Run history made through the CLI on the server's
database (a fake clock: an offline backup that succeeds on the 1st of next month, a run
into a file that fails on the 2nd) shows as a month grid coloured by result; an
operator adds a schedule through the form (a refused repository is one line), runs it
and removes it; a viewer sees the schedules and the calendar without any control."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import SESSION_PREFIX, run_cli
from tests.integration.api_server import ApiServer
from tests.integration.browser import CHROMIUM, chromium_page, log_in, web_server

pytest.importorskip("playwright.sync_api")

OPERATOR, OPERATOR_PASSWORD = f"{SESSION_PREFIX}schedop"[:60], "sched-operator-1"
VIEWER, VIEWER_PASSWORD = f"{SESSION_PREFIX}schedview"[:60], "sched-viewer-1"

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(),
                                reason="chromium missing: run scripts/setup-host.sh")


@pytest.fixture(scope="module")
def web(backups_dir: Path) -> Iterator[ApiServer]:
    with web_server("kvmops-websched-", [(OPERATOR, "operator", OPERATOR_PASSWORD),
                                         (VIEWER, "viewer", VIEWER_PASSWORD)],
                    "--backup-dir", str(backups_dir),
                    extra_env={"KVMOPS_SCHEDULER": "0"}) as server:
        yield server


def _cli(web: ApiServer, *args: str, retry: str = "1") -> Any:
    env = {"KVMOPS_DB": web.db, "KVMOPS_SCHEDULE_RETRY_MINUTES": retry}
    result = run_cli("backup", "schedule", *args, "--json", env=env)
    assert result.code == 0, result.stderr
    return json.loads(result.stdout)


def _next_month(day: int) -> datetime:
    now = datetime.now(UTC)
    year, month = (now.year + 1, 1) if now.month == 12 else (now.year, now.month + 1)
    return datetime(year, month, day, 10, 0, tzinfo=UTC)


def test_schedules_card_and_calendar(web: ApiServer, fresh_vm: str, repo_dir: Path,
                                     backups_dir: Path) -> None:
    vm = fresh_vm
    blocked = backups_dir / f"{SESSION_PREFIX}not-a-dir-{vm}"
    blocked.write_text("a file where a repository should be\n")
    good = _cli(web, "add", vm, "--repo", str(repo_dir), "--every", "0 10 1 * *",
                "--keep-last", "3")
    bad = _cli(web, "add", vm, "--repo", str(blocked), "--every", "0 10 2 * *",
               "--keep-last", "3")
    first, second = _next_month(1), _next_month(2)
    (ok,) = _cli(web, "run-due", "--now", first.isoformat())
    assert (ok["schedule_id"], ok["result"]) == (good["id"], "ok"), ok
    (failed,) = _cli(web, "run-due", "--now", second.isoformat(), retry="")
    assert (failed["schedule_id"], failed["result"]) == (bad["id"], "failed"), failed

    with chromium_page() as page:
        log_in(page, web.url, OPERATOR, OPERATOR_PASSWORD)
        page.goto(f"{web.url}/vms/{vm}")
        card = page.locator("#backup-schedules")
        rows = card.locator("tbody[data-field=schedules] tr[data-schedule]")
        rows.nth(1).wait_for()
        assert rows.count() == 2
        assert "failed" in card.locator(f"tr[data-schedule='{bad['id']}']").inner_text()
        card.locator("button[data-month='1']").click()
        day1 = card.locator(f"[data-day='{first:%Y-%m-%d}']")
        day2 = card.locator(f"[data-day='{second:%Y-%m-%d}']")
        assert day1.get_attribute("data-result") == "ok"
        assert day2.get_attribute("data-result") == "failed"
        assert "not a directory" in (day2.get_attribute("title") or "") or \
            "failed" in (day2.get_attribute("title") or "")
        assert card.locator(".cal-day.run-failed").count() == 1
        assert card.locator(".cal-day.run-ok").count() == 1

        form = card.locator("form.schedule-add")
        form.locator("input[name=repo]").fill("/etc")
        form.locator("input[name=cron]").fill("@daily")
        form.locator("input[name=keep_daily]").fill("7")
        form.locator("button[type=submit]").click()
        error = card.locator("[data-field=schedule-error]")
        error.wait_for()
        assert "/etc" in error.inner_text() and "\n" not in error.inner_text()
        form.locator("input[name=repo]").fill(str(repo_dir))
        form.locator("button[type=submit]").click()
        rows.nth(2).wait_for()
        added = [s for s in _cli(web, "list") if s["id"] not in (good["id"], bad["id"])]
        assert [(s["vm"], s["cron"], s["keep_daily"], s["created_by"]) for s in added] == \
            [(vm, "@daily", 7, OPERATOR)]
        new = card.locator(f"tr[data-schedule='{added[0]['id']}']")
        new.locator("button[data-schedule-action=run-now]").click()
        page.wait_for_function(
            "id => [...document.querySelectorAll('#backup-schedules tr[data-schedule]')]"
            ".some(r => r.dataset.schedule === String(id) && !/\\u2013$/.test("
            "r.children[5].textContent.trim()))", arg=added[0]["id"])
        page.once("dialog", lambda dialog: dialog.accept())
        new.locator("button[data-schedule-action=remove]").click()
        new.wait_for(state="detached")
        assert [s["id"] for s in _cli(web, "list")] == [good["id"], bad["id"]]

        # The viewer in a context of its own (the operator's page keeps its streams)
        viewer = page.context.browser.new_context(viewport=page.viewport_size)
        viewer.set_default_timeout(120_000)
        try:
            vpage = viewer.new_page()
            log_in(vpage, web.url, VIEWER, VIEWER_PASSWORD)
            vpage.goto(f"{web.url}/vms/{vm}")
            vcard = vpage.locator("#backup-schedules")
            vcard.locator("tbody[data-field=schedules] tr[data-schedule]").nth(1).wait_for()
            assert vcard.locator("form.schedule-add").count() == 0
            assert vcard.locator("button[data-schedule-action]").count() == 0
            vcard.locator("button[data-month='1']").click()
            assert vcard.locator(f"[data-day='{first:%Y-%m-%d}']").get_attribute(
                "data-result") == "ok"
        finally:
            viewer.close()
    # The removed schedule's runs went with it; the others' history stays.
    runs = _cli(web, "runs")
    assert sorted((r["schedule_id"], r["result"]) for r in runs) == \
        [(good["id"], "ok"), (bad["id"], "failed")]
