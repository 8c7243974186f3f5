"""The web UI end to end: a real ``kvmops serve``, Debian's chromium driven by
Playwright. Log in, create and start a tiny guest, follow its state live,
see its console draw, back it up with a live progress bar, restore it, and
find each step in the audit log. Screenshots go to test-output/screenshots/.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kvmops.backup import jobs
from kvmops.devguest.build import BUILDER_VERSION, GuestImage
from kvmops.host.connection import Host
from tests.conftest import REPO, SESSION_PREFIX, run_cli
from tests.integration.api_server import ApiServer
from tests.integration.backup_util import backup, list_backups
from tests.integration.browser import CHROMIUM, LAPTOP, chromium_page, web_server
from tests.integration.conftest import remove_vm

TINY_OS = f"kvmops tiny guest {BUILDER_VERSION}"  # the tiny guest's os-release PRETTY_NAME

pytest.importorskip("playwright.sync_api")

SHOTS = REPO / "test-output" / "screenshots"
USER, PASSWORD = "webadmin", "web-password-1"
PHONE = {"width": 390, "height": 844}
WAIT_MS = 180_000  # upper bound for slow steps under TCG; never asserted as a duration

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(),
                                reason="chromium missing: run scripts/setup-host.sh")

CANVAS_INK = """() => {
  const c = document.querySelector('#screen canvas');
  if (!c || !c.width || !c.height) return 0;
  const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
  let lit = 0;
  for (let i = 0; i < d.length; i += 4) if (d[i] + d[i + 1] + d[i + 2] > 120) lit++;
  return lit;
}"""


@pytest.fixture(scope="module")
def web(tiny_guest: GuestImage, images_dir: Path, backups_dir: Path) -> Iterator[ApiServer]:
    with web_server("kvmops-web-", [(USER, "admin", PASSWORD)], "--allow-dir",
                    str(images_dir), "--backup-dir", str(backups_dir), "--allow-dir",
                    str(tiny_guest.kernel.parent),
                    extra_env={"KVMOPS_WEB_SHUTDOWN_WATCH": "5"}) as server:
        yield server


@pytest.fixture
def browser_page() -> Iterator[Any]:
    with chromium_page(LAPTOP) as page:
        yield page


def shoot(page: Any, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.set_viewport_size(LAPTOP)
    page.screenshot(path=str(SHOTS / f"{name}-laptop.png"), full_page=True)
    page.set_viewport_size(PHONE)
    page.screenshot(path=str(SHOTS / f"{name}-phone.png"), full_page=True)
    page.set_viewport_size(LAPTOP)


def log_in(page: Any, url: str) -> None:
    page.goto(url + "/")
    assert "/login" in page.url
    page.fill("input[name=username]", USER)
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(url + "/")


def wait_state(page: Any, selector: str, state: str) -> None:
    page.locator(selector).filter(has_text=state).first.wait_for(timeout=WAIT_MS)


def test_console_socket_needs_a_session(web: ApiServer) -> None:
    from websockets.exceptions import ConnectionClosed
    from websockets.sync.client import connect

    url = web.url.replace("http://", "ws://") + f"/ws/vms/{SESSION_PREFIX}none/vnc"
    with connect(url, open_timeout=30) as ws, pytest.raises(ConnectionClosed) as closed:
        ws.recv(timeout=30)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 4401


def test_pages_redirect_to_login(web: ApiServer) -> None:
    import httpx

    for path in ("/", "/vms", "/host", "/audit", f"/vms/{SESSION_PREFIX}x/backups"):
        response = httpx.get(web.url + path, follow_redirects=False, timeout=30)
        assert response.status_code == 303, path
        assert response.headers["location"].startswith("/login?next=")


def test_host_health_page(web: ApiServer, browser_page: Any) -> None:
    """The doctor's checks, reached from the navigation, as in ``kvmops host doctor``."""
    page = browser_page
    log_in(page, web.url)
    page.click("nav a[href='/host']")
    page.wait_for_url(f"{web.url}/host")
    rows = page.locator("#doctor-table tr[data-check]")
    names = rows.evaluate_all("rs => rs.map(r => r.dataset.check)")
    assert {"libvirtd", "virtlogd", "accelerator", "images-dir", "memory"} <= set(names)
    assert page.locator("tr[data-check=libvirtd]").get_attribute("data-status") == "ok"
    failed = page.locator("tr[data-status=fail]").count()
    assert page.locator("#doctor-summary").get_attribute("data-ok") == str(failed == 0).lower()
    assert f"{failed} failed" in page.locator("#doctor-summary").inner_text()
    shoot(page, "host-health")


