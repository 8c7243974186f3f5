"""``kvmops host doctor`` on the real host: what it finds, and what it says when broken;
the probe guests leave nothing behind; a frozen libvirtd (a second host's, stopped with
SIGSTOP) is a failed check with the advice, not a hung doctor; the host page lists the
last report and runs the doctor again through the API."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from kvmops.backup.jobs import JobRecord
from kvmops.config import settings
from kvmops.devguest.build import GuestImage
from kvmops.host.connection import Host
from kvmops.host.doctor import PROBE_PREFIX
from tests.conftest import SESSION_PREFIX, run_cli
from tests.integration.nshost import defined_vm, second_host

EXPECTED = {"libvirtd", "virtlogd", "qemu", "qemu-img", "accelerator", "images-dir",
            "state-dir", "path-policy", "backup-jobs", "io-limits", "backup-api", "snapshots",
            "memory", "guest-agents", "bridge-rollbacks", "openvswitch", "nested", "iommu",
            "hugepages", "thp", "ksm", "numa-balancing", "sriov", "disk-scheduler",
            "managed-save", "kvm-guest", "tcg-guest"}
#: What a doctor of another host checks (the libvirt side).
REMOTE = {"libvirtd", "backup-api", "snapshots", "memory", "guest-agents", "managed-save"}


def doctor(*args: str, env: dict[str, str] | None = None) -> tuple[int, dict[str, Any], str]:
    result = run_cli("host", "doctor", "--json", *args, env=env)
    report = json.loads(result.stdout)
    return result.code, report, result.stderr


def checks_of(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in report["checks"]}


def probes_left(host: Host) -> list[str]:
    return [d.name for d in host.all_domains() if d.name.startswith(PROBE_PREFIX)]


def test_healthy_host_report_matches_host_info(host: Host) -> None:
    code, report, stderr = doctor()
    checks = checks_of(report)
    assert set(checks) == EXPECTED
    assert checks["libvirtd"]["status"] == "ok" and "libvirt" in checks["libvirtd"]["detail"]
    assert checks["virtlogd"]["status"] == "ok"
    assert checks["openvswitch"]["status"] == "ok", checks["openvswitch"]  # make setup runs it
    assert code == (0 if report["ok"] else 1), stderr
    accel = json.loads(run_cli("host", "info", "--json").stdout)["accelerator"]
    assert checks["accelerator"]["status"] == ("ok" if accel == "kvm" else "warn")
    # the probe guests: TCG runs; KVM as the accelerator probe found it (hangs here)
    assert checks["tcg-guest"]["status"] == "ok", checks["tcg-guest"]
    kvm = checks["kvm-guest"]
    if accel == "kvm":
        assert kvm["status"] == "ok", kvm
    else:
        assert kvm["status"] == "warn", kvm
        assert kvm["detail"].startswith(
            "KVM present but a guest does not run; kvmops uses TCG" if Path("/dev/kvm").exists()
            else "no usable /dev/kvm"), kvm
    assert probes_left(host) == []
    assert not list((settings().state_dir / "doctor").glob(f"{PROBE_PREFIX}*"))
    # kept as this machine's last report; a run without probes carries them over
    kept = json.loads((settings().state_dir / "doctor" / "local.json").read_text())
    assert kept["checked_at"] == report["checked_at"] and kept["host"] == "local"
    human = run_cli("host", "doctor", "--no-probe")
    assert "libvirtd" in human.stdout and f"{len(EXPECTED)} checks" in human.stdout
    assert "(probed " in human.stdout  # the probe guests' results, with their time
    sched = checks["disk-scheduler"]
    assert sched["status"] in ("ok", "warn") and "(" in sched["detail"], sched


def test_unreachable_libvirt_fails_but_reports_the_rest() -> None:
    code, report, stderr = doctor("--connect", "qemu+unix:///system?socket=/nonexistent.sock")
    checks = checks_of(report)
    assert code == 1
    assert checks["libvirtd"]["status"] == "fail"
    assert "libvirtd -d" in checks["libvirtd"]["hint"]
    assert {"virtlogd", "qemu-img", "images-dir"} <= set(checks)  # the others still ran
    assert "memory" not in checks  # needs libvirt
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and "libvirtd" in lines[0] and "Traceback" not in stderr


def test_images_dir_under_a_file_fails(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    code, report, stderr = doctor("--no-probe",
                                  env={"KVMOPS_IMAGES_DIR": str(blocker / "images")})
    images = checks_of(report)["images-dir"]
    assert code == 1 and images["status"] == "fail"
    assert str(blocker) in images["detail"] and "KVMOPS_IMAGES_DIR" in images["hint"]
    assert "images-dir" in stderr


def test_vm_without_agent_and_stale_backup_job(vm_factory: Callable[..., str]) -> None:
    vm = vm_factory("--no-agent")
    assert run_cli("vm", "start", vm, "--paused").code == 0
    # a backup registered by a process that is gone (killed with SIGKILL)
    record = settings().state_dir / "jobs" / f"{vm}.json"
    record.parent.mkdir(parents=True, exist_ok=True)
    gone = subprocess.Popen(["true"])
    gone.wait()
    record.write_text(JobRecord(vm=vm, pid=gone.pid, repo="/tmp/repo",
                                started=datetime(2026, 1, 1, tzinfo=UTC)).model_dump_json())
    try:
        _code, report, _stderr = doctor("--no-probe")
        checks = checks_of(report)
        assert checks["guest-agents"]["status"] == "warn"
        assert vm in checks["guest-agents"]["detail"]
        assert checks["backup-jobs"]["status"] == "warn"
        assert vm in checks["backup-jobs"]["detail"]
        assert checks["memory"]["detail"].startswith("running VMs use")
    finally:
        record.unlink(missing_ok=True)


def test_second_host_managed_save_and_frozen_libvirtd(tiny_guest: GuestImage,
                                                      tmp_path: Path) -> None:
    """``--host NAME``: the libvirt-side checks, a managed-save image with a broken header
    found through libvirt; a frozen libvirtd (SIGSTOP) is a failed check with the advice.
    Only a second host's libvirtd is frozen, never the machine's."""
    env = {"KVMOPS_DB": f"sqlite:///{tmp_path / 'hosts.db'}",
           "KVMOPS_STATE_DIR": str(tmp_path / "state")}
    with second_host(f"{SESSION_PREFIX}doc") as h2, defined_vm(
            h2.uri, f"{SESSION_PREFIX}docvm", str(tiny_guest.kernel),
            str(tiny_guest.initrd)) as vm:
        assert run_cli("host", "add", "h2", h2.uri, env=env).code == 0
        code, report, stderr = doctor("--host", "h2", env=env)
        checks = checks_of(report)
        assert code == (0 if report["ok"] else 1), stderr
        assert set(checks) == REMOTE, checks  # another host: the libvirt side only
        assert checks["libvirtd"]["status"] == "ok", checks["libvirtd"]
        assert checks["managed-save"]["status"] == "ok", checks["managed-save"]
        with h2.connect() as conn:  # a managed save of the paused VM, header broken
            domain = conn.lookup(vm)
            domain.start(paused=True)
            domain.raw.managedSave(0)
        image = h2.state / "lib" / "qemu" / "save" / f"{vm}.save"
        with image.open("r+b") as fh:
            fh.write(b"\0" * 16)  # libvirt's magic
        _code, report, _stderr = doctor("--host", "h2", env=env)
        saved = checks_of(report)["managed-save"]
        assert saved["status"] == "warn" and f"{vm}: its header cannot be read" in \
            saved["detail"], saved
        pid = h2.libvirtd_pid
        assert pid is not None
        os.kill(pid, signal.SIGSTOP)
        try:
            code, report, _stderr = doctor("--host", "h2", env=env)
        finally:
            os.kill(pid, signal.SIGCONT)
        checks = checks_of(report)
        assert code == 1 and not report["ok"]
        assert set(checks) == {"libvirtd"}  # the checks that need it are skipped
        libvirtd = checks["libvirtd"]
        assert libvirtd["status"] == "fail" and "did not answer within" in libvirtd["detail"]
        for advice in (f"virsh -c {h2.uri} version", "libvirtd's log", "restart",
                       "running VMs keep running"):
            assert advice in libvirtd["hint"], libvirtd
        kept = json.loads((tmp_path / "state" / "doctor" / "h2.json").read_text())
        assert kept["failed"] == 1 and kept["host"] == "h2"  # the last report is h2's
        with h2.connect() as conn:  # thawed: answers again; the broken image removed
            conn.lookup(vm).remove_managed_save()


# ------------------------------------------------------------------ the host page
OPERATOR, OPERATOR_PASSWORD = f"{SESSION_PREFIX}docop"[:60], "doctor-operator-1"
VIEWER, VIEWER_PASSWORD = f"{SESSION_PREFIX}docview"[:60], "doctor-viewer-1"


@pytest.fixture(scope="module")
def web() -> Iterator[Any]:
    pytest.importorskip("playwright.sync_api")
    from tests.integration.browser import web_server

    with web_server("kvmops-webdoc-", [(OPERATOR, "operator", OPERATOR_PASSWORD),
                                       (VIEWER, "viewer", VIEWER_PASSWORD)]) as server:
        yield server


def test_host_page_lists_the_last_report_and_runs_the_doctor(web: Any) -> None:
    from tests.integration.browser import chromium_page, log_in

    with chromium_page() as page:
        log_in(page, web.url, OPERATOR, OPERATOR_PASSWORD)
        page.goto(web.url + "/hosts/local")
        before = page.locator("#host-doctor-when").inner_text() if page.locator(
            "#host-doctor-when").count() else None
        with page.expect_response(lambda r: r.url.endswith("/api/v1/hosts/local/doctor")
                                  and r.request.method == "POST", timeout=240_000) as posted:
            page.click("#doctor-run")
        assert posted.value.status == 200
        page.wait_for_selector("#host-doctor-table tr[data-check=tcg-guest]", timeout=60_000)
        rows = page.locator("#host-doctor-table tr[data-check]")
        names = rows.evaluate_all("rs => rs.map(r => r.dataset.check)")
        assert set(names) == EXPECTED
        assert page.locator("tr[data-check=libvirtd]").get_attribute("data-status") == "ok"
        when = page.locator("#host-doctor-when").inner_text()
        assert when != before
        failed = page.locator("#host-doctor-table tr[data-status=fail]").count()
        summary = page.locator("#host-doctor-summary")
        assert summary.get_attribute("data-ok") == str(failed == 0).lower()
        last = page.request.get(web.url + "/api/v1/hosts/local/doctor")
        assert last.status == 200
        body = last.json()
        assert {c["name"] for c in body["checks"]} == EXPECTED
        assert body["checked_at"][:19].replace("T", " ") in when
    with chromium_page() as page:  # a viewer reads the report, without the button
        log_in(page, web.url, VIEWER, VIEWER_PASSWORD)
        page.goto(web.url + "/hosts/local")
        assert page.locator("#host-doctor-table tr[data-check=kvm-guest]").count() == 1
        assert page.locator("#doctor-run").count() == 0
        refused = page.request.post(web.url + "/api/v1/hosts/local/doctor",
                                    headers={"X-CSRF-Token": page.locator(
                                        "meta[name=csrf-token]").get_attribute("content")})
        assert refused.status == 403
