"""A chain that survives disk changes (issue 14, item 8): a disk resized, added or removed
between backups keeps every other disk's chain sound, the changed disk gets a full with a
note, and every point of the chain -- before and after the change -- restores exactly."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import libvirt
import pytest

from kvmops.host.connection import Host
from tests.conftest import run_cli
from tests.integration.backup_util import backup, disk_hash, guest_sh, image_hash, write_random

pytestmark = pytest.mark.integration

MIB = 1024 * 1024


def _wait_guest_size(vm: str, target: str, size: int) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        out = run_cli("guest", "exec", vm, "--", "cat", f"/sys/block/{target}/size").stdout
        if out.strip() == str(size // 512):
            return
        time.sleep(0.5)
    raise AssertionError(f"the guest never saw {target} at {size} bytes")


def _restored(vm: str, repo: Path, backup_id: str, out: Path) -> dict[str, str]:
    result = run_cli("backup", "restore", vm, "--repo", str(repo), "--at", backup_id,
                     "--to", str(out))
    assert result.code == 0, result.stderr
    return {p.stem: image_hash(p) for p in sorted(out.glob("*.qcow2"))}


def test_resized_and_removed_disk_mid_chain(vm_factory: Callable[..., str], repo_dir: Path,
                                            host: Host, tmp_path: Path) -> None:
    vm = vm_factory("--disk", "size=32M", start=True)  # vda 64 MiB, vdb 32 MiB
    expected: dict[str, dict[str, str]] = {}

    write_random(vm, 1, 2, "vdb")
    write_random(vm, 1, 2)
    full = backup(vm, repo_dir, "--full")
    expected[str(full["id"])] = {"vda": disk_hash(vm), "vdb": disk_hash(vm, "vdb")}

    write_random(vm, 10, 1, "vdb")
    write_random(vm, 10, 1)
    first = backup(vm, repo_dir)
    assert first["type"] == "incremental"
    expected[str(first["id"])] = {"vda": disk_hash(vm), "vdb": disk_hash(vm, "vdb")}

    # vdb grows live; data beyond its old end
    host.domain(vm).blockResize("vdb", 48 * MIB, libvirt.VIR_DOMAIN_BLOCK_RESIZE_BYTES)
    _wait_guest_size(vm, "vdb", 48 * MIB)
    write_random(vm, 40, 4, "vdb")
    write_random(vm, 20, 1)
    resized = backup(vm, repo_dir)
    assert resized["type"] == "incremental" and resized["parent"] == first["id"]
    disks = {d["target"]: d for d in resized["disks"]}  # type: ignore[attr-defined]
    assert disks["vda"]["type"] == "incremental" and disks["vda"]["parent"] == first["id"]
    assert disks["vdb"]["type"] == "full" and disks["vdb"]["parent"] is None
    assert disks["vdb"]["virtual_size"] == 48 * MIB
    assert any("vdb" in n and "resized" in n for n in resized["notes"])  # type: ignore[union-attr]
    expected[str(resized["id"])] = {"vda": disk_hash(vm), "vdb": disk_hash(vm, "vdb")}

    write_random(vm, 30, 1, "vdb")
    after = backup(vm, repo_dir)
    disks = {d["target"]: d for d in after["disks"]}  # type: ignore[attr-defined]
    assert disks["vdb"]["type"] == "incremental" and disks["vdb"]["parent"] == resized["id"]
    expected[str(after["id"])] = {"vda": disk_hash(vm), "vdb": disk_hash(vm, "vdb")}

    # vdb leaves the VM: vda's chain goes on, vdb's ends where it was last backed up
    guest_sh(vm, "sync")
    detached = run_cli("vm", "disk", "detach", vm, "vdb", "--timeout", "90")
    assert detached.code == 0, detached.stderr
    write_random(vm, 40, 1)
    last = backup(vm, repo_dir)
    assert last["type"] == "incremental" and last["parent"] == after["id"]
    assert [d["target"] for d in last["disks"]] == ["vda"]  # type: ignore[attr-defined]
    assert any("vdb" in n and "chain ends" in n for n in last["notes"])  # type: ignore[union-attr]
    expected[str(last["id"])] = {"vda": disk_hash(vm)}

    for n, (backup_id, hashes) in enumerate(expected.items()):
        assert _restored(vm, repo_dir, backup_id, tmp_path / f"r{n}") == hashes, backup_id
    verify = run_cli("backup", "verify", "--repo", str(repo_dir), vm)
    assert verify.code == 0, verify.stdout + verify.stderr