def test_vm_life_console_backup_restore_audit(web: ApiServer, browser_page: Any,
                                              tiny_guest: GuestImage, images_dir: Path,
                                              repo_dir: Path, host: Host) -> None:
    page = browser_page
    name = f"{SESSION_PREFIX}web-1"
    restored = f"{name}-restored"
    try:
        SHOTS.mkdir(parents=True, exist_ok=True)
        log_in(page, web.url)
        page.locator("#vm-counts").wait_for()

        # create (shut off), then start from the VM page
        page.goto(web.url + "/create")
        # the name pattern is one the browser compiles (v-mode): it really checks
        page.fill("input[name=name]", "bad name")
        assert page.eval_on_selector("input[name=name]", "el => el.validity.patternMismatch")
        page.fill("input[name=name]", name)
        page.fill("input[name=memory]", "256M")
        page.fill("input[name=disk_size]", "64M")
        page.fill("input[name=images_dir]", str(images_dir))
        page.fill("input[name=kernel]", str(tiny_guest.kernel))
        page.fill("input[name=initrd]", str(tiny_guest.initrd))
        page.fill("input[name=cmdline]", "console=ttyS0 console=tty0")
        page.uncheck("input[name=start]")
        page.click("#create-vm button[type=submit]")
        page.wait_for_url(f"{web.url}/vms/{name}", timeout=WAIT_MS)
        head = "[data-vm-page] [data-field=state]"
        wait_state(page, head, "shut off")
        # data on the disk, so the backup below copies long enough to report progress
        disk = images_dir / f"{name}-vda.qcow2"
        filled = subprocess.run(["qemu-io", "-f", "qcow2", "-c", "write -P 0x5a 0 48M",
                                 str(disk)], capture_output=True, text=True, timeout=120)
        assert filled.returncode == 0, filled.stderr
        page.click("[data-vm-page] button[data-action=start]")
        wait_state(page, head, "running")  # from the libvirt 'started' event over SSE

        # the VM list follows suspend/resume live
        page.goto(web.url + "/vms")
        row = f"tr[data-vm='{name}']"
        wait_state(page, f"{row} [data-field=state]", "running")
        page.click(f"{row} button[data-action=suspend]")
        wait_state(page, f"{row} [data-field=state]", "paused")
        page.click(f"{row} button[data-action=resume]")
        wait_state(page, f"{row} [data-field=state]", "running")

        # console: noVNC through the same-origin bridge draws the boot console
        page.goto(f"{web.url}/vms/{name}/console")
        page.locator("#console-status").filter(has_text=re.compile(r"^connected$")).wait_for(timeout=WAIT_MS)
        # a function, not an expression: the pages' CSP forbids eval of strings
        page.wait_for_function(f"() => ({CANVAS_INK})() > 200", timeout=WAIT_MS)
        page.fill("#send-text input[name=text]", "echo kvmops")
        page.click("#send-text button[type=submit]")
        page.locator(".toast.ok").filter(has_text="typed").wait_for()
        page.screenshot(path=str(SHOTS / "console-laptop.png"))

        # serial console: xterm.js through the same-origin bridge shows the guest's shell
        page.click("nav.tabs a[href$='/serial']")
        page.locator("#serial-status").filter(has_text=re.compile(r"^connected$")).wait_for(
            timeout=WAIT_MS)
        rows = page.locator("#terminal .xterm-rows")
        rows.filter(has_text="kvmops-tiny:").wait_for(timeout=WAIT_MS)
        page.locator("#terminal").click()
        page.keyboard.type("echo kvm$((40+2))ops\n")
        rows.filter(has_text="kvm42ops").wait_for(timeout=WAIT_MS)
        shoot(page, "serial-console")

        # VM detail: graphs fill from the stats endpoint
        page.goto(f"{web.url}/vms/{name}")
        page.wait_for_function(
            "() => document.querySelector('[data-metric=cpu] polyline')"
            ".getAttribute('points').split(' ').length >= 6", timeout=WAIT_MS)
        memory = page.locator("[data-metric=mem] [data-field=value]").inner_text()
        assert re.match(r"^[\d.]+ \w+ of 256\.0 MiB \(QEMU uses [\d.]+ \w+ on the host\)$",
                        memory), memory
        shoot(page, "vm-detail")

        # backup with a live progress bar, then restore as a new VM
        page.goto(f"{web.url}/vms/{name}/backups?repo={repo_dir}")
        page.fill("#backup-form input[name=speed]", "8M")
        page.select_option("#backup-form select[name=fleecing]", "on")
        page.click("#backup-form button[type=submit]")
        # the job may report 100 % a moment before it ends: wait for its end, then the bar
        page.locator("#backup-progress[data-state=succeeded]").filter(
            has_text="backup: done").wait_for(timeout=WAIT_MS)
        started = [e for e in jobs.read_events(name, limit=100) if e["event"] == "started"]
        assert started[-1]["fleecing"] is True  # the form's choice reached the engine
        assert page.locator("#backup-progress [data-field=percent]").inner_text() == "100%"
        assert page.locator("#backup-progress progress").get_attribute("value") == "100"
        page.locator("#points-table tr[data-point]").first.wait_for()
        assert page.locator(".timeline .pt-full").count() >= 1
        shoot(page, "backups")
        page.locator("#points-table button[data-restore]").first.click()
        page.fill("#restore-dialog input[name=new_vm]", restored)
        page.click("#restore-go")
        # the dialog's close event starts the job a moment after the click: wait for the
        # restore's own end, not the backup's "succeeded" still shown from before
        page.locator("#backup-progress[data-state=succeeded]").filter(
            has_text=re.compile(r"restore of .*: done")).wait_for(timeout=WAIT_MS)
        assert host.has_domain(restored)

        # snapshots of the restored (shut off) VM: take, revert, delete
        page.on("dialog", lambda dialog: dialog.accept())
        page.goto(f"{web.url}/vms/{restored}/snapshots")
        page.fill("#snapshot-form input[name=name]", "web-s1")
        page.fill("#snapshot-form input[name=description]", "before the change")
        page.click("#snapshot-form button[type=submit]")
        node = page.locator("#snapshot-tree li[data-snapshot='web-s1']")
        node.wait_for(timeout=WAIT_MS)
        shoot(page, "snapshots")
        # the page reloads after the revert: wait for that reload, so that the delete
        # below is clicked on the new page, not on one that is about to go away
        with page.expect_navigation(timeout=WAIT_MS), page.expect_response(
                lambda r: r.url.endswith("/web-s1/revert"), timeout=WAIT_MS) as reverted:
            page.click("#snapshot-tree button[data-snap-action=revert][data-snapshot='web-s1']")
        assert reverted.value.status == 200
        page.wait_for_load_state()
        node.wait_for()
        page.click("#snapshot-tree button[data-snap-action=delete][data-snapshot='web-s1']")
        page.locator("text=No snapshots.").wait_for(timeout=WAIT_MS)

        # the tiny guest ignores ACPI: the page says so after the watch time
        page.goto(f"{web.url}/vms/{name}")
        page.click("[data-vm-page] button[data-action=shutdown]")
        page.locator(".toast.error").filter(has_text="still running").wait_for(timeout=WAIT_MS)

        # the audit log names every step
        page.goto(web.url + "/audit")
        table = page.locator("#audit-table").inner_text()
        for action in ("login", "create_vm", "start", "suspend", "resume", "console",
                       "serial_console", "send_text", "create_backup", "restore",
                       "create_snapshot", "revert", "delete_snapshot"):
            assert action in table, (action, table)
        shoot(page, "audit")
        page.goto(web.url + "/")
        page.locator("#recent-jobs tr[data-job]").first.wait_for()
        shoot(page, "dashboard")
    finally:
        for vm in (restored, name):
            remove_vm(host, vm)
        with contextlib.suppress(OSError):
            for leftover in Path("/var/lib/kvmops/images").glob(f"{restored}-*"):
                leftover.unlink()


