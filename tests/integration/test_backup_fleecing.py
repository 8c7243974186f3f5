"""Fleecing backups (libvirt pull mode, a local scratch image, the point copied out of
QEMU's NBD export with qemu-img) through the real stack: one booted guest for the module.

The points restore byte-identical to the guest's disk at the point, a chain mixes
fleecing and push-mode points, guest writes after the point stay out of it, and the
scratch is gone after a success, a cancel and a kill -9 (the next run cleans up).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import cast

import pytest

from kvmops.backup.fleecing import RUN_PREFIX
from kvmops.errors import CancelledError
from kvmops.host.connection import Host
from kvmops.host.fleecing import pull_job_scratch
from kvmops.services import backups
from kvmops.services.caller import Caller
from tests.conftest import run_cli
from tests.integration.backup_util import (
    backup,
    guest_sh,
    list_backups,
    repo_checkpoints,
    restore_hash,
    write_random,
)


@pytest.fixture(scope="module")
def guest(vm_factory: Callable[..., str]) -> str:
    """One booted tiny guest (vda: 64 MiB qcow2) for the module."""
    return vm_factory(start=True)


@pytest.fixture
def scratch(images_dir: Path, repo_dir: Path) -> Iterator[Path]:
    """A scratch directory for the fleecing images (local, reachable by QEMU)."""
    path = images_dir / f"scratch-{repo_dir.name}"
    path.mkdir(mode=0o755)
    yield path
    subprocess.run(["rm", "-rf", str(path)], check=False)


def notes(manifest: dict[str, object]) -> list[str]:
    return cast(list[str], manifest["notes"])


def written(manifest: dict[str, object]) -> int:
    return sum(d["bytes_written"] for d in cast(list[dict[str, int]], manifest["disks"]))


def leftovers(scratch: Path) -> list[str]:
    return sorted(p.name for p in scratch.iterdir())


def test_fleecing_chain_mixes_with_push_points_and_restores_byte_identical(
        guest: str, repo_dir: Path, scratch: Path, images_dir: Path) -> None:
    fleece = ("--disk", "vda", "--fleecing", "--scratch-dir", str(scratch))
    h0 = write_random(guest, 0, 6)
    full = backup(guest, repo_dir, "--full", *fleece)
    assert full["type"] == "full"
    assert any("fleecing" in n for n in notes(full)), notes(full)
    assert leftovers(scratch) == []

    h1 = write_random(guest, 20, 2)
    push = backup(guest, repo_dir, "--incremental", "--disk", "vda", "--no-fleecing")
    assert push["type"] == "incremental" and push["parent"] == full["id"]
    assert not any("fleecing" in n for n in notes(push)), notes(push)

    # A fleecing incremental on a push-mode parent: random data, and zeros over data
    # (a dirty extent whose new content is zeros must not read the parent's data).
    write_random(guest, 40, 3)
    h2 = guest_sh(guest, "dd if=/dev/zero of=/dev/vda bs=64K count=5 seek=3 conv=fsync "
                         "2>/dev/null && sync && sha256sum /dev/vda").split()[0]
    inc = backup(guest, repo_dir, "--incremental", *fleece)
    assert inc["type"] == "incremental" and inc["parent"] == push["id"]
    assert written(inc) < 8 << 20, written(inc)  # the dirty extents, not the disk
    assert leftovers(scratch) == []

    h3 = write_random(guest, 50, 1)
    last = backup(guest, repo_dir, "--disk", "vda", "--no-fleecing")
    assert last["parent"] == inc["id"]

    assert [b["id"] for b in list_backups(guest, repo_dir)] == [
        full["id"], push["id"], inc["id"], last["id"]]
    for point, expected in ((full, h0), (push, h1), (inc, h2), (last, h3)):
        out = images_dir / f"restore-{repo_dir.name}-{point['id']}"
        assert restore_hash(guest, repo_dir, str(point["id"]), out) == expected, point["id"]
    verified = run_cli("backup", "verify", guest, "--repo", str(repo_dir))
    assert verified.code == 0, verified.stderr


def test_guest_writes_after_the_point_stay_out_of_it(
        guest: str, repo_dir: Path, scratch: Path, images_dir: Path) -> None:
    """The marker is written after libvirt took the point and before kvmops copies a
    byte (the copy's first progress report): copy-before-write keeps the old blocks in
    the scratch image, and the restored point does not have the marker."""
    at_point = write_random(guest, 8, 2)
    marked: list[str] = []

    def progress(done: int, _total: int) -> None:
        if not marked:
            assert any(p.name.startswith(RUN_PREFIX) for p in scratch.iterdir())
            marked.append(write_random(guest, 8, 1))  # over the point's data

    manifest = backups.create(Caller.local(), None, guest, repo_dir, disks=["vda"],
                              fleecing="on", scratch_dir=scratch, progress=progress)
    assert marked and marked[0] != at_point
    out = images_dir / f"restore-{repo_dir.name}-marker"
    assert restore_hash(guest, repo_dir, manifest.id, out) == at_point
    assert leftovers(scratch) == []


def test_scratch_is_removed_after_a_cancel(guest: str, repo_dir: Path, scratch: Path,
                                           host: Host) -> None:
    """SIGTERM (what 'backup cancel' sends) in the middle of the copy: the job ends,
    libvirt deletes the fleecing image, the run's directory goes, nothing is published."""
    seen: list[list[str]] = []

    def progress(_done: int, _total: int) -> None:
        if not seen:
            seen.append(pull_job_scratch(host.domain(guest)))
            os.kill(os.getpid(), signal.SIGTERM)

    before = repo_checkpoints(host, guest, repo_dir)
    with pytest.raises(CancelledError, match="cancelled"):
        backups.create(Caller.local(), None, guest, repo_dir, disks=["vda"], fleecing="on",
                       scratch_dir=scratch, progress=progress)
    assert seen and seen[0] and all(f.startswith(str(scratch)) for f in seen[0])
    assert not any(Path(f).exists() for f in seen[0])
    assert leftovers(scratch) == []
    assert pull_job_scratch(host.domain(guest)) == []
    assert repo_checkpoints(host, guest, repo_dir) == before
    assert list_backups(guest, repo_dir) == []


_KILLER = textwrap.dedent("""
    import os, signal, sys
    from pathlib import Path
    from kvmops.services import backups
    from kvmops.services.caller import Caller

    def progress(done, total):
        os.kill(os.getpid(), signal.SIGKILL)  # no clean-up code runs

    backups.create(Caller.local(), None, sys.argv[1], Path(sys.argv[2]), disks=["vda"],
                   fleecing="on", scratch_dir=Path(sys.argv[3]), progress=progress)
""")


def test_a_killed_run_leaves_its_job_and_the_next_run_cleans_up(
        guest: str, repo_dir: Path, scratch: Path, host: Host, images_dir: Path) -> None:
    at_point = write_random(guest, 30, 1)
    killed = subprocess.run([sys.executable, "-c", _KILLER, guest, str(repo_dir),
                             str(scratch)], capture_output=True, text=True, timeout=300,
                            check=False)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    left = pull_job_scratch(host.domain(guest))
    assert left and all(Path(f).exists() for f in left)  # the job still holds its image

    manifest = backup(guest, repo_dir, "--disk", "vda", "--fleecing", "--scratch-dir",
                      str(scratch))
    assert manifest["type"] == "full"
    assert any("interrupted kvmops run" in n for n in notes(manifest)), notes(manifest)
    assert not any(Path(f).exists() for f in left)
    assert leftovers(scratch) == []
    assert [b["id"] for b in list_backups(guest, repo_dir)] == [manifest["id"]]
    out = images_dir / f"restore-{repo_dir.name}-killed"
    assert restore_hash(guest, repo_dir, str(manifest["id"]), out) == at_point
    verified = run_cli("backup", "verify", guest, "--repo", str(repo_dir))
    assert verified.code == 0, verified.stderr


def test_fleecing_into_a_sealed_repository(guest: str, repo_dir: Path, scratch: Path,
                                           images_dir: Path) -> None:
    """A zstd (store-backed) repository keeps its files sealed in its store, the parent
    of an incremental too: the dirty extents are written as whole clusters onto a
    stand-in, and the file is linked to the real parent; both points restore exactly."""
    fleece = ("--disk", "vda", "--fleecing", "--scratch-dir", str(scratch))
    h0 = write_random(guest, 0, 4)
    full = backup(guest, repo_dir, "--full", "--compress", "zstd", *fleece)
    h1 = write_random(guest, 33, 1)
    inc = backup(guest, repo_dir, "--incremental", *fleece)
    assert inc["type"] == "incremental" and inc["parent"] == full["id"]
    assert leftovers(scratch) == []
    for point, expected in ((full, h0), (inc, h1)):
        out = images_dir / f"restore-{repo_dir.name}-sealed-{point['id']}"
        assert restore_hash(guest, repo_dir, str(point["id"]), out) == expected, point["id"]
