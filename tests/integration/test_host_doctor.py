"""``kvmops host doctor`` on the real host: what it finds, and what it says when broken."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kvmops.backup.jobs import JobRecord
from kvmops.config import settings
from tests.conftest import run_cli

EXPECTED = {"libvirtd", "virtlogd", "qemu", "qemu-img", "accelerator", "images-dir",
            "state-dir", "path-policy", "backup-jobs", "io-limits", "backup-api", "snapshots",
            "memory", "guest-agents", "bridge-rollbacks", "openvswitch", "nested", "iommu",
            "hugepages", "thp", "ksm", "numa-balancing", "sriov", "disk-scheduler",
            "managed-save", "kvm-guest", "tcg-guest"}


def doctor(*args: str, env: dict[str, str] | None = None) -> tuple[int, dict[str, Any], str]:
    result = run_cli("host", "doctor", "--json", *args, env=env)
    report = json.loads(result.stdout)
    return result.code, report, result.stderr


def checks_of(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in report["checks"]}


def test_healthy_host_report_matches_host_info() -> None:
    code, report, stderr = doctor()
    checks = checks_of(report)
    assert set(checks) == EXPECTED
    assert checks["libvirtd"]["status"] == "ok" and "libvirt" in checks["libvirtd"]["detail"]
    assert checks["virtlogd"]["status"] == "ok"
    assert checks["openvswitch"]["status"] == "ok", checks["openvswitch"]  # make setup runs it
    assert code == (0 if report["ok"] else 1), stderr
    accel = json.loads(run_cli("host", "info", "--json").stdout)["accelerator"]
    assert checks["accelerator"]["status"] == ("ok" if accel == "kvm" else "warn")
    human = run_cli("host", "doctor")
    assert "libvirtd" in human.stdout and f"{len(EXPECTED)} checks" in human.stdout


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
    code, report, stderr = doctor(env={"KVMOPS_IMAGES_DIR": str(blocker / "images")})
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
                                started="2026-01-01T00:00:00Z").model_dump_json())
    try:
        _code, report, _stderr = doctor()
        checks = checks_of(report)
        assert checks["guest-agents"]["status"] == "warn"
        assert vm in checks["guest-agents"]["detail"]
        assert checks["backup-jobs"]["status"] == "warn"
        assert vm in checks["backup-jobs"]["detail"]
        assert checks["memory"]["detail"].startswith("running VMs use")
    finally:
        record.unlink(missing_ok=True)