# ------------------------------------------------------------------ VM configuration
def vm_json(name: str) -> dict[str, Any]:
    """``kvmops vm info --json``: what the UI changed, read through the CLI."""
    result = run_cli("vm", "info", name, "--json")
    assert result.code == 0, result.stderr
    info: dict[str, Any] = json.loads(result.stdout)
    return info


def csrf_of(page: Any) -> str:
    return str(page.eval_on_selector("meta[name=csrf-token]", "el => el.content"))


def api_get(page: Any, url: str, path: str) -> Any:
    """A GET of the REST API with the page's session (what the UI's fetch calls see)."""
    response = page.request.get(url + "/api/v1" + path)
    assert response.ok, (path, response.status, response.text())
    return response.json()


def test_vm_page_sets_vcpus_memory_autostart(web: ApiServer, browser_page: Any,
                                             fresh_vm: str) -> None:
    page = browser_page
    log_in(page, web.url)
    page.goto(f"{web.url}/vms/{fresh_vm}")
    page.fill("#vcpus-form input[name=vcpus]", "2")
    page.click("#vcpus-form button[type=submit]")
    page.locator(".toast.ok").filter(has_text="2 vCPU(s)").wait_for()
    assert page.locator(".kv [data-field=vcpus]").inner_text() == "2"
    page.fill("#memory-form input[name=memory]", "320M")
    page.click("#memory-form button[type=submit]")
    page.locator(".toast.ok").filter(has_text="memory 320.0 MiB").wait_for()
    # more memory than the host has: one line with the remedy, nothing changed
    page.fill("#memory-form input[name=memory]", "4000G")
    page.click("#memory-form button[type=submit]")
    page.locator(".toast.error").filter(has_text="more than this host has").wait_for()
    page.click("#autostart-toggle")
    page.locator(".toast.ok").filter(has_text="autostart of VM").filter(
        has_text="enabled").wait_for()
    info = vm_json(fresh_vm)
    assert (info["vcpus"], info["memory"], info["autostart"]) == (2, 320 * 1024**2, True)
    inactive = subprocess.run(["virsh", "dumpxml", "--inactive", fresh_vm],
                              capture_output=True, text=True, timeout=60, check=True).stdout
    assert re.search(r"<vcpu[^>]*>2</vcpu>", inactive), inactive
    assert f"<memory unit='KiB'>{320 * 1024}</memory>" in inactive, inactive
    # the page shows the configuration after a reload; autostart goes off again
    page.reload()
    assert page.locator(".kv [data-field=vcpus]").inner_text().startswith("2")
    assert page.locator(".kv [data-field=autostart]").inner_text() == "on"
    page.click("#autostart-toggle")
    page.locator(".toast.ok").filter(has_text="disabled").wait_for()
    assert vm_json(fresh_vm)["autostart"] is False
    shoot(page, "vm-config")


def test_vm_page_clones(web: ApiServer, browser_page: Any, fresh_vm: str,
                        host: Host) -> None:
    page = browser_page
    clone = f"{fresh_vm}-clone"
    try:
        log_in(page, web.url)
        page.goto(f"{web.url}/vms/{fresh_vm}")
        page.click("#clone-btn")
        page.fill("#clone-dialog input[name=new_name]", clone)
        page.click("#clone-go")
        page.locator("#clone-status[data-state=succeeded]").filter(
            has_text=f"cloned as {clone}").wait_for(timeout=WAIT_MS)
        source, copy = vm_json(fresh_vm), vm_json(clone)
        assert copy["state"] == "shut off"
        original = {d["source"] for d in source["disks"]}
        copied = [d["source"] for d in copy["disks"] if d["device"] == "disk"]
        assert copied and not original & set(copied)
        assert all(Path(p).is_file() for p in copied)
        jobs = api_get(page, web.url, f"/jobs?target={fresh_vm}")
        assert [(j["kind"], j["state"], j["created_by"]) for j in jobs] == [
            ("vm.clone", "succeeded", USER)]
    finally:
        remove_vm(host, clone)


