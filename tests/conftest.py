"""Helpers shared by unit and integration tests."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:  # remote_servers imports this module
    from tests.integration.remote_servers import S3Server, SshServer

REPO = Path(__file__).resolve().parent.parent
TEST_PREFIX = "kvmops-test-"
# One prefix per test session, so a session only ever touches what it created.
SESSION_PREFIX = f"{TEST_PREFIX}{os.getpid():x}-"
# Where the tests keep images and backup repositories: allowed directories of the path
# policy for this process and every kvmops it starts (the configuration of a real host
# would name them in /etc/kvmops/config.toml).
TEST_IMAGES = Path("/var/lib/kvmops/test-images")
TEST_BACKUPS = Path("/var/lib/kvmops/test-backups")
os.environ["KVMOPS_IMAGE_DIRS"] = str(TEST_IMAGES)
os.environ["KVMOPS_BACKUP_DIRS"] = os.pathsep.join(["/var/lib/kvmops/backups",
                                                     str(TEST_BACKUPS)])


# Test files that take minutes (guests of their own, long backups), longest first. Under
# pytest-xdist (`make test`: a file stays on one worker) they are handed out before the
# rest, so that the two workers end together instead of one running a long file alone at
# the end; in one process the order stays pytest-randomly's.
LONG_FILES = (
    "integration/test_backup_after_migration.py",
    "integration/test_migration_live.py",
    "integration/test_placement_evacuate.py",
    "integration/test_host_option.py",
    "integration/test_migration_preflight.py",
    "api/test_events_multihost.py",
    "integration/test_backup_libvirt.py",
    "integration/test_backup_sealed.py",
    "integration/test_backup_fleecing.py",
    "integration/test_backup_files.py",
    "integration/test_backup_instant.py",
    "integration/test_backup_remote.py",
    "integration/test_backup_drill.py",
    "integration/test_backup_disk_changes.py",
    "integration/test_snapshot.py",
    "integration/test_web_ui.py",
    "integration/test_readme.py",
    "integration/test_guest_bench.py",
    "integration/test_metrics.py",
    "integration/test_diagnostics.py",
    "integration/test_host_doctor.py",
    "integration/test_live_charts.py",
    "integration/test_prometheus.py",
    "integration/test_guest_tools.py",
    "integration/test_backup_gaps.py",
    "integration/test_backup_schedules.py",
    "integration/test_web_backup_schedules.py",
    "integration/test_vm_lifecycle.py",
    "integration/test_image_cli.py",
    "integration/test_sriov.py",
    "api/test_vm_backup.py",
    "integration/test_backup_qmp.py",
    "api/test_schemathesis.py",
    "integration/test_wheel_install.py",
    "api/test_security.py",
    "integration/test_vm_disks.py",
    "integration/test_nics.py",
    "integration/test_nic_throughput.py",
    "integration/test_ovs_vlan.py",
    "integration/test_web_networks.py",
    "integration/test_networks.py",
    "integration/test_pool_iscsi.py",
    "integration/test_pools.py",
    "integration/test_web_pools.py",
)


@pytest.hookimpl(trylast=True)  # after pytest-randomly's shuffle
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return

    def rank(item: pytest.Item) -> int:
        path = item.nodeid.split("::", 1)[0].removeprefix("tests/")
        return LONG_FILES.index(path) if path in LONG_FILES else len(LONG_FILES)

    items.sort(key=rank)  # stable: the shuffled order stays within and among the rest


@dataclass
class CliResult:
    code: int
    stdout: str
    stderr: str

    @property
    def error_line(self) -> str:
        lines = [ln for ln in self.stderr.splitlines() if ln.strip()]
        return lines[-1] if lines else ""


def run_cli(*args: str, input: str | None = None, timeout: float = 300,
            env: dict[str, str] | None = None) -> CliResult:
    """Run the real ``kvmops`` command in a subprocess."""
    proc = subprocess.run(
        [sys.executable, "-m", "kvmops.cli.main", *args],
        input=input, capture_output=True, text=True, timeout=timeout,
        env={**os.environ, "COLUMNS": "200", **(env or {})},
    )
    return CliResult(proc.returncode, proc.stdout, proc.stderr)


def assert_one_line_error(result: CliResult, code: int, *fragments: str) -> None:
    """An expected failure: given exit code, no traceback, one error line naming things."""
    assert result.code == code, (result.code, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("kvmops: error: "), lines[0]
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


@pytest.fixture
def cli() -> type[CliResult]:
    return CliResult


@pytest.fixture(scope="module")
def sshd() -> Iterator[SshServer]:
    """A real sshd in a test-made network namespace, one per test module."""
    from tests.integration.remote_servers import sshd_server

    with sshd_server() as server:
        yield server


@pytest.fixture(scope="module")
def s3() -> Iterator[S3Server]:
    """A real S3-compatible server on loopback, one per test module."""
    from tests.integration.remote_servers import s3_server

    with s3_server() as server:
        yield server
