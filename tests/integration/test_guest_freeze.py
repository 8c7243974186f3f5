"""fsfreeze/fsthaw on a VM whose data disk is a real ext4 mounted at /data."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

from kvmops.devguest.build import GuestImage
from tests.conftest import run_cli


def test_freeze_and_thaw(vm_factory: Callable[..., str], tiny_guest: GuestImage,
                         images_dir: Path) -> None:
    data = images_dir / "kvmops-test-freeze-data.raw"
    shutil.copyfile(tiny_guest.data_disk, data)
    name = vm_factory("--disk", f"path={data},format=raw", start=True)
    fsinfo = run_cli("guest", "fsinfo", name, "--json")
    assert fsinfo.code == 0, fsinfo.stderr
    mounts = {fs["mountpoint"]: fs["type"] for fs in json.loads(fsinfo.stdout)}
    assert mounts.get("/data") == "ext4", mounts
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