def test_vm_page_undefines_with_and_without_storage(web: ApiServer, browser_page: Any,
                                                    vm_factory: Any, host: Host) -> None:
    page = browser_page
    gone, kept = vm_factory(), vm_factory()
    gone_disk = vm_json(gone)["disks"][0]["source"]
    kept_disk = vm_json(kept)["disks"][0]["source"]
    try:
        log_in(page, web.url)
        page.goto(f"{web.url}/vms/{gone}")
        page.click("#undefine-btn")
        dialog = page.locator("#undefine-dialog")
        assert not page.locator("#undefine-files").is_visible()
        page.check("#undefine-storage")
        # the dialog names the files it deletes before anyone confirms (as the API)
        page.locator("#undefine-files[data-state=ready]").wait_for()
        assert dialog.locator("[data-field=remove]").inner_text().strip() == gone_disk
        assert api_get(page, web.url, f"/vms/{gone}/storage")["remove"] == [gone_disk]
        shoot(page, "undefine-dialog")
        with page.expect_navigation(url=f"{web.url}/vms", timeout=WAIT_MS):
            page.click("#undefine-go")
        assert not host.has_domain(gone)
        assert not Path(gone_disk).exists()
        assert run_cli("vm", "info", gone, "--json").code != 0

        page.goto(f"{web.url}/vms/{kept}")
        page.click("#undefine-btn")
        with page.expect_navigation(url=f"{web.url}/vms", timeout=WAIT_MS):
            page.click("#undefine-go")
        assert not host.has_domain(kept)
        assert Path(kept_disk).is_file()  # without the storage option the image stays
        listed = {vm["name"] for vm in api_get(page, web.url, "/vms")}
        assert not {gone, kept} & listed
        page.goto(web.url + "/audit")
        assert "undefine" in page.locator("#audit-table").inner_text()
    finally:
        for name in (gone, kept):
            remove_vm(host, name)
        with contextlib.suppress(OSError):
            Path(kept_disk).unlink()


def test_vm_page_attaches_and_detaches_disks(web: ApiServer, browser_page: Any,
                                             fresh_vm: str, images_dir: Path) -> None:
    page = browser_page
    log_in(page, web.url)
    page.goto(f"{web.url}/vms/{fresh_vm}")
    page.click("details.subform summary")
    page.fill("#attach-form input[name=size]", "16M")
    page.fill("#attach-form input[name=images_dir]", str(images_dir))
    with page.expect_navigation(timeout=WAIT_MS):
        page.click("#attach-form button[type=submit]")
    page.locator("#disk-rows tr[data-disk=vdb]").wait_for()
    disks = {d["target"]: d for d in api_get(page, web.url, f"/vms/{fresh_vm}/disks")}
    assert set(disks) == {"vda", "vdb"}
    image = Path(disks["vdb"]["image"])
    assert image.parent == images_dir and image.is_file()
    assert disks["vdb"]["virtual_size"] == 16 * 1024**2

    page.click("#disk-rows button[data-detach=vdb]")
    assert page.locator("#detach-dialog [data-field=source]").inner_text() == str(image)
    page.check("#detach-dialog input[name=remove_storage]")
    with page.expect_navigation(timeout=WAIT_MS):
        page.click("#detach-go")
    page.locator("#disk-rows tr[data-disk=vda]").wait_for()
    assert page.locator("#disk-rows tr[data-disk=vdb]").count() == 0
    disks = {d["target"]: d for d in api_get(page, web.url, f"/vms/{fresh_vm}/disks")}
    assert set(disks) == {"vda"}
    assert not image.exists()


def test_jobs_page_shows_history_live(web: ApiServer, browser_page: Any, fresh_vm: str,
                                      host: Host) -> None:
    """The Jobs page lists what GET /api/v1/jobs lists: state, progress, error, who."""
    page = browser_page
    first, second = f"{fresh_vm}-j1", f"{fresh_vm}-j2"
    missing = f"{SESSION_PREFIX}nosuchvm-jobs"
    try:
        log_in(page, web.url)
        page.click("nav a[href='/jobs']")
        page.wait_for_url(f"{web.url}/jobs")
        headers = {"X-CSRF-Token": csrf_of(page), "Content-Type": "application/json"}

        def clone(source: str, name: str) -> str:
            response = page.request.post(f"{web.url}/api/v1/vms/{source}/clone",
                                         headers=headers, data=json.dumps({"new_name": name}))
            assert response.status == 202, response.text()
            return str(response.json()["job_id"])

        ok_id = clone(fresh_vm, first)
        bad_id = clone(missing, f"{missing}-c")
        # both show up on the open page by themselves (no reload), in their final states
        ok_row = page.locator(f"#job-rows tr[data-job='{ok_id}']")
        bad_row = page.locator(f"#job-rows tr[data-job='{bad_id}']")
        ok_row.locator("[data-field=state]").filter(has_text="succeeded").wait_for(
            timeout=WAIT_MS)
        bad_row.locator("[data-field=state]").filter(has_text="failed").wait_for(
            timeout=WAIT_MS)
        assert missing in bad_row.locator("[data-field=message]").inner_text()
        assert ok_row.locator("[data-field=by]").inner_text() == USER
        assert ok_row.locator("progress").get_attribute("value") == "100"
        shoot(page, "jobs")

        # the same jobs, states and errors as the API
        api = {j["id"]: j for j in api_get(page, web.url, "/jobs?limit=100")}
        assert api[ok_id]["state"] == "succeeded" and api[ok_id]["kind"] == "vm.clone"
        assert api[bad_id]["state"] == "failed" and missing in api[bad_id]["error"]
        shown = page.locator("#job-rows tr[data-job]").evaluate_all(
            "rs => rs.map(r => [r.dataset.job, r.dataset.state])")
        for job_id, state in shown:
            assert api.get(job_id, {"state": state})["state"] == state

        # history by state, server-rendered and refreshed alike
        page.select_option("#jobs-filter select[name=state]", "failed")
        page.click("#jobs-filter button[type=submit]")
        page.wait_for_url(re.compile(r"/jobs\?state=failed"))
        bad_row.wait_for()
        states = page.locator("#job-rows [data-field=state]").all_inner_texts()
        assert states and set(states) == {"failed"}
        assert page.locator(f"#job-rows tr[data-job='{ok_id}']").count() == 0

        # a job started after the page opened appears and ends there too
        page.goto(f"{web.url}/jobs?target={fresh_vm}")
        later = clone(fresh_vm, second)
        page.locator(f"#job-rows tr[data-job='{later}'] [data-field=state]").filter(
            has_text="succeeded").wait_for(timeout=WAIT_MS)
        assert host.has_domain(second)
    finally:
        for name in (first, second):
            remove_vm(host, name)


