"""Restore drills through the real stack: a point is verified, restored as an isolated VM,
booted to its guest agent and checked in the guest; the drill VM and its disks are gone
after; the signed record is kept; a damaged chain fails the drill before anything boots."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from kvmops.backup.repository import Repository
from kvmops.devguest.build import GuestImage
from kvmops.host.connection import Host
from tests.conftest import assert_one_line_error, run_cli
from tests.integration.backup_util import backup, write_random

pytestmark = pytest.mark.integration


def _bootable_vm(vm_factory: Callable[..., str], images_dir: Path, tiny_guest: GuestImage
                 ) -> str:
    """A VM whose kernel and initrd lie in an allowed image directory: a restore keeps
    direct kernel boot only from there (the drill then boots it)."""
    boot = images_dir / "drill-boot"
    boot.mkdir(exist_ok=True)
    for src in (tiny_guest.kernel, tiny_guest.initrd):
        if not (boot / src.name).exists():
            shutil.copyfile(src, boot / src.name)  # not copy2: libvirt's xattrs stay behind
    return vm_factory("--kernel", str(boot / tiny_guest.kernel.name),
                      "--initrd", str(boot / tiny_guest.initrd.name),
                      start=True)


def _drill_vms(host: Host) -> list[str]:
    return [d.name() for d in host.domains() if d.name().startswith("drill-")]


def test_drill_boots_the_point_and_checks_its_disk(
        vm_factory: Callable[..., str], repo_dir: Path, images_dir: Path, host: Host,
        tiny_guest: GuestImage) -> None:
    vm = _bootable_vm(vm_factory, images_dir, tiny_guest)
    digest = write_random(vm, 2, 3)
    point = backup(vm, repo_dir, "--full")
    write_random(vm, 8, 1)  # after the point: the drill must not see it
    before = set(images_dir.iterdir())
    result = run_cli("backup", "drill", vm, "--repo", str(repo_dir), "--at", str(point["id"]),
                     "--check", "sha256sum /dev/vda", "--images-dir", str(images_dir),
                     "--json")
    assert result.code == 0, result.stderr
    record = json.loads(result.stdout)
    assert record["ok"] and record["verified"] and record["restored"] and record["booted"]
    assert record["backup_id"] == point["id"] and record["agent_s"] > 0
    assert record["check_exit"] == 0 and record["check_output"].split()[0] == digest
    assert set(record["disks"]) == {"vda"}
    assert not _drill_vms(host)
    assert set(images_dir.iterdir()) == before  # the drill's disks are removed

    listed = run_cli("backup", "drills", vm, "--json")
    assert listed.code == 0, listed.stderr
    history = json.loads(listed.stdout)
    assert history[0]["id"] == record["id"] and history[0]["authentic"] is True


def test_drill_of_a_damaged_chain_fails_before_booting(
        vm_factory: Callable[..., str], repo_dir: Path, images_dir: Path, host: Host) -> None:
    vm = vm_factory(start=True)
    point = backup(vm, repo_dir, "--full")
    path = Repository(repo_dir).backups_dir(vm) / str(point["id"]) / "vda.qcow2"
    with open(path, "r+b") as fh:  # one byte of the data, not of the header
        fh.seek(path.stat().st_size - 4096)
        byte = fh.read(1)
        fh.seek(-1, 1)
        fh.write(bytes([byte[0] ^ 0xFF]))
    result = run_cli("backup", "drill", vm, "--repo", str(repo_dir), "--images-dir",
                     str(images_dir))
    assert_one_line_error(result, 20, "restore drill", "verification")
    assert not _drill_vms(host)
    history = json.loads(run_cli("backup", "drills", vm, "--json").stdout)
    assert history[0]["ok"] is False and history[0]["booted"] is None
    assert history[0]["problems"] and history[0]["authentic"] is True
