"""A relative path on the command line names a file under the current directory, as in
every Unix tool: the CLI makes it absolute before the services (which take absolute paths
only and check them against the allowed directories) see it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from kvmops.devguest.build import GuestImage
from kvmops.host.connection import Host
from tests.conftest import SESSION_PREFIX, CliResult
from tests.integration.conftest import remove_vm


def run_in(cwd: Path, *args: str) -> CliResult:
    proc = subprocess.run([sys.executable, "-m", "kvmops.cli.main", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "COLUMNS": "200"})
    return CliResult(proc.returncode, proc.stdout, proc.stderr)


def test_vm_create_takes_relative_disk_kernel_and_initrd(images_dir: Path,
                                                         tiny_guest: GuestImage,
                                                         host: Host) -> None:
    image = f"{SESSION_PREFIX}relative.qcow2"
    name = f"{SESSION_PREFIX}relative"
    made = run_in(images_dir, "image", "create", image, "--size", "16M")
    assert made.code == 0, made.stderr
    guest_dir = tiny_guest.kernel.parent
    kernel = os.path.relpath(tiny_guest.kernel, images_dir)
    initrd = os.path.relpath(tiny_guest.initrd, images_dir)
    assert not Path(kernel).is_absolute() and guest_dir != images_dir
    try:
        result = run_in(images_dir, "vm", "create", name, "--memory", "256M", "--vcpus", "1",
                        "--kernel", kernel, "--initrd", initrd, "--cmdline", "console=ttyS0",
                        "--disk", f"path={image},format=qcow2")
        assert result.code == 0, result.stderr
        info = json.loads(run_in(images_dir, "vm", "info", name, "--json").stdout)
        assert [d["source"] for d in info["disks"]] == [str(images_dir / image)]
        assert info["kernel"] == str(tiny_guest.kernel)
    finally:
        remove_vm(host, name)
        (images_dir / image).unlink(missing_ok=True)


def test_backup_repository_may_be_relative(backups_dir: Path) -> None:
    missing = f"{SESSION_PREFIX}no-repo"
    result = run_in(backups_dir, "backup", "list", f"{SESSION_PREFIX}vm", "--repo", missing)
    # the repository is looked up under the current directory, not refused as relative
    assert result.code != 0
    assert f"backup repository {backups_dir / missing} does not exist" in result.error_line