def test_jobs_page_follows_a_running_job(web: ApiServer, browser_page: Any,
                                         running_vm: str) -> None:
    """A job shows as running (with a Cancel button) while it runs, then how it ended,
    on the open page (no reload): a background guest command that sleeps."""
    page = browser_page
    log_in(page, web.url)
    page.goto(f"{web.url}/jobs?target={running_vm}")
    response = page.request.post(
        f"{web.url}/api/v1/vms/{running_vm}/guest/exec",
        headers={"X-CSRF-Token": csrf_of(page), "Content-Type": "application/json"},
        data=json.dumps({"argv": ["/bin/sleep", "15"], "background": True, "timeout": 120}))
    assert response.status == 202, response.text()
    job_id = response.json()["job_id"]
    row = page.locator(f"#job-rows tr[data-job='{job_id}']")
    row.locator("[data-field=state]").filter(has_text="running").wait_for(timeout=WAIT_MS)
    assert row.locator(f"button[data-cancel='{job_id}']").is_visible()
    assert api_get(page, web.url, f"/jobs/{job_id}")["state"] in ("running", "succeeded")
    row.locator("[data-field=state]").filter(has_text="succeeded").wait_for(timeout=WAIT_MS)
    assert row.locator("button[data-cancel]").count() == 0
    assert re.match(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d$",
                    row.locator("[data-field=finished]").inner_text())
    assert row.locator("[data-field=by]").inner_text() == USER
    assert api_get(page, web.url, f"/jobs/{job_id}")["state"] == "succeeded"


def test_vm_page_of_a_running_vm(web: ApiServer, browser_page: Any, running_vm: str) -> None:
    """Clone and undefine wait for the VM to be shut off (said on the buttons); a
    configuration change is said to apply at the next start. The shared guest keeps
    its values (1 vCPU): the change is a no-op for it."""
    page = browser_page
    log_in(page, web.url)
    page.goto(f"{web.url}/vms/{running_vm}")
    for button in ("#clone-btn", "#undefine-btn"):
        assert page.locator(button).is_disabled()
        assert "shut the VM off first" in (page.get_attribute(button, "title") or "")
    page.fill("#vcpus-form input[name=vcpus]", "1")
    page.click("#vcpus-form button[type=submit]")
    page.locator(".toast.ok").filter(has_text="at its next start").wait_for()
    assert vm_json(running_vm)["state"] == "running"
    # the live figures the page reads (services/web_views through host's Domain)
    figures = api_get(page, web.url, f"/ui/vms/{running_vm}/stats")
    assert (figures["active"], figures["vcpus"], figures["memory_max"]) == (
        True, 1, 256 * 1024**2)
    assert figures["cpu_time_ns"] > 0 and figures["disk_read_bytes"] > 0
    guest = api_get(page, web.url, f"/ui/vms/{running_vm}/guest")
    assert (guest["active"], guest["hostname"], guest["os"]["pretty-name"]) == (
        True, "kvmops-tiny", TINY_OS)  # what the tiny guest's agent says
    assert "os" not in guest["errors"]
    page.locator("#guest [data-field=os]").filter(has_text=TINY_OS).wait_for()
    assert page.locator("#guest [data-field=hostname]").inner_text() == "kvmops-tiny"


def test_vm_xml_page(web: ApiServer, browser_page: Any, fresh_vm: str) -> None:
    """The XML tab shows what ``kvmops vm dumpxml`` prints, live and --inactive."""
    page = browser_page
    log_in(page, web.url)
    page.goto(f"{web.url}/vms/{fresh_vm}")
    page.click("nav.tabs a[href$='/xml']")
    page.wait_for_url(f"{web.url}/vms/{fresh_vm}/xml")
    dumped = run_cli("vm", "dumpxml", fresh_vm)
    assert dumped.code == 0, dumped.stderr
    assert page.locator("#domain-xml").inner_text().strip() == dumped.stdout.strip()
    page.click("#xml-inactive")
    page.wait_for_url(re.compile(r"/xml\?inactive=true$"))
    inactive = run_cli("vm", "dumpxml", fresh_vm, "--inactive")
    assert page.locator("#domain-xml").inner_text().strip() == inactive.stdout.strip()


