"""Instant recovery through the real stack: a VM started on overlays of a backup point
answers its guest agent and reads the point's data while the background pull still
runs; cancel, kill -9 of the following kvmops and resume; the final image is standalone
and equal to the point; the repository is never written (not even chowned)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import libvirt
import pytest

from kvmops.backup import instant
from kvmops.devguest.build import GuestImage
from kvmops.host.connection import Host
from kvmops.host.domain import Domain
from kvmops.vm.lifecycle import ping_agent
from tests.conftest import SESSION_PREFIX, run_cli
from tests.integration.api_server import start_server
from tests.integration.backup_util import backup, disk_hash, guest_sh, write_random
from tests.integration.conftest import remove_vm

SLOW = "64K"  # bytes/s of the pull while the guest is checked: it lasts minutes
BOOT_BOUND_S = 300.0  # an upper bound for a TCG boot under load, not a timing assertion


def _repo_state(repo: Path) -> dict[str, tuple[str, int, int, int, int, int]]:
    """Every repository file: content hash, mtime, ctime (a chown or an xattr moves it),
    owner, group and mode."""
    out = {}
    for path in sorted(repo.rglob("*")):
        if path.is_file():
            st = path.stat()
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            out[str(path)] = (digest, st.st_mtime_ns, st.st_ctime_ns, st.st_uid, st.st_gid,
                              st.st_mode)
    return out


def _pull_job(host: Host, vm: str) -> dict[str, int]:
    return dict(host.domain(vm).blockJobInfo("vda", 0) or {})


def _instant_list() -> dict[str, dict[str, Any]]:
    result = run_cli("backup", "instant", "list", "--json")
    assert result.code == 0, result.stderr
    return {item["record"]["vm"]: item for item in json.loads(result.stdout)}


def _kvmops(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "kvmops.cli.main", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "COLUMNS": "200"})


@contextlib.contextmanager
def _recovered(host: Host, name: str) -> Iterator[str]:
    """The recovered VM, its overlays and its record removed even on failure."""
    try:
        yield name
    finally:
        remove_vm(host, name)
        with contextlib.suppress(Exception):
            for disk in instant.load(name).disks:
                with contextlib.suppress(OSError):
                    os.unlink(disk.overlay)
        instant.forget(name)


def _region(vm: str, skip_mib: int, count_mib: int) -> str:
    """sha256 of MiBs of the guest's /dev/vda (a part: the guest's reads are copied into
    the overlay on the way, so reading it all would end the pull)."""
    return guest_sh(vm, f"dd if=/dev/vda bs=1M skip={skip_mib} count={count_mib} "
                        "2>/dev/null | sha256sum").split()[0]


def _wait_agent(host: Host, vm: str, follower: subprocess.Popen[str] | None = None) -> None:
    deadline = time.monotonic() + BOOT_BOUND_S
    while not (host.has_domain(vm) and ping_agent(Domain.of(host.lookup(vm)), timeout=2)):
        assert follower is None or follower.poll() is None, follower.communicate()
        assert time.monotonic() < deadline, f"VM {vm} did not boot in {BOOT_BOUND_S}s"
        time.sleep(0.5)


@pytest.fixture(scope="module")
def source_vm(vm_factory: Callable[..., str], tiny_guest: GuestImage, images_dir: Path
              ) -> str:
    """The guest to back up, its kernel and initrd inside the image directories: a VM
    restored from its definition keeps direct kernel boot only from there (files
    elsewhere are dropped by the rebuild), so the recovered VM boots the same guest."""
    boot = images_dir / "instant-boot"
    boot.mkdir(exist_ok=True)
    boot.chmod(0o755)
    for name in ("kernel", "initrd"):
        src = getattr(tiny_guest, name)
        dst = boot / Path(src).name
        if not dst.exists():
            shutil.copyfile(src, dst)
            dst.chmod(0o644)
    name = vm_factory("--kernel", str(boot / Path(tiny_guest.kernel).name),
                      "--initrd", str(boot / Path(tiny_guest.initrd).name))
    started = run_cli("vm", "start", name, "--wait-agent", str(int(BOOT_BOUND_S)))
    assert started.code == 0, started.stderr
    return name


def test_instant_recovery_boots_before_the_copy_ends(source_vm: str, host: Host,
                                                     repo_dir: Path, images_dir: Path
                                                     ) -> None:
    vm = source_vm
    write_random(vm, 0, 16)
    backup(vm, repo_dir, "--full")
    write_random(vm, 20, 8)
    expected = disk_hash(vm)
    regions = {(8, 4): _region(vm, 8, 4), (20, 8): _region(vm, 20, 8)}
    point = str(backup(vm, repo_dir, "--incremental")["id"])
    before = _repo_state(repo_dir)
    new = f"{SESSION_PREFIX}inst"

    with _recovered(host, new):
        follower = _kvmops("backup", "restore", vm, "--repo", str(repo_dir), "--at", point,
                           "--instant", "--new-vm", new, "--images-dir", str(images_dir),
                           "--bandwidth", SLOW)
        try:
            _wait_agent(host, new, follower)
            job = _pull_job(host, new)
            assert job.get("type") == libvirt.VIR_DOMAIN_BLOCK_JOB_TYPE_PULL, job
            assert job["cur"] < job["end"], job  # the agent answered before the pull ended
            # The guest reads the point's data (full and incremental) while the pull runs.
            for (skip, count), digest in regions.items():
                assert _region(new, skip, count) == digest, (skip, count)
            assert guest_sh(new, "echo ok").strip() == "ok"
            listed = _instant_list()[new]
            assert listed["record"]["state"] == "pulling", listed
            assert listed["record"]["backup_id"] == point
            assert float(str(listed["percent"])) < 100.0, listed
            assert _pull_job(host, new), "the pull ended while the guest was checked"

            # Cancel: the pull stops, the VM keeps running on the overlay.
            cancelled = run_cli("backup", "instant", "cancel", new)
            assert cancelled.code == 0, cancelled.stderr
            assert follower.wait(timeout=60) == 130, follower.communicate()
            assert not _pull_job(host, new)
            assert host.lookup(new).is_active()
            assert _instant_list()[new]["record"]["state"] == "cancelled"

            # Resume restarts the pull; kill -9 of the following kvmops: QEMU goes on.
            follower = _kvmops("backup", "instant", "resume", new, "--bandwidth", SLOW)
            deadline = time.monotonic() + 60
            while not _pull_job(host, new):
                assert follower.poll() is None, follower.communicate()
                assert time.monotonic() < deadline, "resume did not start a pull"
                time.sleep(0.2)
            follower.send_signal(signal.SIGKILL)
            follower.wait(timeout=30)
            assert _pull_job(host, new), "the pull stopped with the kvmops that followed it"
        finally:
            if follower.poll() is None:
                follower.kill()
            follower.communicate()

        # A new kvmops re-attaches (lifting the rate limit) and sees it complete.
        resumed = run_cli("backup", "instant", "resume", new, "--bandwidth", "0", "--json")
        assert resumed.code == 0, resumed.stderr
        status = json.loads(resumed.stdout)
        assert status["record"]["state"] == "completed", status
        assert status["percent"] == 100.0
        assert not _pull_job(host, new)
        assert disk_hash(new) == expected  # the guest still sees the same disk
        assert _instant_list()[new]["record"]["state"] == "completed"

        overlay = Path(status["record"]["disks"][0]["overlay"])
        top = Path(status["record"]["disks"][0]["chain"][0])
        live = host.domain(new).XMLDesc(0)
        assert str(top) not in live and str(top) not in host.domain(new).XMLDesc(
            libvirt.VIR_DOMAIN_XML_INACTIVE)
        host.domain(new).destroy()
        info = json.loads(subprocess.run(
            ["qemu-img", "info", "-f", "qcow2", "--output=json", str(overlay)],
            capture_output=True, text=True, check=True).stdout)
        assert "backing-filename" not in info and "full-backing-filename" not in info, info
        compare = subprocess.run(["qemu-img", "compare", "-f", "qcow2", "-F", "qcow2",
                                  str(overlay), str(top)], capture_output=True, text=True)
        assert compare.returncode == 0, compare.stdout + compare.stderr

    assert _repo_state(repo_dir) == before  # never written, chowned or labelled


def test_instant_recovery_from_an_encrypted_repository(source_vm: str, host: Host,
                                                       repo_dir: Path, images_dir: Path,
                                                       tmp_path: Path) -> None:
    """The chain is opened (authenticated, decrypted) next to the images for QEMU, only
    with the key, and removed when the copy ends."""
    vm = source_vm
    key = tmp_path / "repo.key"
    write_random(vm, 30, 16)  # at SLOW the pull outlasts a boot under load
    expected = disk_hash(vm)
    point = str(backup(vm, repo_dir, "--full", "--encrypt", "--key-file", str(key))["id"])
    new = f"{SESSION_PREFIX}instx"
    work = images_dir / f".{new}-backup"
    args = ("backup", "restore", vm, "--repo", str(repo_dir), "--at", point, "--instant",
            "--new-vm", new, "--images-dir", str(images_dir))

    with _recovered(host, new):
        refused = run_cli(*args)
        assert refused.code != 0 and "Traceback" not in refused.stderr, refused.stderr
        assert not host.has_domain(new) and not work.exists()
        assert not (images_dir / f"{new}-vda.qcow2").exists()

        started = run_cli(*args, "--key-file", str(key), "--detach", "--bandwidth", SLOW)
        assert started.code == 0, started.stderr
        assert work.is_dir()
        _wait_agent(host, new)
        job = _pull_job(host, new)
        assert job.get("type") == libvirt.VIR_DOMAIN_BLOCK_JOB_TYPE_PULL, job
        assert _region(new, 30, 4) == _region(vm, 30, 4)

        # Nobody follows the detached pull: a starting `kvmops serve` takes it up (a job
        # following it to its end), here with the rate limit lifted under it.
        server = start_server(f"sqlite:///{tmp_path / 'serve.db'}", tmp_path)
        try:
            host.domain(new).blockJobSetSpeed("vda", 0, 0)
            deadline = time.monotonic() + BOOT_BOUND_S
            while _instant_list()[new]["record"]["state"] != "completed":
                assert time.monotonic() < deadline, _instant_list()[new]
                time.sleep(1)
        finally:
            server.stop()
        assert "Traceback" not in server.log.read_text(), server.log.read_text()
        with contextlib.closing(sqlite3.connect(tmp_path / "serve.db")) as db:
            followed = db.execute("SELECT state, created_by FROM jobs WHERE kind = ? AND "
                                  "target = ?", ("backup.instant", new)).fetchall()
        assert followed == [("succeeded", "kvmops-serve")], followed
        assert not _pull_job(host, new)
        assert not work.exists()  # the opened copies are gone with the copy's end
        assert disk_hash(new) == expected


def test_resume_of_a_stopped_vm_pulls_offline(host: Host, tiny_guest: GuestImage,
                                              repo_dir: Path, images_dir: Path) -> None:
    """QEMU stopped mid-pull (the VM was destroyed): resume copies the rest offline
    (qemu-img rebase on the checked chain) and the definition loses the chain. No guest
    boot is waited for: an offline backup of a disk holding a pattern."""
    name = f"{SESSION_PREFIX}ioff"
    image = images_dir / f"{name}-vda.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(image), "64M"], check=True)
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", "write -P 0x3c 2M 12M", str(image)],
                   check=True, capture_output=True)
    new = f"{SESSION_PREFIX}ioff-new"
    try:
        made = run_cli("vm", "create", name, "--memory", "256M", "--vcpus", "1", "--kernel",
                       str(tiny_guest.kernel), "--initrd", str(tiny_guest.initrd),
                       "--cmdline", "console=ttyS0", "--disk", f"path={image},format=qcow2")
        assert made.code == 0, made.stderr
        vm = name
        backup(vm, repo_dir, "--full")
        before = _repo_state(repo_dir)
        with _recovered(host, new):
            started = run_cli("backup", "restore", vm, "--repo", str(repo_dir), "--instant",
                              "--new-vm", new, "--images-dir", str(images_dir), "--detach",
                              "--bandwidth", SLOW)
            assert started.code == 0, started.stderr
            assert _pull_job(host, new)
            host.domain(new).destroy()  # QEMU and its pull are gone
            listed = _instant_list()[new]
            assert listed["record"]["state"] == "pulling" and not listed["vm_running"]

            resumed = run_cli("backup", "instant", "resume", new, "--json")
            assert resumed.code == 0, resumed.stderr
            assert "offline" in resumed.stderr
            assert json.loads(resumed.stdout)["record"]["state"] == "completed"
            overlay = images_dir / f"{new}-vda.qcow2"
            info = json.loads(subprocess.run(
                ["qemu-img", "info", "-f", "qcow2", "--output=json", str(overlay)],
                capture_output=True, text=True, check=True).stdout)
            assert "backing-filename" not in info, info
            config = host.domain(new).XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
            assert str(repo_dir) not in config
            compare = subprocess.run(["qemu-img", "compare", "-f", "qcow2", "-F", "qcow2",
                                      str(overlay), str(image)], capture_output=True,
                                     text=True)
            assert compare.returncode == 0, compare.stdout + compare.stderr
        assert _repo_state(repo_dir) == before
    finally:
        remove_vm(host, name)
        image.unlink(missing_ok=True)
