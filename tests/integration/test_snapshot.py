"""VM snapshots on the real libvirtd: internal and external, revert, delete, and backups."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from kvmops.host.connection import Host
from kvmops.vm import lifecycle
from tests.conftest import assert_one_line_error, run_cli
from tests.integration.backup_util import (
    backup,
    disk_hash,
    guest_sh,
    restore_hash,
    write_random,
)
from tests.integration.conftest import remove_vm


@pytest.fixture
def snap_vm(vm_factory: Callable[..., str], host: Host, images_dir: Path
            ) -> Iterator[Callable[..., str]]:
    """VMs for one test; removed after it with every image and overlay they left."""
    made: list[str] = []

    def make(*args: str, start: bool = True, disk: str = "size=64M") -> str:
        name = vm_factory(*args, start=start, disk=disk)
        made.append(name)
        return name

    yield make
    for name in made:
        remove_vm(host, name)
        for leftover in images_dir.glob(f"{name}-*"):
            leftover.unlink(missing_ok=True)


def snap(*args: str) -> dict[str, object]:
    result = run_cli("snapshot", *args, "--json")
    assert result.code == 0, result.stderr
    data = json.loads(result.stdout)
    assert isinstance(data, dict)
    return data


def wait_agent(host: Host, vm: str) -> None:
    lifecycle.wait_for_agent(host, vm, timeout=90)


def source_of(host: Host, vm: str, target: str = "vda") -> str:
    info = lifecycle.info(host, vm)
    return next(d.source for d in info.disks if d.target == target) or ""


def checkpoints(host: Host, vm: str) -> list[str]:
    return [c.getName() for c in host.domain(vm).listAllCheckpoints(0)]


# ---------------------------------------------------------------- internal
def test_internal_snapshot_with_memory_reverts_disk_and_ram(
        snap_vm: Callable[..., str], host: Host) -> None:
    vm = snap_vm()
    at_snapshot = write_random(vm, 1, 4)
    created = snap("create", vm, "s1", "--description", "before")
    assert created["kind"] == "internal" and created["memory"] is True
    assert created["description"] == "before" and created["current"] is True

    # A name that exists is refused.
    assert_one_line_error(run_cli("snapshot", "create", vm, "s1"), 4, "s1", vm,
                          "already has a snapshot")

    after = write_random(vm, 10, 4)
    guest_sh(vm, "touch /root/after && sync")
    assert after != at_snapshot

    result = snap("revert", vm, "s1")  # memory snapshot: no --force needed
    assert result["state"] == "running"
    wait_agent(host, vm)
    assert disk_hash(vm) == at_snapshot
    assert guest_sh(vm, "test -e /root/after && echo yes || echo no").strip() == "no"

    listed = run_cli("snapshot", "list", vm, "--json")
    assert listed.code == 0
    assert [s["name"] for s in json.loads(listed.stdout)] == ["s1"]
    deleted = run_cli("snapshot", "delete", vm, "s1")
    assert deleted.code == 0, deleted.stderr
    assert_one_line_error(run_cli("snapshot", "info", vm, "s1"), 3, "s1")


def test_internal_snapshot_on_raw_disk_refused(snap_vm: Callable[..., str]) -> None:
    vm = snap_vm(start=False, disk="size=64M,format=raw")
    assert_one_line_error(run_cli("snapshot", "create", vm, "s1", "--memory"), 6,
                          vm, "disk vda is raw", "--disk-only")
    # Without --memory a raw disk gets an external snapshot, which works.
    created = snap("create", vm, "e1")
    assert created["kind"] == "external"
    assert snap("delete", vm, "e1")["deleted"] == ["e1"]


# ---------------------------------------------------------------- external
def test_external_quiesced_snapshot_revert_and_delete(
        snap_vm: Callable[..., str], host: Host) -> None:
    vm = snap_vm()
    base = source_of(host, vm)
    at_snapshot = write_random(vm, 1, 4)
    created = snap("create", vm, "e1", "--disk-only", "--quiesce")
    assert created["kind"] == "external" and created["memory"] is False
    overlay = created["disks"][0]["overlay"]  # type: ignore[index]
    assert overlay == base.removesuffix(".qcow2") + ".e1.qcow2"
    assert source_of(host, vm) == overlay and Path(str(overlay)).is_file()

    write_random(vm, 10, 4)

    # Reverting a running VM to a disk-only snapshot loses its state: --force required.
    assert_one_line_error(run_cli("snapshot", "revert", vm, "e1"), 5, vm, "e1", "--force")

    reverted = snap("revert", vm, "e1", "--force", "--running")
    assert reverted["kept_overlays"] == [overlay]
    assert Path(str(overlay)).is_file()  # the abandoned state is kept
    fresh = source_of(host, vm)
    assert fresh not in (overlay, base)
    info = snap("info", vm, "e1")
    assert info["disks"][0]["overlay"] == fresh  # type: ignore[index]
    assert info["current"] is True
    wait_agent(host, vm)
    assert disk_hash(vm) == at_snapshot

    final = write_random(vm, 20, 2)
    deleted = snap("delete", vm, "e1")  # active block commit with pivot
    assert deleted["removed_files"] == [fresh]
    assert source_of(host, vm) == base
    assert not Path(fresh).exists()
    assert disk_hash(vm) == final
    assert json.loads(run_cli("snapshot", "list", vm, "--json").stdout) == []
    Path(str(overlay)).unlink()


def test_delete_refuses_while_a_child_needs_it(snap_vm: Callable[..., str],
                                               host: Host) -> None:
    vm = snap_vm(start=False)
    base = source_of(host, vm)
    snap("create", vm, "a", "--disk-only")
    snap("create", vm, "b", "--disk-only")
    assert_one_line_error(run_cli("snapshot", "delete", vm, "a"), 5, "'a'",
                          "child snapshot 'b'", "--children")
    tree = run_cli("snapshot", "list", vm, "--tree")
    assert tree.code == 0 and "a (external)" in tree.stdout and "  b (external) *" in tree.stdout
    result = snap("delete", vm, "a", "--children")  # offline: qemu-img commit
    assert result["deleted"] == ["b", "a"]
    assert source_of(host, vm) == base


# ---------------------------------------------------------------- with backups
def test_internal_revert_ends_backup_chain(snap_vm: Callable[..., str], host: Host,
                                           repo_dir: Path, tmp_path: Path) -> None:
    """5(a): the bitmaps of the backup checkpoints would block loading the snapshot."""
    vm = snap_vm()
    backup(vm, repo_dir, "--full")
    at_snapshot = write_random(vm, 1, 2)
    snap("create", vm, "s1")
    write_random(vm, 8, 2)
    backup(vm, repo_dir, "--incremental")
    assert checkpoints(host, vm)

    result = run_cli("snapshot", "revert", vm, "s1")
    assert result.code == 0, result.stderr
    assert "the next backup will be a full" in result.stderr
    assert checkpoints(host, vm) == []
    wait_agent(host, vm)
    assert disk_hash(vm) == at_snapshot

    after = backup(vm, repo_dir)
    assert after["type"] == "full"
    assert after["notes"], after
    assert restore_hash(vm, repo_dir, str(after["id"]), tmp_path / "r") == disk_hash(vm)


def test_external_snapshot_between_backups(snap_vm: Callable[..., str], host: Host,
                                           repo_dir: Path, tmp_path: Path) -> None:
    """5(b), 5(c): libvirt 9.0 copies the checkpoint bitmaps into the new overlay, so an
    incremental across an external snapshot holds every changed block; a block commit
    with pivot keeps them (libvirt merges the overlay's bitmaps into the base)."""
    vm = snap_vm()
    backup(vm, repo_dir, "--full")
    write_random(vm, 2, 2)  # before the snapshot: tracked in the base image
    snap("create", vm, "e1", "--disk-only")
    expected = write_random(vm, 20, 2)  # after it: tracked in the overlay
    inc = backup(vm, repo_dir)  # 5(c): taken while the overlay exists
    assert inc["type"] == "incremental", inc
    assert restore_hash(vm, repo_dir, str(inc["id"]), tmp_path / "r1") == expected

    snap("delete", vm, "e1")  # active commit
    expected = write_random(vm, 30, 1)
    inc = backup(vm, repo_dir)
    assert inc["type"] == "incremental", inc
    assert restore_hash(vm, repo_dir, str(inc["id"]), tmp_path / "r2") == expected

    # Blocks written into an overlay that is committed while the VM is shut off: the next
    # incremental once the VM runs again still holds them (qemu-img commit's writes mark
    # the base's active bitmap; kvmops also merges the overlay's bitmaps into the base).
    snap("create", vm, "e2", "--disk-only")
    expected = write_random(vm, 40, 2)
    lifecycle.destroy(host, vm)  # SIGTERM: QEMU stores the persistent bitmaps on exit

    # Shut off with checkpoints, libvirt 9.0 refuses snapshots: a clear one-line error.
    assert_one_line_error(run_cli("snapshot", "create", vm, "e3", "--disk-only"), 5, vm,
                          "backup checkpoints", "start the VM")

    assert snap("delete", vm, "e2")["deleted"] == ["e2"]
    lifecycle.start(host, vm)
    wait_agent(host, vm)
    inc = backup(vm, repo_dir)
    assert inc["type"] == "incremental", inc.get("notes")
    assert restore_hash(vm, repo_dir, str(inc["id"]), tmp_path / "r3") == expected


def test_restore_of_vm_with_snapshots(snap_vm: Callable[..., str], repo_dir: Path,
                                      tmp_path: Path) -> None:
    """5(d): internal and external snapshots do not leak into the backup."""
    vm = snap_vm()
    write_random(vm, 1, 2)
    snap("create", vm, "s1")
    write_random(vm, 6, 2)
    snap("create", vm, "e1", "--disk-only")
    at_backup = write_random(vm, 12, 2)
    full = backup(vm, repo_dir, "--full")
    write_random(vm, 20, 2)
    assert restore_hash(vm, repo_dir, str(full["id"]), tmp_path / "r") == at_backup
