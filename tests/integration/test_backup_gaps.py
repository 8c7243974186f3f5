"""What the README claims of backups, through the real stack: restore in place and into a
new VM, a moved repository, crash consistency without an agent, retention's daily and
weekly buckets on a real chain, and a failed backup that leaves no checkpoint behind.

The chain tests share one chain of the session's booted guest (``running_vm``), built
once per module; each test reads it or works on its own copy, so any order works.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import libvirt
import pytest

from kvmops.backup.repository import Repository
from kvmops.errors import AlreadyExistsError, BackupError, StateError, StorageError
from kvmops.host.connection import Host
from tests.conftest import SESSION_PREFIX, assert_one_line_error, run_cli
from tests.integration.backup_util import (
    backup,
    disk_hash,
    drop_repo_checkpoints,
    image_hash,
    list_backups,
    restore_hash,
    write_random,
)
from tests.integration.conftest import remove_vm


@dataclass
class Chain:
    vm: str
    repo: Path
    points: list[tuple[str, str]]  # (backup id, sha256 of vda at that point), oldest first


@pytest.fixture(scope="module")
def chain(running_vm: str, backups_dir: Path, host: Host) -> Iterator[Chain]:
    """A full and five incrementals of the shared guest, each with what vda held then."""
    repo = backups_dir / f"gaps-chain-{time.monotonic_ns()}"
    points: list[tuple[str, str]] = []
    try:
        full = backup(running_vm, repo, "--full")
        assert full["type"] == "full"
        points.append((str(full["id"]), disk_hash(running_vm)))
        for step in range(5):
            digest = write_random(running_vm, 2 + 9 * step, 2)
            made = backup(running_vm, repo, "--incremental")
            assert made["type"] == "incremental" and made["parent"] == points[-1][0]
            points.append((str(made["id"]), digest))
        yield Chain(running_vm, repo, points)
    finally:
        drop_repo_checkpoints(host, running_vm, repo)
        shutil.rmtree(repo, ignore_errors=True)


def _qcow2_with_pattern(path: Path, *writes: str) -> None:
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(path), "64M"], check=True)
    for write in writes:
        subprocess.run(["qemu-io", "-f", "qcow2", "-c", write, str(path)], check=True,
                       capture_output=True)


def _same_content(a: Path, b: Path) -> None:
    """Guest-visible content byte for byte; both formats named (never probed)."""
    result = subprocess.run(["qemu-img", "compare", "-f", "qcow2", "-F", "qcow2", str(a),
                             str(b)], capture_output=True, text=True)
    assert result.returncode == 0, (a, b, result.stdout, result.stderr)


def _disk_source(host: Host, vm: str, target: str = "vda") -> Path:
    from lxml import etree

    root = etree.fromstring(host.domain(vm).XMLDesc(0).encode())
    for disk in root.findall("devices/disk"):
        found = disk.find("target")
        if found is not None and found.get("dev") == target:
            source = disk.find("source")
            assert source is not None
            return Path(source.get("file", ""))
    raise AssertionError(f"{vm} has no {target}")


def test_restore_in_place_and_into_a_new_vm(vm_factory: Callable[..., str], images_dir: Path,
                                             repo_dir: Path, host: Host) -> None:
    """``backup restore --in-place`` puts the backed-up bytes back into the VM's own disk;
    ``--new-vm`` defines a VM like the old one whose disk holds them."""
    image = images_dir / f"inplace-{time.monotonic_ns()}.qcow2"
    _qcow2_with_pattern(image, "write -P 0x11 0 4M", "write -P 0x22 20M 3M",
                        "write -P 0x33 63M 1M")
    reference = image.with_name(image.stem + "-ref.qcow2")
    shutil.copyfile(image, reference)
    vm = vm_factory(disk=f"path={image},format=qcow2")
    made = backup(vm, repo_dir)
    assert made["consistency"] == "offline" and made["type"] == "full"

    # Damage the disk, then restore it where it was.
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", "write -P 0xee 0 32M", str(image)],
                   check=True, capture_output=True)
    result = run_cli("backup", "restore", vm, "--repo", str(repo_dir), "--in-place")
    assert result.code == 0, result.stderr
    assert _disk_source(host, vm) == image
    _same_content(image, reference)

    # A running VM is never overwritten in place.
    assert run_cli("vm", "start", vm, "--paused").code == 0
    try:
        refused = run_cli("backup", "restore", vm, "--repo", str(repo_dir), "--in-place")
        assert_one_line_error(refused, StateError.exit_code, vm, "shut")
    finally:
        run_cli("vm", "destroy", vm)

    new = f"{SESSION_PREFIX}restored-{time.monotonic_ns()}"
    try:
        result = run_cli("backup", "restore", vm, "--repo", str(repo_dir), "--new-vm", new,
                         "--images-dir", str(images_dir), "--json")
        assert result.code == 0, result.stderr
        restored = json.loads(result.stdout)
        assert restored["new_vm"] == new and restored["backup_id"] == made["id"]
        new_disk = _disk_source(host, new)
        assert new_disk.parent == images_dir and new_disk != image
        _same_content(new_disk, reference)
        old_info = json.loads(run_cli("vm", "info", vm, "--json").stdout)
        new_info = json.loads(run_cli("vm", "info", new, "--json").stdout)
        assert new_info["state"] == "shut off"
        for key in ("memory", "vcpus"):
            assert new_info[key] == old_info[key], key
        refused = run_cli("backup", "restore", vm, "--repo", str(repo_dir), "--new-vm", new,
                          "--images-dir", str(images_dir))
        assert_one_line_error(refused, AlreadyExistsError.exit_code, new, "exists")
    finally:
        remove_vm(host, new)


def test_moved_repository_restores_byte_identical(chain: Chain, backups_dir: Path,
                                                  tmp_path: Path) -> None:
    """A repository copied elsewhere (the original out of reach): its manifests still
    authenticate, verify passes and every point restores byte-identical."""
    moved = backups_dir / f"gaps-moved-{time.monotonic_ns()}"
    shutil.copytree(chain.repo, moved, symlinks=True)
    away = chain.repo.with_name(chain.repo.name + ".away")
    chain.repo.rename(away)
    try:
        listed = list_backups(chain.vm, moved)
        assert [b["id"] for b in listed] == [p[0] for p in chain.points]
        result = run_cli("backup", "verify", "--repo", str(moved), chain.vm)
        assert result.code == 0, result.stderr
        for index, (backup_id, digest) in enumerate(chain.points):
            assert restore_hash(chain.vm, moved, backup_id, tmp_path / f"r{index}") == digest
    finally:
        away.rename(chain.repo)
        shutil.rmtree(moved, ignore_errors=True)


# Times given to the chain's six backups (ids stay as made; retention reads the times).
# 2026-10-30 is a Friday of ISO week 44; 11-02 and 11-04 are in week 45, 11-09/10 in 46.
RETENTION_TIMES = [
    datetime(2026, 10, 30, 9, 0, tzinfo=UTC),   # 0 full          weekly 2026-W44
    datetime(2026, 11, 2, 9, 0, tzinfo=UTC),    # 1 incremental   expires
    datetime(2026, 11, 4, 9, 0, tzinfo=UTC),    # 2 incremental   expires (same day as 3)
    datetime(2026, 11, 4, 17, 0, tzinfo=UTC),   # 3 incremental   weekly 2026-W45
    datetime(2026, 11, 9, 9, 0, tzinfo=UTC),    # 4 incremental   daily 2026-11-09
    datetime(2026, 11, 10, 9, 0, tzinfo=UTC),   # 5 incremental   daily 2026-11-10
]


def test_retention_buckets_merge_into_a_kept_incremental(chain: Chain, backups_dir: Path,
                                                         tmp_path: Path) -> None:
    """--keep-daily 2 --keep-weekly 3 on a real chain with set times: exactly the newest
    of each bucket stays; the two expired incrementals are merged into the kept one after
    them, which now builds on the full; every kept point restores byte-identical."""
    repo = backups_dir / f"gaps-retention-{time.monotonic_ns()}"
    shutil.copytree(chain.repo, repo, symlinks=True)
    try:
        store = Repository(repo)
        ids = [p[0] for p in chain.points]
        for backup_id, moment in zip(ids, RETENTION_TIMES, strict=True):
            manifest = store.load(chain.vm, backup_id)
            store.write_manifest(store.backups_dir(chain.vm) / backup_id,
                                 manifest.model_copy(update={"time": moment}))
        args = ("backup", "prune", chain.vm, "--repo", str(repo), "--keep-daily", "2",
                "--keep-weekly", "3")
        dry = run_cli(*args, "--dry-run", "--json")
        assert dry.code == 0, dry.stderr
        plan = json.loads(dry.stdout)["plan"]
        assert plan["keep"] == [ids[0], ids[3], ids[4], ids[5]]
        assert plan["remove"] == [ids[1], ids[2]]
        assert plan["rewrite"] == {ids[3]: ids[0]}
        assert plan["reasons"] == {ids[0]: "weekly 2026-W44", ids[3]: "weekly 2026-W45",
                                   ids[4]: "daily 2026-11-09", ids[5]: "daily 2026-11-10"}
        assert [b["id"] for b in list_backups(chain.vm, repo)] == ids  # dry: nothing changed

        result = run_cli(*args)
        assert result.code == 0, result.stderr
        listed = {b["id"]: b for b in list_backups(chain.vm, repo)}
        assert list(listed) == [ids[0], ids[3], ids[4], ids[5]]
        assert listed[ids[0]]["type"] == "full" and listed[ids[0]]["parent"] is None
        assert listed[ids[3]]["type"] == "incremental" and listed[ids[3]]["parent"] == ids[0]
        assert listed[ids[4]]["parent"] == ids[3] and listed[ids[5]]["parent"] == ids[4]
        assert not list((repo / chain.vm / "backups").glob(".*"))  # no staging left
        for index in (0, 3, 4, 5):
            backup_id, digest = chain.points[index]
            assert restore_hash(chain.vm, repo, backup_id, tmp_path / f"r{index}") == digest
        result = run_cli("backup", "verify", "--repo", str(repo), chain.vm)
        assert result.code == 0, result.stderr
    finally:
        shutil.rmtree(repo, ignore_errors=True)


def test_crash_consistency_without_an_agent(vm_factory: Callable[..., str], images_dir: Path,
                                           repo_dir: Path, tmp_path: Path) -> None:
    """A running VM without a guest agent channel: nothing can be frozen, and the result,
    the listing and the manifest on disk all say crash-consistent."""
    image = images_dir / f"noagent-{time.monotonic_ns()}.qcow2"
    _qcow2_with_pattern(image, "write -P 0x5c 1M 6M")  # the tiny guest never writes vda
    expected = image_hash(image)
    vm = vm_factory("--no-agent", disk=f"path={image},format=qcow2")
    info = run_cli("vm", "info", vm, "--json")
    assert json.loads(info.stdout)["agent_configured"] is False, info.stdout
    assert run_cli("vm", "start", vm).code == 0
    made = backup(vm, repo_dir)
    assert made["type"] == "full" and made["consistency"] == "crash", made
    assert any("no guest agent channel" in n and "crash-consistent" in n
               for n in made["notes"]), made["notes"]  # type: ignore[union-attr]
    assert [b["consistency"] for b in list_backups(vm, repo_dir)] == ["crash"]
    on_disk = json.loads((repo_dir / vm / "backups" / str(made["id"]) / "manifest.json")
                         .read_text())
    assert on_disk["consistency"] == "crash"
    assert restore_hash(vm, repo_dir, str(made["id"]), tmp_path / "r") == expected


def test_failed_backup_leaves_no_checkpoint(vm_factory: Callable[..., str], images_dir: Path,
                                            host: Host, tmp_path: Path) -> None:
    """A full backup into a repository that runs out of space fails in one line, leaves no
    checkpoint and nothing partial; once there is room (a filler file removed), the next
    backup there is a sound full and the VM's only checkpoint is its own.

    The small file system is mounted before the VM starts: libvirt runs QEMU in a mount
    namespace, and on a host whose root mount is private, later mounts never reach it."""
    image = images_dir / f"tiny-fs-{time.monotonic_ns()}.img"
    mount = images_dir / f"tiny-repo-{time.monotonic_ns()}"
    subprocess.run(["truncate", "-s", "48M", str(image)], check=True)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], check=True)
    mount.mkdir()
    subprocess.run(["mount", "-o", "loop", str(image), str(mount)], check=True)
    try:
        mount.chmod(0o755)
        filler = mount / "filler"  # leaves about 3 MiB free
        stat = os.statvfs(mount)
        subprocess.run(["fallocate", "-l", str(stat.f_bavail * stat.f_frsize - (3 << 20)),
                        str(filler)], check=True)
        disk = images_dir / f"failing-{time.monotonic_ns()}.qcow2"
        _qcow2_with_pattern(disk, "write -P 0x3c 0 16M")  # more than the file system holds
        expected = image_hash(disk)
        vm = vm_factory("--no-agent", disk=f"path={disk},format=qcow2")
        assert run_cli("vm", "start", vm).code == 0  # no booted guest needed
        failed = run_cli("backup", "create", vm, "--repo", str(mount), "--full")
        assert failed.code == BackupError.exit_code, failed.stderr
        assert "Traceback" not in failed.stderr, failed.stderr
        assert failed.error_line.startswith("kvmops: error: "), failed.stderr
        assert "No space left" in failed.stderr, failed.stderr
        assert host.domain(vm).listAllCheckpoints(0) == []
        assert list_backups(vm, mount) == []
        assert not list((mount / vm / "backups").glob(".partial-*"))
        events = json.loads(run_cli("backup", "events", vm, "--json").stdout)
        assert events[-1]["event"] == "failed"
        assert host.domain(vm).state()[0] == libvirt.VIR_DOMAIN_RUNNING

        # Room again: the filler goes.
        filler.unlink()
        made = backup(vm, mount)
        assert made["type"] == "full" and made["parent"] is None
        assert [c.getName() for c in host.domain(vm).listAllCheckpoints(0)] \
            == [made["checkpoint"]]
        assert restore_hash(vm, mount, str(made["id"]), tmp_path / "r") == expected
    finally:
        subprocess.run(["umount", str(mount)], check=False)
        image.unlink(missing_ok=True)


def _root_mounts_propagate() -> bool:
    """Is / a shared mount here (do later mounts reach QEMU's mount namespace)?"""
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        if fields[4] == "/":
            return any(f.startswith("shared:") for f in fields[6:fields.index("-")])
    return False


def test_repository_mounted_after_the_vm_started(backup_guest: str, images_dir: Path,
                                                 host: Host, tmp_path: Path) -> None:
    """libvirt runs QEMU in its own mount namespace: where the host's mounts do not
    propagate into it, a repository mounted after the VM started is refused in one line
    that says so (no checkpoint left); where they do, the backup simply works."""
    mount = images_dir / f"late-mount-{time.monotonic_ns()}"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=96M,mode=0755", "late", str(mount)],
                   check=True)
    try:
        before = sorted(c.getName() for c in host.domain(backup_guest).listAllCheckpoints(0))
        result = run_cli("backup", "create", backup_guest, "--repo", str(mount), "--full",
                         "--json")
        if _root_mounts_propagate():
            assert result.code == 0, result.stderr
            made = json.loads(result.stdout)
            assert restore_hash(backup_guest, mount, made["id"], tmp_path / "r") \
                == disk_hash(backup_guest)
        else:
            assert result.code == StorageError.exit_code, result.stderr
            assert "Traceback" not in result.stderr
            errors = [ln for ln in result.stderr.splitlines() if ln.startswith("kvmops:")]
            assert len(errors) == 1 and errors[0] == result.error_line, result.stderr
            for fragment in (str(mount), "mounted after the VM started", "mount namespace"):
                assert fragment in result.error_line, (fragment, result.error_line)
            after = sorted(c.getName()
                           for c in host.domain(backup_guest).listAllCheckpoints(0))
            assert after == before
            assert list_backups(backup_guest, mount) == []
            assert not list((mount / backup_guest / "backups").glob(".partial-*"))
    finally:
        subprocess.run(["umount", str(mount)], check=False)