def test_guest_page_runs_a_command(web: ApiServer, browser_page: Any, running_vm: str) -> None:
    page = browser_page
    log_in(page, web.url)
    page.goto(f"{web.url}/vms/{running_vm}/guest")
    page.fill("#exec-form input[name=command]", "echo kvm$((40+2))ops; echo oops >&2; exit 3")
    page.click("#exec-form button[type=submit]")
    page.locator("#guest-exec[data-state=done]").wait_for(timeout=WAIT_MS)
    assert page.locator("#guest-exec [data-field=exit]").inner_text() == "3"
    assert page.locator("#guest-exec [data-field=stdout]").inner_text().strip() == "kvm42ops"
    assert page.locator("#guest-exec [data-field=stderr]").inner_text().strip() == "oops"
    page.click("#fs-status")
    page.locator("#guest-fs [data-field=fs-state]").filter(has_text="thawed").wait_for()
    page.click("#agent-ping")
    page.locator(".toast.ok").filter(has_text="answers").wait_for()
    # the QEMU monitor (admin): QMP and HMP, as 'kvmops qmp'
    page.fill("#qmp-form input[name=execute]", "query-status")
    page.click("#qmp-form button[type=submit]")
    page.locator("#monitor [data-field=reply][data-state=done]").wait_for(timeout=WAIT_MS)
    assert json.loads(page.locator("#monitor [data-field=reply]").inner_text())["status"] \
        == "running"
    page.check("#qmp-form input[value=hmp]")
    page.fill("#qmp-form input[name=command]", "nosuchcmd")
    page.click("#qmp-form button[type=submit]")
    page.locator(".toast.error").filter(has_text="nosuchcmd").wait_for()
    page.goto(web.url + "/audit")
    assert "exec_" in page.locator("#audit-table").inner_text()


def test_backup_page_prunes(web: ApiServer, browser_page: Any, fresh_vm: str,
                            repo_dir: Path) -> None:
    """Retention from the backup page: a dry run says what would go and keeps it; the
    real run removes it (read back with ``kvmops backup list``)."""
    first = backup(fresh_vm, repo_dir)["id"]
    second = backup(fresh_vm, repo_dir, "--full")["id"]
    page = browser_page
    log_in(page, web.url)
    page.goto(f"{web.url}/vms/{fresh_vm}/backups?repo={repo_dir}")
    page.click("details.subform summary")
    page.fill("#prune-form input[name=keep_last]", "1")
    page.click("#prune-form button[type=submit]")
    result = page.locator("#prune-result")
    result.filter(has_text="Would remove 1 backup(s)").wait_for(timeout=WAIT_MS)
    assert result.get_attribute("data-removed") == first
    assert [b["id"] for b in list_backups(fresh_vm, repo_dir)] == [first, second]
    page.uncheck("#prune-form input[name=dry_run]")
    page.on("dialog", lambda dialog: dialog.accept())
    page.click("#prune-form button[type=submit]")
    result.filter(has_text="Removed 1 backup(s)").wait_for(timeout=WAIT_MS)
    assert [b["id"] for b in list_backups(fresh_vm, repo_dir)] == [second]
    page.locator(f"#points-table tr[data-point='{second}']").wait_for()
    assert page.locator(f"#points-table tr[data-point='{first}']").count() == 0


def test_images_page(web: ApiServer, browser_page: Any, images_dir: Path) -> None:
    """Create, inspect, check and convert an image from the Images page; each result
    read back with ``kvmops image info``; a path outside the image directories is
    refused in one line."""
    page = browser_page
    image = images_dir / f"{SESSION_PREFIX}web-img.qcow2"
    copy = images_dir / f"{SESSION_PREFIX}web-img.raw"
    try:
        log_in(page, web.url)
        page.click("nav a[href='/images']")
        page.wait_for_url(f"{web.url}/images")
        page.fill("#image-create input[name=path]", str(image))
        page.fill("#image-create input[name=size]", "32M")
        with page.expect_navigation(timeout=WAIT_MS):
            page.click("#image-create button[type=submit]")
        page.locator(f"#image-files tr[data-path='{image}']").wait_for()
        info = json.loads(run_cli("image", "info", str(image), "--format", "qcow2",
                                  "--json").stdout)
        assert (info["format"], info["virtual_size"]) == ("qcow2", 32 * 1024**2)

        page.fill("#info-form input[name=path]", str(image))
        page.select_option("#info-form select[name=format]", "qcow2")
        page.click("#info-form button[type=submit]")
        page.locator("#image-details [data-field=virtual-size]").filter(
            has_text="32.0 MiB").wait_for()
        page.click("#check-btn")
        page.locator("#image-details [data-field=check]").filter(has_text="clean").wait_for()

        page.fill("#image-convert input[name=source]", str(image))
        page.select_option("#image-convert select[name=source_format]", "qcow2")
        page.fill("#image-convert input[name=destination]", str(copy))
        page.select_option("#image-convert select[name=format]", "raw")
        page.click("#image-convert button[type=submit]")
        page.locator("#convert-progress[data-state=succeeded]").wait_for(timeout=WAIT_MS)
        info = json.loads(run_cli("image", "info", str(copy), "--format", "raw",
                                  "--json").stdout)
        assert (info["format"], info["virtual_size"]) == ("raw", 32 * 1024**2)

        page.fill("#image-create input[name=path]", "/etc/kvmops-web-test.qcow2")
        page.fill("#image-create input[name=size]", "1M")
        page.click("#image-create button[type=submit]")
        page.locator(".toast.error").filter(has_text="/etc/kvmops-web-test.qcow2").wait_for()
        assert not Path("/etc/kvmops-web-test.qcow2").exists()
    finally:
        for path in (image, copy):
            with contextlib.suppress(OSError):
                path.unlink()


