"""fsfreeze/fsthaw/fstrim through libvirt on a real ext4: the tiny guest's data disk,
hot-plugged into the session's booted guest (no boot of its own) and mounted at /data."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from kvmops.devguest.build import GuestImage
from tests.conftest import run_cli
from tests.integration.backup_util import guest_sh


@pytest.fixture
def data_mounted(running_vm: str, tiny_guest: GuestImage, images_dir: Path) -> Iterator[str]:
    """``running_vm`` with the ext4 data disk live-attached and mounted at /data; both
    undone afterwards, so the shared guest is left as found."""
    data = images_dir / f"freeze-data-{time.monotonic_ns()}.raw"
    shutil.copyfile(tiny_guest.data_disk, data)
    result = run_cli("vm", "disk", "attach", running_vm, "--image", str(data), "--format",
                     "raw", "--live-only", "--json")
    assert result.code == 0, result.stderr
    target = json.loads(result.stdout)["target"]
    try:
        # The only disk besides vda, whatever name the guest's kernel gave it.
        guest_sh(running_vm, "for i in $(seq 600); do for d in /dev/vd?; do "
                             "[ \"$d\" != /dev/vda ] && [ -b \"$d\" ] && break 2; done; "
                             "sleep 0.1; done; mkdir -p /data && mount -t ext4 \"$d\" /data")
        yield running_vm
    finally:
        run_cli("guest", "fsthaw", running_vm)
        guest_sh(running_vm, "umount /data 2>/dev/null; true")
        detached = run_cli("vm", "disk", "detach", running_vm, target, "--timeout", "90")
        data.unlink(missing_ok=True)
    assert detached.code == 0, detached.stderr


def test_freeze_and_thaw(data_mounted: str) -> None:
    name = data_mounted
    fsinfo = run_cli("guest", "fsinfo", name, "--json")
    assert fsinfo.code == 0, fsinfo.stderr
    mounts = {fs["mountpoint"]: fs["type"] for fs in json.loads(fsinfo.stdout)}
    assert mounts == {"/data": "ext4"}, mounts
    try:
        result = run_cli("guest", "fsfreeze", name)
        assert result.code == 0, result.stderr
        assert "1 file system(s) frozen" in result.stdout
        assert run_cli("guest", "fsstatus", name).stdout.strip() == "frozen"
    finally:
        thaw = run_cli("guest", "fsthaw", name)
    assert thaw.code == 0, thaw.stderr
    assert run_cli("guest", "fsstatus", name).stdout.strip() == "thawed"
    trim = run_cli("guest", "fstrim", name, "--json")
    assert trim.code == 0, trim.stderr
    assert any(p["path"] == "/data" for p in json.loads(trim.stdout))
