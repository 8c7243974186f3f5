"""One product: a backup started with ``kvmops backup create`` is a job the API (and so
the web UI) shows running and then finished, cancellable from there; every
state-changing command is in the audit log with the OS user, via cli."""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import libvirt
import pytest

from kvmops.host.connection import Host
from tests.conftest import SESSION_PREFIX, run_cli
from tests.integration.api_server import ApiServer, add_users, start_server, wait_job
from tests.integration.test_backup_libvirt import (
    _big_vm,
    _lift_read_throttle,
    _throttle_reads,
)

OS_USER = pwd.getpwuid(os.geteuid()).pw_name


@pytest.fixture(scope="module")
def server() -> Iterator[tuple[ApiServer, dict[str, str]]]:
    """A server on its own SQLite state database, and the environment that points
    ``kvmops`` commands at the same database."""
    workdir = Path(tempfile.mkdtemp(prefix=f"{SESSION_PREFIX}cli-jobs-"))
    db = f"sqlite:///{workdir / 'state.db'}"
    api = start_server(db, workdir)
    try:
        add_users(api)
        yield api, {"KVMOPS_DB": db}
    finally:
        api.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def _jobs_of(client: httpx.Client, vm: str) -> list[dict[str, Any]]:
    response = client.get("/jobs", params={"target": vm})
    assert response.status_code == 200, response.text
    jobs: list[dict[str, Any]] = response.json()
    return jobs


def _cli_rows(client: httpx.Client, action: str, target: str) -> list[dict[str, Any]]:
    response = client.get("/audit", params={"limit": 1000})
    assert response.status_code == 200, response.text
    return [r for r in response.json()
            if r["via"] == "cli" and r["action"] == action and r["target"] == target]


def _wait_backup_job_gone(host: Host, vm: str, proc: subprocess.Popen[str],
                          timeout: float = 120) -> None:
    """Until libvirt's backup job of ``vm`` has run and is gone (or the command ended)."""
    domain = host.domain(vm)
    deadline = time.monotonic() + timeout
    seen = False
    while proc.poll() is None and time.monotonic() < deadline:
        with contextlib.suppress(libvirt.libvirtError):
            active = domain.jobStats(0).get("type") != libvirt.VIR_DOMAIN_JOB_NONE
            if active:
                seen = True
            elif seen:
                return
        time.sleep(0.1)


def test_cli_backup_is_a_job_seen_running_then_finished_and_audited(
        server: tuple[ApiServer, dict[str, str]], vm_factory: Callable[..., str],
        images_dir: Path, repo_dir: Path, host: Host) -> None:
    api, env = server
    client = api.client("admin")
    vm = _big_vm(vm_factory, images_dir)
    _throttle_reads(host, vm, 2 << 20)  # about half a minute of copying
    proc = subprocess.Popen(
        [sys.executable, "-m", "kvmops.cli.main", "backup", "create", vm, "--repo",
         str(repo_dir), "--full"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, **env})
    try:
        deadline = time.monotonic() + 120
        running: dict[str, Any] | None = None
        while running is None:
            running = next((j for j in _jobs_of(client, vm) if j["state"] == "running"), None)
            assert proc.poll() is None or running is not None, proc.communicate()
            assert time.monotonic() < deadline, "the CLI backup never showed as a job"
            time.sleep(0.1)
        assert running["kind"] == "backup.create" and running["created_by"] == OS_USER
        # the VM's backup lock names its job
        locks = json.loads(run_cli("backup", "jobs", "--json").stdout)
        assert [lock["job_id"] for lock in locks if lock["vm"] == vm] == [running["id"]]
        # cancelled through the API: the command hears it and cleans up
        cancel = client.post(f"/jobs/{running['id']}/cancel")
        assert cancel.status_code == 200, cancel.text
        assert cancel.json()["cancel_requested"] is True
        # The command hears the cancel at its next progress update and aborts the copy;
        # the reads stay throttled until libvirt's job is gone (lifted before, the copy
        # could finish first), then the cancelled copy's reads in flight drain at once.
        _wait_backup_job_gone(host, vm, proc)
        _lift_read_throttle(vm)
        _out, err = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
        _lift_read_throttle(vm)
    assert proc.returncode == 130, err
    lines = [line for line in err.splitlines() if line.startswith("kvmops: error:")]
    assert len(lines) == 1 and "cancel" in lines[0], err
    cancelled = wait_job(client, running["id"])
    assert cancelled["state"] == "cancelled", cancelled
    assert cancelled["finished_at"] is not None

    # run to the end: the job succeeds with the manifest as its result
    done = run_cli("backup", "create", vm, "--repo", str(repo_dir), "--full", "--json",
                   env=env)
    assert done.code == 0, done.stderr
    manifest_id = done.stdout.split('"id": "', 1)[1].split('"', 1)[0]
    finished = [j for j in _jobs_of(client, vm) if j["id"] != running["id"]]
    assert len(finished) == 1, finished
    assert finished[0]["state"] == "succeeded" and finished[0]["result"]["id"] == manifest_id
    assert finished[0]["progress"]["percent"] == 100.0

    # the same jobs from the command line
    listed = run_cli("job", "list", "--target", vm, "--json", env=env)
    assert listed.code == 0, listed.stderr
    assert [(j["id"], j["state"]) for j in json.loads(listed.stdout)] == [
        (finished[0]["id"], "succeeded"), (running["id"], "cancelled")]
    shown = run_cli("job", "show", running["id"], env=env)
    assert shown.code == 0 and "cancelled" in shown.stdout, shown.stderr

    rows = _cli_rows(client, "backup.create", vm)
    assert [(r["user"], r["result"], r["status_code"], r["job_id"]) for r in rows] == [
        (OS_USER, "ok", 0, finished[0]["id"]),
        (OS_USER, "failed", 130, running["id"])]


def test_cli_actions_are_audited_with_the_os_user(
        server: tuple[ApiServer, dict[str, str]], images_dir: Path) -> None:
    api, env = server
    client = api.client("admin")
    image = images_dir / f"{SESSION_PREFIX}audited-{time.monotonic_ns()}.qcow2"
    try:
        made = run_cli("image", "create", str(image), "--size", "16M", env=env)
        assert made.code == 0, made.stderr
        refused = run_cli("image", "create", str(image), "--size", "16M", env=env)
        assert refused.code != 0
    finally:
        image.unlink(missing_ok=True)
    rows = _cli_rows(client, "image.create", str(image))
    assert [(r["user"], r["result"], r["method"], r["path"]) for r in rows] == [
        (OS_USER, "failed", "CLI", "kvmops image create"),
        (OS_USER, "ok", "CLI", "kvmops image create")]
    assert rows[0]["status_code"] == refused.code
    # the users and tokens made for this server with 'kvmops user' are there too
    assert _cli_rows(client, "user.add", "op") and _cli_rows(client, "user.token", "admin")
    # reading changes nothing and writes no row
    assert run_cli("image", "info", str(images_dir), env=env).code != 0
    assert not _cli_rows(client, "image.info", str(images_dir))