def guest_sh(vm: str, script: str) -> str:
    """Run a shell line in the guest with ``kvmops guest exec`` (the check beside the UI)."""
    result = run_cli("guest", "exec", vm, "--timeout", "120", "--", "/bin/sh", "-c", script)
    assert result.code == 0, result.stderr
    return result.stdout


def test_guest_page_files_keys_password(web: ApiServer, browser_page: Any,
                                        running_vm: str) -> None:
    page = browser_page
    payload = b"kvmops web push \x00\xff\n"
    key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKvmopsWebTestKeyOnlyForTests web@test"
    log_in(page, web.url)
    page.goto(f"{web.url}/vms/{running_vm}/guest")
    page.set_input_files("#push-form input[type=file]", files=[
        {"name": "push.bin", "mimeType": "application/octet-stream", "buffer": payload}])
    page.fill("#push-form input[name=path]", "/tmp/web-push.bin")
    page.fill("#push-form input[name=mode]", "0600")
    page.click("#push-form button[type=submit]")
    page.locator(".toast.ok").filter(has_text=f"pushed {len(payload)} byte(s)").wait_for()
    assert guest_sh(running_vm, "od -An -tx1 /tmp/web-push.bin; stat -c %a /tmp/web-push.bin"
                    ).split() == [f"{b:02x}" for b in payload] + ["600"]
    page.fill("#pull-form input[name=path]", "/tmp/web-push.bin")
    page.click("#pull-form button[type=submit]")
    page.locator("#guest-files [data-field=pulled-size]").filter(
        has_text=f"{len(payload)} byte(s)").wait_for()
    assert "kvmops web push" in page.locator("#guest-files [data-field=content]").inner_text()
    with page.expect_download() as saved:
        page.click("#guest-files [data-field=download]")
    assert Path(saved.value.path()).read_bytes() == payload

    page.fill("#keys-form input[name=user]", "tester")
    page.fill("#keys-form input[name=key]", key)
    page.click("#keys-form button[value=add]")
    page.locator("#ssh-keys[data-count='1']").filter(has_text="web@test").wait_for()
    listed = api_get(page, web.url, f"/vms/{running_vm}/guest/ssh-keys?user=tester")
    assert key in listed["keys"]
    page.click("#keys-form button[value=remove]")
    page.locator(".toast.ok").filter(has_text="removed a key of tester").wait_for()
    listed = api_get(page, web.url, f"/vms/{running_vm}/guest/ssh-keys?user=tester")
    assert key not in listed["keys"]

    before = guest_sh(running_vm, "grep ^tester: /etc/shadow")
    page.fill("#password-form input[name=user]", "tester")
    page.fill("#password-form input[name=password]", "w3b-secret")
    page.click("#password-form button[type=submit]")
    page.locator(".toast.ok").filter(has_text="password of 'tester' set").wait_for()
    after = guest_sh(running_vm, "grep ^tester: /etc/shadow")
    assert after.split(":")[1] != before.split(":")[1]
    guest_sh(running_vm, "rm -f /tmp/web-push.bin")


def test_create_page_with_an_existing_disk(web: ApiServer, browser_page: Any,
                                           tiny_guest: GuestImage, images_dir: Path,
                                           host: Host) -> None:
    """The create form takes what ``vm create`` takes: an existing image with its
    format beside a new disk, the accelerator; read back with ``vm info``."""
    page = browser_page
    name = f"{SESSION_PREFIX}web-create"
    image = images_dir / f"{name}-existing.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(image), "32M"],
                   check=True, timeout=60)
    try:
        log_in(page, web.url)
        page.goto(web.url + "/create")
        page.fill("input[name=name]", name)
        page.fill("input[name=memory]", "128")  # a bare number is MiB
        page.fill("input[name=images_dir]", str(images_dir))
        page.fill("input[name=kernel]", str(tiny_guest.kernel))
        page.fill("input[name=initrd]", str(tiny_guest.initrd))
        page.fill("input[name=disk_path]", str(image))
        page.select_option("select[name=disk_format]", "qcow2")
        page.select_option("select[name=accelerator]", "tcg")
        page.uncheck("input[name=start]")
        page.click("#create-vm button[type=submit]")
        page.wait_for_url(f"{web.url}/vms/{name}", timeout=WAIT_MS)
        info = vm_json(name)
        assert (info["state"], info["memory"], info["accelerator"]) == (
            "shut off", 128 * 1024**2, "tcg")
        disks = {d["target"]: d for d in info["disks"] if d["device"] == "disk"}
        assert set(disks) == {"vda", "vdb"}
        assert (disks["vdb"]["source"], disks["vdb"]["format"]) == (str(image), "qcow2")
    finally:
        remove_vm(host, name)
        with contextlib.suppress(OSError):
            image.unlink()


