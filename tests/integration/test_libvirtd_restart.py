"""libvirtd restarted under kvmops (the usual remedy when virsh hangs): a backup in
progress ends in one line and leaves nothing the next backup cannot clean up; a running
``kvmops serve`` reconnects by itself, events included."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from kvmops.errors import HostUnavailableError
from kvmops.host.connection import Host
from tests.conftest import run_cli
from tests.integration.api_server import ApiServer, add_users, start_server
from tests.integration.backup_util import backup, list_backups, restore_hash, write_random
from tests.integration.conftest import reconnect_session_hosts
from tests.integration.test_backup_libvirt import (
    _big_vm,
    _lift_read_throttle,
    _slow_backup,
    _wait_partial,
)

# libvirtd restarts under every other test of the host: make test runs these alone.
pytestmark = pytest.mark.serial


def restart_libvirtd(host: Host) -> None:
    """Stop libvirtd, start it again, and reconnect the session's connection. Only the
    machine's libvirtd (in this process's network namespace): a namespaced test libvirtd
    (tests/integration/nshost.py) keeps running."""
    ours = ["-x", "libvirtd", "--ns", str(os.getpid()), "--nslist", "net"]
    subprocess.run(["pkill", *ours], check=False)
    deadline = time.monotonic() + 60
    while subprocess.run(["pgrep", *ours], capture_output=True).returncode == 0:
        assert time.monotonic() < deadline, "libvirtd did not stop"
        time.sleep(0.2)
    subprocess.run(["libvirtd", "-d"], check=True)
    while subprocess.run(["virsh", "-c", "qemu:///system", "version"],
                         capture_output=True).returncode != 0:
        assert time.monotonic() < deadline, "libvirtd did not come back"
        time.sleep(0.2)
    reconnect_session_hosts()
    assert host.alive()


def test_a_backup_survives_libvirtd_restarting_in_one_line(
        vm_factory: Callable[..., str], repo_dir: Path, images_dir: Path, tmp_path: Path,
        host: Host) -> None:
    vm = _big_vm(vm_factory, images_dir)
    first = backup(vm, repo_dir, "--full")
    proc = _slow_backup(vm, repo_dir, host)
    try:
        _wait_partial(repo_dir, vm, proc, host)
        restart_libvirtd(host)
        _out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
        _lift_read_throttle(vm)
    lines = [line for line in err.splitlines() if line.startswith("kvmops: error:")]
    assert proc.returncode == HostUnavailableError.exit_code, err
    assert len(lines) == 1 and "lost the connection to libvirtd" in lines[0], err
    assert "Traceback" not in err and "internal error" not in err
    assert [b["id"] for b in list_backups(vm, repo_dir)] == [first["id"]]
    assert not list((repo_dir / vm / "backups").glob(".partial-*"))
    # the next backup cleans up what was left and holds every change since the first
    digest = write_random(vm, 0, 4)
    after = backup(vm, repo_dir)
    assert after["type"] == "incremental" and after["parent"] == first["id"], after["notes"]
    assert restore_hash(vm, repo_dir, str(after["id"]), tmp_path / "r") == digest
    assert run_cli("backup", "verify", "--repo", str(repo_dir), vm).code == 0


def _log_tail(server: ApiServer) -> str:
    lines = [ln for ln in server.log.read_text().splitlines() if " 200 " not in ln]
    return "\n".join(lines[-30:])


@pytest.fixture
def server(images_dir: Path) -> Iterator[ApiServer]:
    workdir = Path(tempfile.mkdtemp(prefix="kvmops-restart-"))
    srv = start_server(f"sqlite:///{workdir}/r.db", workdir, "--allow-dir", str(images_dir))
    try:
        add_users(srv)
        yield srv
    finally:
        srv.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def test_the_server_reconnects_after_a_libvirtd_restart(
        server: ApiServer, vm_factory: Callable[..., str], host: Host) -> None:
    """The event stream says when libvirt went away and came back; requests and life
    cycle events work again without restarting the server."""
    vm = vm_factory()
    headers = {"Authorization": f"Bearer {server.tokens['operator']}"}
    with server.client("operator") as client, httpx.stream(
            "GET", f"{server.url}/api/v1/events", headers=headers, timeout=120) as stream:
        lines = stream.iter_lines()
        next(lines)  # "retry" and "connected"
        restart_libvirtd(host)
        seen: list[str] = []

        def wait_for(fragment: str) -> None:
            for line in lines:
                seen.append(line)
                if fragment in line:
                    return
            raise AssertionError((fragment, seen, _log_tail(server)))

        wait_for('"event": "libvirt-disconnected"')
        wait_for('"event": "libvirt-reconnected"')
        listed = client.get("/vms")
        if listed.status_code == 503:  # at most the first request after the restart
            listed = client.get("/vms")
        assert listed.status_code == 200, listed.text
        assert any(v["name"] == vm for v in listed.json())
        assert client.post(f"/vms/{vm}/start", json={}).status_code == 200
        wait_for(f'"vm": "{vm}", "event": "started"')
