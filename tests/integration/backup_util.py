"""Helpers for backup tests: guest I/O through the real CLI, hashing restored images."""

from __future__ import annotations

import contextlib
import hashlib
import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

from kvmops.backup.repository import Repository
from kvmops.devguest.build import GuestImage
from kvmops.host.connection import Host
from kvmops.vm.checkpoints import CHECKPOINT_PREFIX
from tests.conftest import run_cli

DISK_MIB = 64


@contextlib.contextmanager
def offline_point(host: Host, tiny_guest: GuestImage, name: str, backups_dir: Path,
                  *disk: str) -> Iterator[tuple[Path, str]]:
    """(new repository, backup id) of a full backup of a new shut-off VM ``name`` whose
    disk is made by ``vm create``'s ``disk`` arguments; no guest boots. The VM is removed
    at exit."""
    from tests.integration.conftest import remove_vm  # conftest imports this module

    repo = backups_dir / f"{name}-{time.monotonic_ns()}"
    repo.mkdir(mode=0o755)
    try:
        made = run_cli("vm", "create", name, "--memory", "256M", "--vcpus", "1", "--kernel",
                       str(tiny_guest.kernel), "--initrd", str(tiny_guest.initrd),
                       "--cmdline", "console=ttyS0", *disk)
        assert made.code == 0, made.stderr
        result = run_cli("backup", "create", name, "--repo", str(repo), "--full", "--json")
        assert result.code == 0, result.stderr
        yield repo, str(json.loads(result.stdout)["id"])
    finally:
        remove_vm(host, name)


def guest_sh(vm: str, script: str) -> str:
    """Run a shell snippet in the tiny guest through ``kvmops guest exec``."""
    result = run_cli("guest", "exec", vm, "--timeout", "120", "--", "/bin/sh", "-c", script)
    assert result.code == 0, (script, result.code, result.stdout, result.stderr)
    return result.stdout


def write_random(vm: str, seek_mib: int, count_mib: int, target: str = "vda") -> str:
    """Write random MiBs at an offset of /dev/TARGET; return the whole disk's sha256."""
    out = guest_sh(
        vm,
        f"dd if=/dev/urandom of=/dev/{target} bs=1M count={count_mib} seek={seek_mib} "
        f"conv=fsync 2>/dev/null && sync && sha256sum /dev/{target}",
    )
    return out.split()[0]


def disk_hash(vm: str, target: str = "vda") -> str:
    return guest_sh(vm, f"sha256sum /dev/{target}").split()[0]


def image_hash(path: Path) -> str:
    """sha256 of an image's guest-visible content (qemu-img convert to raw)."""
    raw = path.with_suffix(".raw")
    subprocess.run(["qemu-img", "convert", "-f", "qcow2", "-O", "raw", str(path), str(raw)],
                   check=True)
    digest = hashlib.sha256()
    with open(raw, "rb") as fh:
        while block := fh.read(4 << 20):
            digest.update(block)
    raw.unlink()
    return digest.hexdigest()


def backup(vm: str, repo: Path, *flags: str) -> dict[str, object]:
    result = run_cli("backup", "create", vm, "--repo", str(repo), "--json", *flags)
    assert result.code == 0, result.stderr
    data = json.loads(result.stdout)
    assert isinstance(data, dict)
    return data


def list_backups(vm: str, repo: Path) -> list[dict[str, object]]:
    result = run_cli("backup", "list", vm, "--repo", str(repo), "--json")
    assert result.code == 0, result.stderr
    data = json.loads(result.stdout)
    assert isinstance(data, list)
    return data


def restore_hash(vm: str, repo: Path, backup_id: str, out: Path, target: str = "vda") -> str:
    result = run_cli("backup", "restore", vm, "--repo", str(repo), "--at", backup_id,
                     "--to", str(out))
    assert result.code == 0, result.stderr
    return image_hash(out / f"{target}.qcow2")


def repo_checkpoints(host: Host, vm: str, repo: Path) -> list[str]:
    """Names of the VM's checkpoints that ``repo`` owns (its identity prefixes them)."""
    prefix = f"{CHECKPOINT_PREFIX}{Repository(repo).identity()}-"
    return sorted(c.getName() for c in host.domain(vm).listAllCheckpoints(0)
                  if c.getName().startswith(prefix))


def drop_repo_checkpoints(host: Host, vm: str, repo: Path) -> None:
    """Delete a test repository's checkpoints (and so its bitmaps) from a shared VM, so
    that the session's guest (``running_vm``) is left as it was found; never fails."""
    with contextlib.suppress(Exception):
        for name in reversed(repo_checkpoints(host, vm, repo)):
            host.domain(vm).checkpointLookupByName(name, 0).delete(0)