def test_jobs_page_shows_a_cli_backup(web: ApiServer, browser_page: Any, fresh_vm: str,
                                      repo_dir: Path) -> None:
    """A backup run with the ``kvmops`` command on the server's state database appears
    on the open Jobs page (no reload) with the OS user who ran it."""
    page = browser_page
    log_in(page, web.url)
    page.goto(f"{web.url}/jobs?target={fresh_vm}")
    result = run_cli("backup", "create", fresh_vm, "--repo", str(repo_dir), "--json",
                     env={"KVMOPS_DB": web.db})
    assert result.code == 0, result.stderr
    backup_id = json.loads(result.stdout)["id"]
    row = page.locator("#job-rows tr[data-job]").filter(has_text="backup.create")
    row.locator("[data-field=state]").filter(has_text="succeeded").wait_for(timeout=WAIT_MS)
    assert row.locator("[data-field=by]").inner_text() == pwd.getpwuid(os.geteuid()).pw_name
    job_id = row.get_attribute("data-job")
    job = api_get(page, web.url, f"/jobs/{job_id}")
    assert (job["kind"], job["target"], job["state"]) == ("backup.create", fresh_vm,
                                                          "succeeded")
    assert backup_id in json.dumps(job["result"])


def test_viewer_sees_no_operator_controls(web: ApiServer, browser_page: Any,
                                          fresh_vm: str) -> None:
    """A viewer reads every page without a script error and is offered no action the
    API would refuse them (the API's own 403 is tested in tests/api)."""
    viewer, secret = f"{SESSION_PREFIX}viewer"[:60], "viewer-password-1"
    added = run_cli("user", "add", viewer, "--role", "viewer", "--password-stdin", "--db",
                    web.db, input=secret + "\n")
    assert added.code == 0, added.stderr
    page = browser_page
    page.goto(web.url + "/login")
    page.fill("input[name=username]", viewer)
    page.fill("input[name=password]", secret)
    page.click("button[type=submit]")
    page.wait_for_url(web.url + "/")
    for path in ("/", "/vms", f"/vms/{fresh_vm}", f"/vms/{fresh_vm}/xml",
                 f"/vms/{fresh_vm}/backups", f"/vms/{fresh_vm}/snapshots", "/jobs",
                 "/images", "/host"):
        page.goto(web.url + path)
        page.wait_for_load_state("networkidle")
        for control in ("#vm-manage", "#attach-form", "button[data-detach]",
                        "button[data-cancel]", "#image-create", "#backup-form",
                        "button[data-action]", "nav a[href='/create']"):
            assert page.locator(control).count() == 0, (path, control)
    page.goto(f"{web.url}/vms/{fresh_vm}")
    assert page.locator("nav.tabs a[href$='/xml']").count() == 1
    assert page.locator("nav.tabs a[href$='/guest']").count() == 0
    page.goto(f"{web.url}/vms/{fresh_vm}/guest")
    assert "operator" in page.locator("main").inner_text()


def test_jobs_page_cancel_button(web: ApiServer, browser_page: Any, running_vm: str) -> None:
    """Cancel on the Jobs page asks the job store to cancel (as POST /jobs/ID/cancel);
    the row then follows the job to its end. A guest command is not interruptible, so
    it may still end as succeeded: the request itself is what is checked."""
    page = browser_page
    log_in(page, web.url)
    page.goto(f"{web.url}/jobs?target={running_vm}")
    response = page.request.post(
        f"{web.url}/api/v1/vms/{running_vm}/guest/exec",
        headers={"X-CSRF-Token": csrf_of(page), "Content-Type": "application/json"},
        data=json.dumps({"argv": ["/bin/sleep", "10"], "background": True, "timeout": 120}))
    assert response.status == 202, response.text()
    job_id = response.json()["job_id"]
    row = page.locator(f"#job-rows tr[data-job='{job_id}']")
    row.locator("[data-field=state]").filter(has_text="running").wait_for(timeout=WAIT_MS)
    page.once("dialog", lambda dialog: dialog.accept())
    page.click(f"button[data-cancel='{job_id}']")
    page.locator(".toast.ok").filter(has_text="cancel requested for guest.exec").wait_for()
    assert api_get(page, web.url, f"/jobs/{job_id}")["cancel_requested"] is True
    page.wait_for_function(
        f"() => ['succeeded', 'cancelled'].includes("
        f"document.querySelector(\"tr[data-job='{job_id}']\")?.dataset.state)",
        timeout=WAIT_MS)
    final = api_get(page, web.url, f"/jobs/{job_id}")["state"]
    assert row.get_attribute("data-state") == final


def log_in_as(page: Any, url: str, name: str, password: str) -> None:
    page.goto(url + "/login")
    page.fill("input[name=username]", name)
    page.fill("input[name=password]", password)
    page.click("button[type=submit]")


def test_account_page_changes_own_password(web: ApiServer, browser_page: Any) -> None:
    name, old, new = f"{SESSION_PREFIX}acct"[:60], "old-password-1", "new-password-2"
    added = run_cli("user", "add", name, "--role", "operator", "--password-stdin", "--db",
                    web.db, input=old + "\n")
    assert added.code == 0, added.stderr
    page = browser_page
    log_in_as(page, web.url, name, old)
    page.wait_for_url(web.url + "/")
    page.click(".whoami a[href='/account']")
    page.wait_for_url(web.url + "/account")
    assert page.locator("[data-field=role]").inner_text() == "operator"
    page.fill("#password-change input[name=old_password]", "not-the-password")
    page.fill("#password-change input[name=new_password]", new)
    page.fill("#password-change input[name=again]", new)
    page.click("#password-change button[type=submit]")
    page.locator(".toast.error").filter(has_text="old password is wrong").wait_for()
    page.fill("#password-change input[name=old_password]", old)
    with page.expect_navigation(url=re.compile(r"/login"), timeout=WAIT_MS):
        page.click("#password-change button[type=submit]")
    log_in_as(page, web.url, name, old)
    page.locator("text=invalid user name or password").wait_for()
    log_in_as(page, web.url, name, new)
    page.wait_for_url(web.url + "/")
