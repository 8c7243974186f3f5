"""Online backups of a hand-started QEMU over its QMP socket (no libvirt).

One tiny guest for the module, with a second QMP socket the tests use to watch
QEMU while kvmops holds the first. Each test uses its own repository and starts
with a full backup (the bitmaps of one QEMU belong to one repository).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kvmops.devguest.build import GuestImage
from kvmops.errors import KvmopsError, StateError
from kvmops.monitor.socket_channel import SocketMonitorChannel
from kvmops.testing.rawqemu import RawQemu
from kvmops.vm.checkpoints import checkpoint_repo
from tests.conftest import REPO, assert_one_line_error, run_cli
from tests.integration.backup_util import list_backups, restore_hash

NAME = "kvmops-test-qmpvm"


@pytest.fixture(scope="module")
def raw(tiny_guest: GuestImage, images_dir: Path) -> Iterator[RawQemu]:
    vda = images_dir / "kvmops-test-qmp-vda.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(vda), "64M"], check=True)
    qemu = RawQemu(tiny_guest.kernel, tiny_guest.initrd, disks=[vda], extra_qmp=True)
    try:
        qemu.start()
        _wait_for_agent(qemu)
        yield qemu
    finally:
        qemu.stop()
        vda.unlink(missing_ok=True)


def _wait_for_agent(qemu: RawQemu, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while run_cli("guest", "ping", "--socket", str(qemu.agent_socket)).code != 0:
        assert time.monotonic() < deadline, "the guest agent never answered"
        time.sleep(1)


# ---------------------------------------------------------------- helpers
def guest_sh(qemu: RawQemu, script: str) -> str:
    result = run_cli("guest", "exec", "--socket", str(qemu.agent_socket), "--timeout", "120",
                     "--", "/bin/sh", "-c", script)
    assert result.code == 0, (script, result.code, result.stdout, result.stderr)
    return result.stdout


def write_random(qemu: RawQemu, seek_mib: int, count_mib: int) -> str:
    """Write random MiBs into /dev/vda; return the whole disk's sha256 afterwards."""
    out = guest_sh(qemu, f"dd if=/dev/urandom of=/dev/vda bs=1M count={count_mib} "
                         f"seek={seek_mib} conv=fsync 2>/dev/null && sync && sha256sum /dev/vda")
    return out.split()[0]


def qmp_args(qemu: RawQemu, repo: Path, *flags: str) -> list[str]:
    return ["backup", "create", NAME, "--repo", str(repo), "--socket", str(qemu.qmp_socket),
            "--agent-socket", str(qemu.agent_socket), "--json", *flags]


def backup(qemu: RawQemu, repo: Path, *flags: str) -> dict[str, Any]:
    result = run_cli(*qmp_args(qemu, repo, *flags))
    assert result.code == 0, result.stderr
    data = json.loads(result.stdout)
    assert isinstance(data, dict)
    return data


def watch(qemu: RawQemu) -> SocketMonitorChannel:
    """The second monitor: usable while kvmops holds the first."""
    return SocketMonitorChannel(qemu.events_socket)


def bitmaps(qemu: RawQemu, node: str = "disk0", of: dict[str, object] | None = None
            ) -> set[str]:
    """The named bitmaps of a node; with ``of`` (a backup) only its repository's: the
    QEMU is shared by this module's tests, each with a repository of its own, and a
    repository never touches another's bitmaps."""
    with watch(qemu) as channel:
        nodes = channel.execute("query-named-block-nodes", {"flat": True})
    found = [n for n in nodes if n.get("node-name") == node]
    # A running incremental adds an anonymous bitmap (its parent bitmap's successor).
    names = {str(b["name"]) for b in found[0].get("dirty-bitmaps", []) if b.get("name")
             } if found else set()
    if of is not None:
        repo_id = checkpoint_repo(str(of["checkpoint"]))
        names = {n for n in names if checkpoint_repo(n) == repo_id}
    return names


def leftovers(qemu: RawQemu, repo: Path) -> dict[str, object]:
    """What a backup may leave in QEMU and in the repository."""
    with watch(qemu) as channel:
        qemu_jobs = [j["id"] for j in channel.execute("query-jobs")]
        nodes = [n["node-name"] for n in channel.execute("query-named-block-nodes",
                                                         {"flat": True})]
    partials = sorted(p.name for p in (repo / NAME / "backups").glob(".partial-*"))
    return {"jobs": qemu_jobs, "targets": [n for n in nodes if n.startswith("kvmops-target")],
            "partials": partials}


