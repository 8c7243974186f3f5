"""File-level restore through the real stack: a booted guest whose disk holds a partition
table and ext4, a full and two incrementals with a file changed between them, then
files / restore-file / mount / umount through the CLI (qemu-storage-daemon FUSE export,
read-only loop device, read-only mounts)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from kvmops.backup import mount as mounts
from kvmops.errors import PathRefusedError, StateError
from tests.conftest import assert_one_line_error, run_cli
from tests.integration.backup_util import backup, guest_sh

GUEST_DIR = "/mnt/kvmops-fr"  # where the guest mounts its ext4 partition
FILE_KIB = 1536


def make_partitioned_disk(dst: Path, tmp: Path) -> None:
    """64 MiB as qcow2: an MBR with partition 1 (1..48 MiB) holding ext4 and partition 2
    (48 MiB..end) an LVM physical volume (named as unsupported, never mounted).

    ``/data/escape`` climbs out of the file system; ``/data/abs`` is absolute."""
    content = tmp / "content"
    (content / "data").mkdir(parents=True)
    (content / "data" / "hello.txt").write_text("hello from the backup\n")
    os.symlink("../../../../../../etc", content / "data" / "escape")
    os.symlink("/data", content / "data" / "abs")
    raw = tmp / "disk.raw"
    with open(raw, "wb") as fh:
        fh.truncate(64 << 20)
    subprocess.run(["parted", "-s", str(raw), "mklabel", "msdos", "mkpart", "primary",
                    "ext4", "1MiB", "48MiB", "mkpart", "primary", "48MiB", "100%"],
                   check=True)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-d", str(content), "-E", "offset=1048576",
                    str(raw), "47M"], check=True)
    pv = tmp / "pv.raw"  # pvcreate wants a block device: a loop device over a file
    with open(pv, "wb") as fh:
        fh.truncate(8 << 20)
    loop = subprocess.run(["losetup", "--find", "--show", str(pv)], capture_output=True,
                          text=True, check=True).stdout.strip()
    try:
        subprocess.run(["pvcreate", "-q", "-ff", "-y", loop], capture_output=True, check=True)
    finally:
        subprocess.run(["losetup", "--detach", loop], check=True)
    subprocess.run(["dd", f"if={pv}", f"of={raw}", "bs=1M", "seek=48", "conv=notrunc",
                    "status=none"], check=True)
    pv.unlink()
    subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw), str(dst)],
                   check=True)
    raw.unlink()


@dataclass(frozen=True)
class Chain:
    vm: str
    repo: Path
    ids: list[str]  # full, incremental (the middle), incremental
    hashes: list[str]  # sha256 of /data/f.bin at each


def _write_version(vm: str) -> str:
    out = guest_sh(vm, f"dd if=/dev/urandom of={GUEST_DIR}/data/f.bin bs=1024 "
                       f"count={FILE_KIB} 2>/dev/null && sync && "
                       f"sha256sum {GUEST_DIR}/data/f.bin")
    return out.split()[0]


@pytest.fixture(scope="module")
def chain(vm_factory: Callable[..., str], images_dir: Path, backups_dir: Path,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[Chain]:
    """One booted guest for the module, its ext4 mounted, three backups of f.bin."""
    tmp = tmp_path_factory.mktemp("fr")
    image = images_dir / f"fr-{time.monotonic_ns()}.qcow2"
    make_partitioned_disk(image, tmp)
    vm = vm_factory(disk=f"path={image},format=qcow2", start=True)
    repo = backups_dir / f"fr-repo-{time.monotonic_ns()}"
    repo.mkdir(mode=0o755)
    try:
        guest_sh(vm, f"mkdir -p {GUEST_DIR} && mount -t ext4 /dev/vda1 {GUEST_DIR}")
        ids, hashes = [], []
        for flag in ("--full", "--incremental", "--incremental"):
            hashes.append(_write_version(vm))
            ids.append(str(backup(vm, repo, flag)["id"]))
        assert len(set(hashes)) == 3
        yield Chain(vm, repo, ids, hashes)
    finally:
        run_cli("backup", "umount", "--all")
        subprocess.run(["rm", "-rf", str(repo)], check=False)
        image.unlink(missing_ok=True)


def _leftovers(work_prefix: str = "") -> list[str]:
    """Loop devices, daemons and mounts of file-level restore still present."""
    base = str(mounts.mounts_dir())
    found = [f"record {r.id}" for r in mounts.records()]
    listing = subprocess.run(["losetup", "--json", "--list", "-O", "NAME,BACK-FILE"],
                             capture_output=True, text=True, check=False).stdout
    for dev in json.loads(listing or '{"loopdevices": []}').get("loopdevices", []):
        if (dev.get("back-file") or "").startswith(base):
            found.append(f"loop {dev['name']}")
    found += [f"daemon {pid}" for pid in mounts.daemons_of(Path(base))]
    with open("/proc/self/mountinfo") as fh:
        found += [f"mount {line.split()[4]}" for line in fh
                  if line.split()[4].startswith(base) or
                  (work_prefix and line.split()[4].startswith(work_prefix))]
    return found


def test_restore_file_from_the_middle_is_byte_identical(chain: Chain, images_dir: Path
                                                        ) -> None:
    out = images_dir / f"fr-out-{time.monotonic_ns()}"
    result = run_cli("backup", "restore-file", chain.vm, "--repo", str(chain.repo), "--at",
                     chain.ids[1], "--path", "/data/f.bin", "--to", str(out), "--json")
    assert result.code == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["written"] == str(out / "f.bin") and data["backup_id"] == chain.ids[1]
    import hashlib

    assert hashlib.sha256((out / "f.bin").read_bytes()).hexdigest() == chain.hashes[1]
    assert data["sha256"] == chain.hashes[1] and data["partition"] == 1
    again = run_cli("backup", "restore-file", chain.vm, "--repo", str(chain.repo), "--at",
                    chain.ids[1], "--path", "/data/f.bin", "--to", str(out))
    assert_one_line_error(again, 4, "already exists", "--force")
    forced = run_cli("backup", "restore-file", chain.vm, "--repo", str(chain.repo), "--at",
                     chain.ids[2], "--path", "/data/f.bin", "--to", str(out), "--force")
    assert forced.code == 0, forced.stderr
    assert hashlib.sha256((out / "f.bin").read_bytes()).hexdigest() == chain.hashes[2]
    directory = run_cli("backup", "restore-file", chain.vm, "--repo", str(chain.repo),
                        "--at", chain.ids[0], "--path", "/data", "--to", str(out))
    assert directory.code == 0, directory.stderr
    assert "copied recursively" in directory.stderr
    assert hashlib.sha256((out / "data" / "f.bin").read_bytes()).hexdigest() == \
        chain.hashes[0]
    assert (out / "data" / "escape").is_symlink()  # recreated, never followed
    assert _leftovers() == []
    subprocess.run(["rm", "-rf", str(out)], check=False)


def test_files_lists_the_point(chain: Chain) -> None:
    result = run_cli("backup", "files", chain.vm, "/data", "--repo", str(chain.repo), "--at",
                     chain.ids[1], "--json")
    assert result.code == 0, result.stderr
    entries = {e["name"]: e for e in json.loads(result.stdout)["entries"]}
    assert entries["f.bin"]["type"] == "file" and entries["f.bin"]["size"] == FILE_KIB * 1024
    assert entries["escape"]["type"] == "symlink"
    assert entries["hello.txt"]["mode"] == "0644"
    assert _leftovers() == []


def test_escaping_paths_are_refused(chain: Chain, images_dir: Path) -> None:
    code = PathRefusedError.exit_code
    out = images_dir / f"fr-esc-{time.monotonic_ns()}"
    for path, says in (("/data/escape/passwd", "leaves the file system"),
                       ("/../etc/passwd", "climbs above the root")):
        result = run_cli("backup", "restore-file", chain.vm, "--repo", str(chain.repo),
                         "--at", chain.ids[0], "--path", path, "--to", str(out))
        assert_one_line_error(result, code, path, says)
    # an absolute link is read inside the guest's file system (as the guest would)
    inside = run_cli("backup", "files", chain.vm, "/data/abs/hello.txt", "--repo",
                     str(chain.repo), "--at", chain.ids[0], "--json")
    assert inside.code == 0, inside.stderr
    assert not out.exists() or not any(out.iterdir())
    assert _leftovers() == []


def test_mount_umount_and_prune_refused_while_mounted(chain: Chain, tmp_path: Path) -> None:
    point = tmp_path / "m"
    mounted = run_cli("backup", "mount", chain.vm, str(point), "--repo", str(chain.repo),
                      "--at", chain.ids[1])
    assert mounted.code == 0, mounted.stderr
    assert "partition 2 holds LVM (LVM2_member): not supported on this kernel" in \
        mounted.stderr
    assert not (point / "p2").exists()
    try:
        import hashlib

        assert hashlib.sha256((point / "p1" / "data" / "f.bin").read_bytes()
                              ).hexdigest() == chain.hashes[1]
        with pytest.raises(OSError):
            (point / "p1" / "data" / "new").write_text("x")  # read-only
        listed = json.loads(run_cli("backup", "mounts", "--json").stdout)
        assert [m["mountpoint"] for m in listed] == [str(point)] and listed[0]["alive"]
        pruned = run_cli("backup", "prune", chain.vm, "--repo", str(chain.repo),
                         "--keep-last", "1")
        assert_one_line_error(pruned, StateError.exit_code, "is mounted at", str(point))
    finally:
        gone = run_cli("backup", "umount", str(point))
    assert gone.code == 0, gone.stderr
    assert not mounts.is_mounted(point / "p1")
    assert _leftovers() == []
    assert len(json.loads(run_cli("backup", "list", chain.vm, "--repo", str(chain.repo),
                                  "--json").stdout)) == 3


def test_kill_9_during_mount_then_umount_all_cleans(chain: Chain, tmp_path: Path) -> None:
    point = tmp_path / "k"
    before = {p.name for p in mounts.mounts_dir().glob("*.json")}
    proc = subprocess.Popen([sys.executable, "-m", "kvmops.cli.main", "backup", "mount",
                             chain.vm, str(point), "--repo", str(chain.repo), "--at",
                             chain.ids[2]], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    record = None
    try:
        # Killed as soon as its loop device is recorded: mid-way through the mount.
        deadline = time.monotonic() + 120
        while record is None and proc.poll() is None and time.monotonic() < deadline:
            for path in mounts.mounts_dir().glob("*.json"):
                if path.name in before:
                    continue
                with __import__("contextlib").suppress(OSError, ValueError):
                    found = mounts.MountRecord.model_validate_json(path.read_bytes())
                    if found.loop:
                        record = found
            time.sleep(0.01)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert record is not None, "the mount never got to its loop device"
    assert mounts.loops_on(record.fuse_file) or mounts.daemons_of(Path(record.work))
    result = run_cli("backup", "umount", "--all")
    assert result.code == 0, result.stderr
    assert _leftovers(str(point)) == []
    assert not mounts.loops_on(record.fuse_file)


def test_restore_file_into_the_guest(chain: Chain) -> None:
    target = "/tmp/kvmops-restored.bin"
    guest_sh(chain.vm, f"rm -f {target}")
    result = run_cli("backup", "restore-file", chain.vm, "--repo", str(chain.repo), "--at",
                     chain.ids[0], "--path", "/data/f.bin", "--into-guest", "--guest-path",
                     target)
    assert result.code == 0, result.stderr
    assert guest_sh(chain.vm, f"sha256sum {target}").split()[0] == chain.hashes[0]
    again = run_cli("backup", "restore-file", chain.vm, "--repo", str(chain.repo), "--at",
                    chain.ids[1], "--path", "/data/f.bin", "--into-guest", "--guest-path",
                    target)
    assert_one_line_error(again, 4, "already exists in the guest", "--force")
    assert _leftovers() == []
