"""Storage pools end to end with the real libvirtd: a dir pool and an fs pool on a loop
device (a test file + losetup, detached even on failure), each with volume create,
clone, resize, upload, download and delete; ``vm create --disk pool=...``; the path
policy and format refusals in one line."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from kvmops.host import pools as host_pools
from kvmops.host.connection import Host
from kvmops.testing.tgt import detach_test_loop_devices
from tests.conftest import SESSION_PREFIX, assert_one_line_error, run_cli

MIB = 1024 * 1024


def remove_pool(host: Host, name: str) -> None:
    with contextlib.suppress(Exception):
        host_pools.stop(host, name)
    with contextlib.suppress(Exception):
        host_pools.undefine(host, name)


@pytest.fixture
def pool_name(host: Host) -> Iterator[Callable[[str], str]]:
    """Test pool names (``SESSION_PREFIX...``), removed after the test."""
    made: list[str] = []

    def name(tag: str) -> str:
        made.append(f"{SESSION_PREFIX}{tag}")
        return made[-1]

    yield name
    for made_name in made:
        remove_pool(host, made_name)


def _json(*args: str) -> object:
    result = run_cli(*args, "--json")
    assert result.code == 0, (args, result.stderr)
    return json.loads(result.stdout)


def _ok(*args: str) -> str:
    result = run_cli(*args)
    assert result.code == 0, (args, result.stdout, result.stderr)
    return result.stdout + result.stderr


def _volumes(pool: str) -> dict[str, dict[str, object]]:
    listed = _json("volume", "list", pool)
    assert isinstance(listed, list)
    return {v["name"]: v for v in listed}


def _exercise_volumes(pool: str, work: Path) -> None:
    """create (qcow2 and raw), clone, resize, upload, download, delete."""
    _ok("volume", "create", pool, "a.qcow2", "--size", "64M", "--format", "qcow2")
    _ok("volume", "create", pool, "b.raw", "--size", "8M", "--format", "raw")
    _ok("volume", "clone", pool, "a.qcow2", "c.qcow2")
    vols = _volumes(pool)
    assert {"a.qcow2", "b.raw", "c.qcow2"} <= set(vols)
    assert (vols["a.qcow2"]["format"], vols["a.qcow2"]["capacity"]) == ("qcow2", 64 * MIB)
    assert (vols["c.qcow2"]["format"], vols["c.qcow2"]["capacity"]) == ("qcow2", 64 * MIB)
    resized = _json("volume", "resize", pool, "c.qcow2", "96M")
    assert isinstance(resized, dict) and resized["capacity"] == 96 * MIB
    assert_one_line_error(run_cli("volume", "resize", pool, "c.qcow2", "32M"), 2,
                          "would shrink it", "--shrink")
    # Upload 3 MiB of random bytes into the raw volume; download reads them back.
    data = os.urandom(3 * MIB + 4096)
    source = work / f"{SESSION_PREFIX}up.raw"
    source.write_bytes(data)
    upload = run_cli("volume", "upload", pool, "b.raw", str(source), "--format", "raw")
    assert upload.code == 0, upload.stderr
    assert "upload b.raw" in upload.stderr  # the progress bar
    dest = work / f"{SESSION_PREFIX}down.raw"
    _ok("volume", "download", pool, "b.raw", str(dest))
    copied = dest.read_bytes()
    assert len(copied) == 8 * MIB and copied[:len(data)] == data
    assert copied[len(data):] == bytes(8 * MIB - len(data))
    assert_one_line_error(run_cli("volume", "download", pool, "b.raw", str(dest)), 4,
                          "exists", "--overwrite")
    # A qcow2 file must go into a qcow2 volume, and name no backing file.
    assert_one_line_error(run_cli("volume", "upload", pool, "b.raw", str(source), "--format",
                                  "qcow2"), 2, "is raw; the file is qcow2")
    backed = work / f"{SESSION_PREFIX}backed.qcow2"
    subprocess.run(["qemu-img", "create", "-f", "qcow2", "-F", "raw", "-b", str(source),
                    str(backed)], check=True, capture_output=True)
    assert_one_line_error(run_cli("volume", "upload", pool, "a.qcow2", str(backed),
                                  "--format", "qcow2"), 21, "backing or data file")
    _ok("volume", "delete", pool, "c.qcow2")
    assert "c.qcow2" not in _volumes(pool)
    for path in (source, dest, backed):
        path.unlink()


def test_dir_pool_volumes_and_vm_disk(pool_name: Callable[[str], str], images_dir: Path,
                                      vm_factory: Callable[..., str], host: Host) -> None:
    pool = pool_name("dir")
    target = images_dir / f"{pool}-dir"
    created = _json("pool", "create", pool, "--type", "dir", "--target", str(target),
                    "--build")
    assert isinstance(created, dict)
    assert (created["type"], created["active"], created["target"]) == ("dir", True,
                                                                        str(target))
    assert target.is_dir()
    listed = _json("pool", "list")
    assert isinstance(listed, list) and pool in [p["name"] for p in listed]
    _exercise_volumes(pool, images_dir)
    # A raw volume whose bytes look like qcow2 (as a guest could write them) is never
    # read as qcow2: libvirt's refresh probes it, kvmops refuses to clone it.
    header = images_dir / f"{SESSION_PREFIX}header.qcow2"
    subprocess.run(["qemu-img", "create", "-f", "qcow2", str(header), "1M"], check=True,
                   capture_output=True)
    _ok("volume", "upload", pool, "b.raw", str(header), "--format", "raw")
    _ok("pool", "refresh", pool)
    assert _volumes(pool)["b.raw"]["format"] == "qcow2"  # libvirt's guess from the bytes
    assert_one_line_error(run_cli("volume", "clone", pool, "b.raw", "d.raw"), 9,
                          "was made as raw but its bytes now look like qcow2")
    header.unlink()
    # vm create --disk pool=NAME,size=...: a new qcow2 volume in the pool as the VM's disk.
    vm = vm_factory(disk=f"pool={pool},size=32M")
    info = _json("vm", "info", vm)
    assert isinstance(info, dict)
    disk_path = target / f"{vm}-vda.qcow2"
    assert [(d["source"], d["format"]) for d in info["disks"]] == [(str(disk_path), "qcow2")]
    vols = _volumes(pool)
    assert vols[disk_path.name]["used_by"] == [vm]
    assert vols[disk_path.name]["capacity"] == 32 * MIB
    assert_one_line_error(run_cli("volume", "delete", pool, disk_path.name), 5, vm)
    assert_one_line_error(run_cli("pool", "delete", pool), 5, vm, "use its volumes")
    _ok("vm", "undefine", vm, "--remove-storage")
    assert not disk_path.exists()
    _ok("pool", "delete", pool)
    assert not host_pools.exists(host, pool)
    assert target.is_dir()  # the data stays


def test_pool_paths_follow_the_path_policy(pool_name: Callable[[str], str], tmp_path: Path,
                                           images_dir: Path) -> None:
    pool = pool_name("refused")
    assert_one_line_error(run_cli("pool", "create", pool, "--type", "dir", "--target",
                                  str(tmp_path), "--build"), 21,
                          "outside the allowed image directories")
    link = images_dir / f"{pool}-link"  # inside by name, outside by what it points to
    link.symlink_to(tmp_path)
    assert_one_line_error(run_cli("pool", "create", pool, "--type", "dir", "--target",
                                  str(link)), 21, "outside the allowed image directories")
    link.unlink()
    assert_one_line_error(run_cli("pool", "create", pool, "--type", "dir", "--target",
                                  "/var/lib/kvmops/state/x"), 21, "state directory")
    assert_one_line_error(run_cli("pool", "create", pool, "--type", "fs", "--device",
                                  "/etc/hostname", "--target", "/var/lib/kvmops/test-images/"
                                  f"{pool}"), 2, "not a block device")
    assert_one_line_error(run_cli("pool", "create", pool, "--type", "iscsi-direct",
                                  "--host", "127.0.0.1", "--target-iqn", "disk1",
                                  "--initiator-iqn", "iqn.2024-01.org.kvmops:i"), 2,
                          "not an iSCSI qualified name")
    assert_one_line_error(run_cli("pool", "info", pool), 3, "not found")
    assert_one_line_error(run_cli("volume", "create", pool, "../x", "--size", "8M",
                                  "--format", "raw"), 2, "invalid volume name")


@pytest.fixture
def loop_device(images_dir: Path) -> Iterator[str]:
    """A loop device over a 64 MiB test file; detached (and the file removed) even when
    the test fails."""
    backing = images_dir / f"{SESSION_PREFIX}loop.img"
    with open(backing, "wb") as fh:
        fh.truncate(64 * MIB)
    try:
        device = subprocess.run(["losetup", "--find", "--show", str(backing)],
                                capture_output=True, text=True, check=True,
                                timeout=30).stdout.strip()
        yield device
    finally:
        detach_test_loop_devices(str(backing))
        backing.unlink(missing_ok=True)


def test_fs_pool_on_a_loop_device(pool_name: Callable[[str], str], images_dir: Path,
                                  loop_device: str, host: Host) -> None:
    pool = pool_name("fs")
    target = images_dir / f"{pool}-mnt"
    created = _json("pool", "create", pool, "--type", "fs", "--device", loop_device,
                    "--target", str(target), "--build")
    assert isinstance(created, dict)
    assert (created["type"], created["device"], created["fs_format"]) == ("fs", loop_device,
                                                                          "ext4")
    mounts = Path("/proc/self/mounts").read_text()
    assert f"{loop_device} {target} ext4" in mounts  # libvirt mounted the new file system
    # --build never formats over data: the device holds a file system now.
    again = pool_name("fs2")
    assert_one_line_error(run_cli("pool", "create", again, "--type", "fs", "--device",
                                  loop_device, "--target", str(images_dir / again),
                                  "--build"), 5, "is mounted already")
    _exercise_volumes(pool, images_dir)
    _ok("pool", "stop", pool)
    assert f"{loop_device} {target}" not in Path("/proc/self/mounts").read_text()
    info = _json("pool", "info", pool)
    assert isinstance(info, dict) and info["active"] is False
    _ok("pool", "start", pool)
    assert {"a.qcow2", "b.raw"} <= set(_volumes(pool))  # the data survived the unmount
    _ok("pool", "delete", pool)
    assert f"{loop_device} {target}" not in Path("/proc/self/mounts").read_text()


def test_clean_test_removes_a_crashed_runs_pool_loop_device_and_target(
        images_dir: Path, host: Host) -> None:
    """What ``make clean-test`` calls, limited to this session's prefix (other sessions'
    test objects are theirs)."""
    from kvmops.testing.cleanup import remove_test_pools
    from kvmops.testing.tgt import remove_test_targets, start_target, test_loop_devices

    marker = f"{SESSION_PREFIX}crash"
    backing = images_dir / f"{marker}.img"
    with open(backing, "wb") as fh:
        fh.truncate(16 * MIB)
    subprocess.run(["losetup", "--find", "--show", str(backing)], check=True,
                   capture_output=True, timeout=30)
    iqn = f"iqn.2024-01.org.kvmops:{marker}"
    target = start_target(iqn, images_dir / f"{marker}-lun.img", 16 * MIB)
    pool = f"{marker}-pool"
    try:
        _ok("pool", "create", pool, "--type", "dir", "--target", str(images_dir / pool),
            "--build")
        assert test_loop_devices(marker)
        assert remove_test_pools(host, marker) == [pool]
        assert not host_pools.exists(host, pool)
        assert remove_test_targets(marker) == [iqn]
        assert not Path(f"/proc/{target.pid}").exists() or \
            Path(f"/proc/{target.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
        assert detach_test_loop_devices(marker)
        assert not test_loop_devices(marker)
    finally:
        remove_pool(host, pool)
        remove_test_targets(marker)
        detach_test_loop_devices(marker)
        backing.unlink(missing_ok=True)
        (images_dir / f"{marker}-lun.img").unlink(missing_ok=True)
