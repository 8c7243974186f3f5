"""Online backups of libvirt VMs: the round trip, failure safety and edge cases."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import libvirt

from kvmops.devguest.build import GuestImage
from kvmops.errors import BackupError, BackupInconsistentError, StateError, UnsupportedError
from kvmops.host.connection import Host
from tests.conftest import assert_one_line_error, run_cli
from tests.integration.backup_util import (
    backup,
    disk_hash,
    list_backups,
    repo_checkpoints,
    restore_hash,
    write_random,
)
from tests.integration.throttle import wait_backup_job


def test_round_trip_every_point_restores(vm_factory: Callable[..., str], repo_dir: Path,
                                         tmp_path: Path, tiny_guest: GuestImage,
                                         images_dir: Path) -> None:
    data = images_dir / f"data-{time.monotonic_ns()}.raw"  # ext4 the guest mounts: freezable
    shutil.copyfile(tiny_guest.data_disk, data)
    vm = vm_factory("--disk", f"path={data},format=raw", start=True)
    expected: dict[str, str] = {}
    full = backup(vm, repo_dir, "--full", "--disk", "vda")
    assert full["type"] == "full" and full["consistency"] == "application"
    expected[str(full["id"])] = disk_hash(vm)

    expected_hash = write_random(vm, 2, 4)
    inc1 = backup(vm, repo_dir, "--incremental", "--disk", "vda")
    assert inc1["type"] == "incremental" and inc1["parent"] == full["id"]
    expected[str(inc1["id"])] = expected_hash

    expected_hash = write_random(vm, 20, 3)
    diff = backup(vm, repo_dir, "--differential", "--disk", "vda")
    assert diff["type"] == "differential" and diff["parent"] == full["id"]
    expected[str(diff["id"])] = expected_hash

    expected_hash = write_random(vm, 40, 1)
    inc2 = backup(vm, repo_dir, "--incremental", "--disk", "vda")
    assert inc2["type"] == "incremental" and inc2["parent"] == diff["id"]
    expected[str(inc2["id"])] = expected_hash

    # Incrementals hold about what changed, not the disk.
    inc_bytes = sum(d["bytes_written"] for d in inc1["disks"])  # type: ignore[attr-defined]
    assert 4 << 20 <= inc_bytes <= 2 * (4 << 20) + (2 << 20)

    listed = list_backups(vm, repo_dir)
    assert [b["id"] for b in listed] == list(expected)  # oldest first
    assert [b["type"] for b in listed] == ["full", "incremental", "differential", "incremental"]
    assert all(b["complete"] is True and b["time"] for b in listed)

    for index, (backup_id, digest) in enumerate(expected.items()):
        assert restore_hash(vm, repo_dir, backup_id, tmp_path / f"r{index}") == digest

    result = run_cli("backup", "verify", "--repo", str(repo_dir), vm)
    assert result.code == 0, result.stderr

    # Default mode continues the chain; the last line of the output is the new id.
    result = run_cli("backup", "create", vm, "--repo", str(repo_dir))
    assert result.code == 0, result.stderr
    new_id = result.stdout.strip().splitlines()[-1]
    assert list_backups(vm, repo_dir)[-1]["id"] == new_id
    assert list_backups(vm, repo_dir)[-1]["type"] == "incremental"


def test_verify_reports_first_broken_link(backup_guest: str, repo_dir: Path) -> None:
    vm = backup_guest
    full = backup(vm, repo_dir, "--full")
    write_random(vm, 5, 2)
    backup(vm, repo_dir, "--incremental")
    full_file = repo_dir / vm / "backups" / str(full["id"]) / "vda.qcow2"
    with open(full_file, "r+b") as fh:  # flip bytes in the data area
        fh.seek(os.path.getsize(full_file) - 4096)
        fh.write(b"\xff" * 16)
    result = run_cli("backup", "verify", "--repo", str(repo_dir), vm)
    assert_one_line_error(result, BackupInconsistentError.exit_code, str(full["id"]),
                          "checksum")


def test_restarted_vm_chain_continues(vm_factory: Callable[..., str], repo_dir: Path,
                                      tmp_path: Path) -> None:
    vm = vm_factory(start=True)
    backup(vm, repo_dir, "--full")
    write_random(vm, 1, 2)
    backup(vm, repo_dir, "--incremental")
    assert run_cli("vm", "shutdown", vm, "--agent").code == 0
    assert run_cli("vm", "start", vm, "--wait-agent", "90").code == 0
    digest = write_random(vm, 9, 2)
    after = backup(vm, repo_dir)
    assert after["type"] == "incremental", after["notes"]
    assert restore_hash(vm, repo_dir, str(after["id"]), tmp_path / "r") == digest


def test_killed_qemu_forces_full_with_note(vm_factory: Callable[..., str], repo_dir: Path,
                                           host: Host, tmp_path: Path) -> None:
    vm = vm_factory(start=True)
    backup(vm, repo_dir, "--full")
    write_random(vm, 1, 2)
    pid = int(Path(f"/run/libvirt/qemu/{vm}.pid").read_text())
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while host.domain(vm).isActive() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert run_cli("vm", "start", vm, "--wait-agent", "90").code == 0
    digest = write_random(vm, 12, 1)
    after = backup(vm, repo_dir)
    assert after["type"] == "full"
    assert any("cannot be trusted" in n or "inconsistent" in n
               for n in after["notes"]), after["notes"]  # type: ignore[union-attr]
    assert restore_hash(vm, repo_dir, str(after["id"]), tmp_path / "r") == digest
    # And the chain goes on from the new full.
    digest = write_random(vm, 30, 1)
    nxt = backup(vm, repo_dir)
    assert nxt["type"] == "incremental" and nxt["parent"] == after["id"]
    assert restore_hash(vm, repo_dir, str(nxt["id"]), tmp_path / "r2") == digest


def test_lost_checkpoint_metadata_is_redefined(backup_guest: str, repo_dir: Path,
                                               host: Host, tmp_path: Path) -> None:
    vm = backup_guest
    full = backup(vm, repo_dir, "--full")
    domain = host.domain(vm)
    for name in repo_checkpoints(host, vm, repo_dir):
        domain.checkpointLookupByName(name, 0).delete(
            libvirt.VIR_DOMAIN_CHECKPOINT_DELETE_METADATA_ONLY)
    assert repo_checkpoints(host, vm, repo_dir) == []
    digest = write_random(vm, 3, 2)
    after = backup(vm, repo_dir)
    assert after["type"] == "incremental" and after["parent"] == full["id"], after["notes"]
    assert any("redefined" in n for n in after["notes"])  # type: ignore[union-attr]
    assert restore_hash(vm, repo_dir, str(after["id"]), tmp_path / "r") == digest


def test_foreign_checkpoint_left_alone(backup_guest: str, repo_dir: Path, host: Host) -> None:
    vm = backup_guest
    domain = host.domain(vm)
    domain.checkpointCreateXML(
        "<domaincheckpoint><name>someone-else</name></domaincheckpoint>", 0)
    backup(vm, repo_dir, "--full")
    after = backup(vm, repo_dir)
    assert any("someone-else" in n for n in after["notes"])  # type: ignore[union-attr]
    names = [c.getName() for c in domain.listAllCheckpoints(0)]
    assert "someone-else" in names


def test_added_disk_gets_its_own_full(vm_factory: Callable[..., str], repo_dir: Path,
                                      images_dir: Path, tmp_path: Path, host: Host) -> None:
    vm = vm_factory(start=True)
    backup(vm, repo_dir, "--full")
    extra = images_dir / f"{vm}-extra.qcow2"
    subprocess.run(["qemu-img", "create", "-f", "qcow2", str(extra), "32M"], check=True,
                   capture_output=True)
    domain = host.domain(vm)
    domain.attachDeviceFlags(
        f"<disk type='file' device='disk'><driver name='qemu' type='qcow2'/>"
        f"<source file='{extra}'/><target dev='vdb' bus='virtio'/></disk>",
        libvirt.VIR_DOMAIN_AFFECT_LIVE | libvirt.VIR_DOMAIN_AFFECT_CONFIG)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if run_cli("guest", "exec", vm, "--", "test", "-b", "/dev/vdb").code == 0:
            break
        time.sleep(1)
    vdb_digest = write_random(vm, 0, 4, target="vdb")
    vda_digest = write_random(vm, 6, 1)
    after = backup(vm, repo_dir)
    assert after["type"] == "incremental"
    by_target = {d["target"]: d for d in after["disks"]}  # type: ignore[attr-defined]
    assert by_target["vda"]["type"] == "incremental"
    assert by_target["vdb"]["type"] == "full" and by_target["vdb"]["parent"] is None
    assert any("vdb" in n and "own full" in n for n in after["notes"])  # type: ignore[union-attr]
    out = tmp_path / "r"
    assert restore_hash(vm, repo_dir, str(after["id"]), out) == vda_digest
    from tests.integration.backup_util import image_hash

    assert image_hash(out / "vdb.qcow2") == vdb_digest


def test_resized_disk_between_backups(vm_factory: Callable[..., str], repo_dir: Path,
                                      host: Host, tmp_path: Path) -> None:
    vm = vm_factory(start=True)
    backup(vm, repo_dir, "--full")
    domain = host.domain(vm)
    domain.blockResize("vda", 96 * 1024 * 1024, libvirt.VIR_DOMAIN_BLOCK_RESIZE_BYTES)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        out = run_cli("guest", "exec", vm, "--", "cat", "/sys/block/vda/size").stdout.strip()
        if out == str(96 * 2048):
            break
        time.sleep(0.5)
    digest = write_random(vm, 70, 4)  # beyond the old end
    after = backup(vm, repo_dir)
    # its only disk was resized: a full of its own, said in the notes
    assert after["type"] == "full"
    assert any("resized" in n for n in after["notes"])  # type: ignore[union-attr]
    assert after["disks"][0]["virtual_size"] == 96 * 1024 * 1024  # type: ignore[index]
    assert restore_hash(vm, repo_dir, str(after["id"]), tmp_path / "r") == digest


def test_raw_disk_is_copied_in_full_and_said(vm_factory: Callable[..., str], repo_dir: Path,
                                            images_dir: Path, tmp_path: Path) -> None:
    raw = images_dir / "rawdisk.raw"
    subprocess.run(["qemu-img", "create", "-f", "raw", str(raw), "32M"], check=True,
                   capture_output=True)
    vm = vm_factory("--disk", f"path={raw},format=raw", start=True)
    backup(vm, repo_dir, "--full")
    raw_digest = write_random(vm, 1, 2, target="vdb")
    after = backup(vm, repo_dir, "--incremental")
    by_target = {d["target"]: d for d in after["disks"]}  # type: ignore[attr-defined]
    assert by_target["vdb"]["type"] == "full"
    assert by_target["vda"]["type"] == "incremental"
    assert any("raw" in n and "vdb" in n for n in after["notes"])  # type: ignore[union-attr]
    out = tmp_path / "r"
    restore_hash(vm, repo_dir, str(after["id"]), out)
    from tests.integration.backup_util import image_hash

    assert image_hash(out / "vdb.qcow2") == raw_digest


def test_shut_off_vm_backup_then_chain_continues(vm_factory: Callable[..., str],
                                                 repo_dir: Path, tmp_path: Path) -> None:
    vm = vm_factory(start=True)
    backup(vm, repo_dir, "--full")
    digest = write_random(vm, 4, 2)
    assert run_cli("vm", "shutdown", vm, "--agent").code == 0
    offline = backup(vm, repo_dir)
    assert offline["consistency"] == "offline" and offline["type"] == "full"
    assert restore_hash(vm, repo_dir, str(offline["id"]), tmp_path / "r1") == digest
    assert run_cli("vm", "start", vm, "--wait-agent", "90").code == 0
    digest = write_random(vm, 33, 2)
    online = backup(vm, repo_dir)
    assert online["type"] == "incremental" and online["parent"] == offline["id"]
    assert restore_hash(vm, repo_dir, str(online["id"]), tmp_path / "r2") == digest


def _big_vm(vm_factory: Callable[..., str], images_dir: Path) -> str:
    """A VM whose vda holds 64 MiB of data written on the host (fast)."""
    image = images_dir / f"big-{time.monotonic_ns()}.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(image), "64M"], check=True)
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", "write -P 0x5a 0 64M", str(image)],
                   check=True, capture_output=True)
    return vm_factory(disk=f"path={image},format=qcow2", start=True)


def _throttle_reads(host: Host, vm: str, bytes_per_s: int) -> None:
    """Slow the VM's QEMU reads of its image (cgroup blkio through libvirt), so that a
    backup runs long enough to be interrupted; 0 lifts the limit. libvirt's backup API
    has no bandwidth setting that holds from the first byte."""
    domain = host.domain(vm)
    image = Path(str(domain.XMLDesc(0)).split("<source file='", 1)[1].split("'", 1)[0])
    dev = os.stat(image).st_dev
    sysfs = Path(f"/sys/dev/block/{os.major(dev)}:{os.minor(dev)}").resolve()
    if (sysfs / "partition").exists():  # blkio throttles whole disks
        sysfs = sysfs.parent
    uevent = (sysfs / "uevent").read_text()
    device = "/dev/" + next(line.split("=", 1)[1] for line in uevent.splitlines()
                            if line.startswith("DEVNAME="))
    domain.setBlkioParameters({"device_read_bytes_sec": f"{device},{bytes_per_s}"},
                              libvirt.VIR_DOMAIN_AFFECT_LIVE)


def _lift_read_throttle(vm: str) -> None:
    """Lift the read limit by writing the VM's blkio cgroup directly.

    libvirt would first wait for the domain job in progress (a cancel or destroy), and
    with QEMU's block-copy holding up to 128 MiB of reads in flight, those drain at the
    limit for half a minute. A VM that is gone has no limit left to lift.
    """
    try:
        pid = int(Path(f"/run/libvirt/qemu/{vm}.pid").read_text().strip())
    except (OSError, ValueError):
        return
    _lift_read_throttle_of(pid)


def _lift_read_throttle_of(pid: int, groups: list[Path] | None = None) -> None:
    for group in _blkio_groups(pid) if groups is None else groups:
        rules = group / "blkio.throttle.read_bps_device"
        with contextlib.suppress(OSError):
            for rule in rules.read_text().splitlines():
                rules.write_text(f"{rule.split()[0]} 0\n")


def _slow_backup(vm: str, repo: Path, host: Host) -> subprocess.Popen[str]:
    _throttle_reads(host, vm, 2 << 20)
    return subprocess.Popen(
        [sys.executable, "-m", "kvmops.cli.main", "backup", "create", vm, "--repo", str(repo),
         "--full"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_partial(repo: Path, vm: str, proc: subprocess.Popen[str], host: Host) -> None:
    """Wait until libvirt runs the backup job into a partial directory.

    Not until the partial file grows: QEMU keeps up to 64 MiB of reads in flight, so
    under the read throttle the whole small disk is read at once and the first bytes
    land only near the end of the copy. From the job's start the throttle leaves about
    half a minute before the copy can complete.
    """
    def running() -> bool:
        assert proc.poll() is None, proc.communicate()
        return True

    wait_backup_job(host, vm, repo / vm / "backups", running)


def _blkio_groups(pid: int) -> list[Path]:
    """The blkio cgroup directories of a process (read while it still exists)."""
    try:
        lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
    except OSError:
        return []
    root = Path("/sys/fs/cgroup/blkio")
    groups = []
    for line in lines:
        _num, controllers, path = line.split(":", 2)
        if "blkio" in controllers.split(","):
            group = root / path.lstrip("/")
            while group != root.parent:  # libvirt sets the rule on the VM's group
                groups.append(group)
                group = group.parent
    return groups


def test_killed_kvmops_mid_backup_leaves_nothing_false(
        vm_factory: Callable[..., str], repo_dir: Path, images_dir: Path, tmp_path: Path,
        host: Host) -> None:
    vm = _big_vm(vm_factory, images_dir)
    first = backup(vm, repo_dir, "--full")
    digest = write_random(vm, 0, 40)
    proc = _slow_backup(vm, repo_dir, host)
    try:
        _wait_partial(repo_dir, vm, proc, host)
        proc.kill()  # SIGKILL: no clean-up code runs
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
        _lift_read_throttle(vm)
    listed = list_backups(vm, repo_dir)
    assert [b["id"] for b in listed] == [first["id"]]
    assert run_cli("backup", "verify", "--repo", str(repo_dir), vm).code == 0
    # The next backup cleans up and still holds every block written since the first.
    after = backup(vm, repo_dir, "--incremental")
    assert after["type"] == "incremental" and after["parent"] == first["id"]
    assert any("unfinished" in n for n in after["notes"])  # type: ignore[union-attr]
    assert not list((repo_dir / vm / "backups").glob(".partial-*"))
    assert restore_hash(vm, repo_dir, str(after["id"]), tmp_path / "r") == digest
    assert run_cli("backup", "verify", "--repo", str(repo_dir), vm).code == 0


def test_second_backup_refused_and_cancel(vm_factory: Callable[..., str], repo_dir: Path,
                                          images_dir: Path, tmp_path: Path,
                                          host: Host) -> None:
    vm = _big_vm(vm_factory, images_dir)
    first = backup(vm, repo_dir, "--full")
    digest = write_random(vm, 0, 40)
    proc = _slow_backup(vm, repo_dir, host)
    try:
        _wait_partial(repo_dir, vm, proc, host)
        jobs = json.loads(run_cli("backup", "jobs", "--json").stdout)
        assert any(j["vm"] == vm and j["pid"] == proc.pid for j in jobs)
        second = run_cli("backup", "create", vm, "--repo", str(repo_dir))
        assert_one_line_error(second, StateError.exit_code, vm, "lock")
        paused = run_cli("backup", "pause", vm)
        assert_one_line_error(paused, UnsupportedError.exit_code, "libvirt", "cancel")
        cancelled = run_cli("backup", "cancel", vm)
        if cancelled.code != 0:  # say why the throttled backup was over so soon
            proc.kill()
            out, err = proc.communicate(timeout=60)
            raise AssertionError(f"cancel: {cancelled.stderr}; the backup ended with "
                                 f"{proc.returncode}: {out[-2000:]} {err[-2000:]}")
        _lift_read_throttle(vm)  # the cancelled job's reads in flight drain at once
        _out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
        _lift_read_throttle(vm)
    assert proc.returncode != 0
    assert "Traceback" not in err
    assert [b["id"] for b in list_backups(vm, repo_dir)] == [first["id"]]
    events = json.loads(run_cli("backup", "events", vm, "--json").stdout)
    assert events[-1]["event"] == "cancelled"
    after = backup(vm, repo_dir)
    assert after["type"] == "incremental"
    assert restore_hash(vm, repo_dir, str(after["id"]), tmp_path / "r") == digest


def test_vm_shut_down_during_backup(vm_factory: Callable[..., str], repo_dir: Path,
                                    images_dir: Path, host: Host) -> None:
    """QEMU dies in the middle (SIGKILL: no drain during which a lifted throttle could let
    the copy finish first): the backup fails in one line and publishes nothing."""
    vm = _big_vm(vm_factory, images_dir)
    proc = _slow_backup(vm, repo_dir, host)
    try:
        _wait_partial(repo_dir, vm, proc, host)
        pid = int(Path(f"/run/libvirt/qemu/{vm}.pid").read_text().strip())
        groups = _blkio_groups(pid)
        os.kill(pid, signal.SIGKILL)
        # a killed QEMU still waits for its throttled reads in flight before it is gone
        _lift_read_throttle_of(pid, groups)
        _out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == BackupError.exit_code, err
    assert "stopped" in err and "Traceback" not in err
    assert list_backups(vm, repo_dir) == []
    assert not list((repo_dir / vm / "backups").glob(".partial-*"))


def test_prune_merges_and_kept_points_restore(backup_guest: str, repo_dir: Path,
                                              tmp_path: Path) -> None:
    vm = backup_guest
    digests: dict[str, str] = {}
    first = backup(vm, repo_dir, "--full")
    digests[str(first["id"])] = disk_hash(vm)
    for step in range(4):
        digest = write_random(vm, 3 + 7 * step, 2)
        made = backup(vm, repo_dir, "--incremental")
        digests[str(made["id"])] = digest
    ids = list(digests)
    dry = run_cli("backup", "prune", vm, "--repo", str(repo_dir), "--keep-last", "2",
                  "--dry-run", "--json")
    assert dry.code == 0, dry.stderr
    plan = json.loads(dry.stdout)["plan"]
    assert plan["remove"] == ids[:3] and plan["keep"] == ids[3:]
    assert [b["id"] for b in list_backups(vm, repo_dir)] == ids  # dry run changed nothing
    yearly = run_cli("backup", "prune", vm, "--repo", str(repo_dir), "--keep-yearly", "1",
                     "--dry-run", "--json")  # the newest of this year (they are all of it)
    assert yearly.code == 0, yearly.stderr
    assert json.loads(yearly.stdout)["plan"]["keep"] == ids[-1:]

    result = run_cli("backup", "prune", vm, "--repo", str(repo_dir), "--keep-last", "2")
    assert result.code == 0, result.stderr
    listed = list_backups(vm, repo_dir)
    assert [b["id"] for b in listed] == ids[3:]
    assert listed[0]["type"] == "full" and listed[0]["parent"] is None
    assert listed[1]["parent"] == ids[3]
    for index, backup_id in enumerate(ids[3:]):
        assert restore_hash(vm, repo_dir, backup_id, tmp_path / f"r{index}") == digests[backup_id]
    assert run_cli("backup", "verify", "--repo", str(repo_dir), vm).code == 0
    # The chain goes on after a prune.
    digest = write_random(vm, 50, 1)
    nxt = backup(vm, repo_dir)
    assert nxt["type"] == "incremental" and nxt["parent"] == ids[4]
    assert restore_hash(vm, repo_dir, str(nxt["id"]), tmp_path / "rn") == digest


def test_compressed_chain_restores(vm_factory: Callable[..., str], repo_dir: Path,
                                   images_dir: Path, tmp_path: Path) -> None:
    vm = _big_vm(vm_factory, images_dir)  # 64 MiB of one repeated byte: compresses well
    full = backup(vm, repo_dir, "--full", "--compress")
    assert full["disks"][0]["bytes_written"] < 8 << 20  # type: ignore[index]
    digest_full = disk_hash(vm)
    digest = write_random(vm, 10, 2)
    inc = backup(vm, repo_dir, "--incremental", "--compress")
    assert inc["type"] == "incremental"
    assert restore_hash(vm, repo_dir, str(full["id"]), tmp_path / "r0") == digest_full
    assert restore_hash(vm, repo_dir, str(inc["id"]), tmp_path / "r1") == digest
    assert run_cli("backup", "verify", "--repo", str(repo_dir), vm).code == 0


def test_two_repositories_alternate_and_each_stays_incremental(
        backup_guest: str, backups_dir: Path, tmp_path: Path) -> None:
    """A local and an off-site repository for one VM: each keeps its own checkpoints,
    neither deletes the other's, both chains stay incremental and restore exactly.
    (The guest mounts nothing it can freeze: the backups say crash-consistent.)"""
    vm = backup_guest
    repos = {"a": backups_dir / f"{vm}-local", "b": backups_dir / f"{vm}-offsite"}
    for repo in repos.values():  # fresh repositories, whatever ran before
        shutil.rmtree(repo, ignore_errors=True)
    points: dict[str, list[tuple[str, str]]] = {"a": [], "b": []}
    for step, name in enumerate(("a", "b", "a", "b")):
        digest = write_random(vm, step * 4, 2)
        made = backup(vm, repos[name])
        assert made["consistency"] == "crash"
        assert any("froze no file system" in n for n in made["notes"])  # type: ignore[union-attr]
        expected = "full" if len(points[name]) == 0 else "incremental"
        assert made["type"] == expected, (name, step, made["notes"])
        if points[name]:
            assert made["parent"] == points[name][-1][0]
        points[name].append((str(made["id"]), digest))
    for name, chain in points.items():
        for index, (backup_id, digest) in enumerate(chain):
            out = tmp_path / f"{name}{index}"
            assert restore_hash(vm, repos[name], backup_id, out) == digest
        assert run_cli("backup", "verify", "--repo", str(repos[name]), vm).code == 0


def test_concurrent_backups_of_one_vm_are_refused_in_one_line(
        vm_factory: Callable[..., str], repo_dir: Path, backups_dir: Path, images_dir: Path,
        host: Host) -> None:
    vm = _big_vm(vm_factory, images_dir)
    proc = _slow_backup(vm, repo_dir, host)
    try:
        _wait_partial(repo_dir, vm, proc, host)
        other = run_cli("backup", "create", vm, "--repo", str(backups_dir / f"{vm}-other"))
        assert_one_line_error(other, StateError.exit_code, vm, "already running",
                              str(repo_dir))
        assert run_cli("backup", "cancel", vm).code == 0
        _lift_read_throttle(vm)
        proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
        _lift_read_throttle(vm)
    assert not list((backups_dir / f"{vm}-other").rglob("manifest.json"))