def start_slow_backup(qemu: RawQemu, repo: Path) -> subprocess.Popen[str]:
    """A kvmops incremental at 1 MiB/s, returned once its job copies."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "kvmops.cli.main", *qmp_args(qemu, repo, "--incremental",
                                                            "--speed", "1")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
        env={**os.environ, "COLUMNS": "200"})
    deadline = time.monotonic() + 120
    while True:
        assert proc.poll() is None, proc.communicate()
        try:
            with watch(qemu) as channel:
                running = [j for j in channel.execute("query-jobs")
                           if j["id"] == "kvmops-backup-vda" and j["status"] == "running"
                           and j["current-progress"] > 0]
        except KvmopsError:
            running = []
        if running:
            return proc
        if time.monotonic() > deadline:
            proc.kill()
            proc.communicate()
            pytest.fail("the slow backup never started copying")
        time.sleep(0.2)


# ---------------------------------------------------------------- tests
def test_round_trip_every_point_restores(raw: RawQemu, repo_dir: Path, tmp_path: Path) -> None:
    expected: dict[str, str] = {}
    full = backup(raw, repo_dir, "--full")
    assert full["type"] == "full" and full["transport"] == "qmp"
    # the guest mounts nothing it could freeze: honest, not "application"
    assert full["consistency"] == "crash"
    assert any("froze no file system" in n for n in full["notes"]), full["notes"]
    assert [d["target"] for d in full["disks"]] == ["vda"]
    expected[full["id"]] = guest_sh(raw, "sha256sum /dev/vda").split()[0]

    digest = write_random(raw, 2, 4)
    inc1 = backup(raw, repo_dir, "--incremental")
    assert inc1["type"] == "incremental" and inc1["parent"] == full["id"], inc1["notes"]
    expected[inc1["id"]] = digest

    digest = write_random(raw, 20, 3)
    diff = backup(raw, repo_dir, "--differential")
    assert diff["type"] == "differential" and diff["parent"] == full["id"], diff["notes"]
    expected[diff["id"]] = digest

    digest = write_random(raw, 40, 1)
    inc2 = backup(raw, repo_dir, "--incremental")
    assert inc2["type"] == "incremental" and inc2["parent"] == diff["id"], inc2["notes"]
    expected[inc2["id"]] = digest

    # Incrementals hold about what changed, not the disk.
    inc_bytes = sum(d["bytes_written"] for d in inc1["disks"])
    assert 4 << 20 <= inc_bytes <= 2 * (4 << 20) + (2 << 20)
    # QEMU keeps only the bitmaps future backups need: the newest and the newest full's.
    assert bitmaps(raw, of=full) == {str(inc2['checkpoint']), str(full['checkpoint'])}

    listed = list_backups(NAME, repo_dir)
    assert [b["id"] for b in listed] == list(expected)
    assert all(b["transport"] == "qmp" and b["complete"] for b in listed)
    for index, (backup_id, want) in enumerate(expected.items()):
        assert restore_hash(NAME, repo_dir, backup_id, tmp_path / f"r{index}") == want

    result = run_cli("backup", "verify", "--repo", str(repo_dir), NAME)
    assert result.code == 0, result.stderr
    assert leftovers(raw, repo_dir) == {"jobs": [], "targets": [], "partials": []}


def test_interrupted_and_killed_backups_leave_nothing(raw: RawQemu, repo_dir: Path,
                                                      tmp_path: Path) -> None:
    full = backup(raw, repo_dir, "--full")
    write_random(raw, 4, 40)

    # SIGTERM: the run cleans up after itself and exits with one error line.
    proc = start_slow_backup(raw, repo_dir)
    # Meanwhile a second backup into the same repository is refused at once.
    second = run_cli(*qmp_args(raw, repo_dir, "--incremental"))
    assert_one_line_error(second, StateError.exit_code, "lock")
    proc.send_signal(signal.SIGTERM)
    _out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("kvmops: error: "), err
    assert leftovers(raw, repo_dir) == {"jobs": [], "targets": [], "partials": []}
    assert bitmaps(raw, of=full) == {str(full['checkpoint'])}
    assert guest_sh(raw, "echo thawed") == "thawed\n"

    # SIGKILL: job, target node, bitmap and partial stay behind until the next run.
    proc = start_slow_backup(raw, repo_dir)
    proc.kill()
    proc.communicate(timeout=60)
    left = leftovers(raw, repo_dir)
    assert left["jobs"] == ["kvmops-backup-vda"] and left["targets"] == ["kvmops-target-vda"]
    assert len(left["partials"]) == 1  # type: ignore[arg-type]
    assert len(bitmaps(raw, of=full)) == 2
    assert [b["id"] for b in list_backups(NAME, repo_dir)] == [full["id"]]

    digest = write_random(raw, 50, 2)
    after = backup(raw, repo_dir, "--incremental")
    assert after["type"] == "incremental" and after["parent"] == full["id"], after["notes"]
    assert any("unfinished backup" in n for n in after["notes"]), after["notes"]
    assert leftovers(raw, repo_dir) == {"jobs": [], "targets": [], "partials": []}
    assert bitmaps(raw, of=full) == {str(full['checkpoint']), str(after['checkpoint'])}
    assert restore_hash(NAME, repo_dir, after["id"], tmp_path / "r") == digest


def test_missing_parent_bitmap_forces_full_with_note(raw: RawQemu, repo_dir: Path,
                                                     tmp_path: Path) -> None:
    full = backup(raw, repo_dir, "--full")
    remove = json.dumps({"execute": "block-dirty-bitmap-remove",
                         "arguments": {"node": "disk0", "name": str(full['checkpoint'])}})
    result = run_cli("qmp", "--socket", str(raw.qmp_socket), remove)
    assert result.code == 0, result.stderr
    digest = write_random(raw, 10, 2)
    after = backup(raw, repo_dir, "--incremental")
    assert after["type"] == "full" and after["parent"] is None
    assert any("cannot be trusted" in n and "not found" in n for n in after["notes"]), \
        after["notes"]
    assert restore_hash(NAME, repo_dir, after["id"], tmp_path / "r") == digest
    # The chain goes on from the new full.
    digest = write_random(raw, 30, 1)
    nxt = backup(raw, repo_dir)
    assert nxt["type"] == "incremental" and nxt["parent"] == after["id"], nxt["notes"]
    assert restore_hash(NAME, repo_dir, nxt["id"], tmp_path / "r2") == digest


def test_bad_socket_and_disk_are_one_line_errors(raw: RawQemu, repo_dir: Path,
                                                 tmp_path: Path) -> None:
    result = run_cli("backup", "create", NAME, "--repo", str(repo_dir),
                     "--socket", str(tmp_path / "nothing.sock"))
    assert_one_line_error(result, 11, "nothing.sock")
    result = run_cli(*qmp_args(raw, repo_dir, "--disk", "vdq"))
    assert_one_line_error(result, 2, "vdq")
    result = run_cli(*qmp_args(raw, repo_dir, "--disk", "nonode=vdb"))
    assert_one_line_error(result, 2, "nonode")


def _job_status(qemu: RawQemu) -> str:
    with watch(qemu) as channel:
        found = [j for j in channel.execute("query-jobs") if j["id"] == "kvmops-backup-vda"]
    return str(found[0]["status"]) if found else "gone"


def _wait_status(qemu: RawQemu, wanted: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while _job_status(qemu) != wanted:
        assert time.monotonic() < deadline, f"job never became {wanted}: {_job_status(qemu)}"
        time.sleep(0.3)


def test_pause_and_resume_running_backup(raw: RawQemu, repo_dir: Path) -> None:
    backup(raw, repo_dir, "--full")
    write_random(raw, 4, 20)
    proc = start_slow_backup(raw, repo_dir)
    try:
        result = run_cli("backup", "pause", NAME)
        assert result.code == 0, result.stderr
        _wait_status(raw, "paused")
        listed = json.loads(run_cli("backup", "jobs", "--json").stdout)
        assert any(j["vm"] == NAME and j["state"] == "paused" and j["transport"] == "qmp"
                   for j in listed), listed
        assert run_cli("backup", "resume", NAME).code == 0
        _wait_status(raw, "running")
    finally:
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=120)
    recorded = json.loads(run_cli("backup", "events", NAME, "--json").stdout)
    events = [e["event"] for e in recorded]
    assert events[-3:] == ["paused", "resumed", "cancelled"], (recorded[-1], err)
    assert leftovers(raw, repo_dir) == {"jobs": [], "targets": [], "partials": []}


def test_pause_without_running_backup_is_refused() -> None:
    result = run_cli("backup", "pause", "kvmops-test-nothing-running")
    assert_one_line_error(result, StateError.exit_code, "no backup")
