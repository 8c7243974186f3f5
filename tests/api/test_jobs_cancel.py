"""Cancelling a backup job through the API, for real: a long (throttled) backup of a
running VM started with POST /vms/{name}/backups, then POST /jobs/{id}/cancel. The job
ends ``cancelled``; no checkpoint, partial file or manifest is left; the next backup
is a sound full."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from kvmops.devguest.build import GuestImage
from kvmops.host.connection import Host
from tests.conftest import SESSION_PREFIX, run_cli
from tests.integration.api_server import ApiServer, wait_job
from tests.integration.backup_util import image_hash
from tests.integration.conftest import remove_vm
from tests.integration.throttle import lift_read_throttle, throttle_reads, wait_backup_job


@pytest.fixture
def big_vm(tiny_guest: GuestImage, images_dir: Path, host: Host) -> Iterator[tuple[str, str]]:
    """A running VM (not waited for: a backup needs no booted guest) whose vda holds
    64 MiB written on the host; yields its name and the disk's content hash."""
    name = f"{SESSION_PREFIX}api-cancel-{time.monotonic_ns()}"
    image = images_dir / f"{name}.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(image), "64M"], check=True)
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", "write -P 0x6b 0 64M", str(image)],
                   check=True, capture_output=True)
    digest = image_hash(image)
    try:
        created = run_cli(
            "vm", "create", name, "--memory", "256M", "--vcpus", "1",
            "--kernel", str(tiny_guest.kernel), "--initrd", str(tiny_guest.initrd),
            "--cmdline", "console=ttyS0", "--disk", f"path={image},format=qcow2",
            "--no-agent", "--start")
        assert created.code == 0, created.stderr
        yield name, digest
    finally:
        lift_read_throttle(name)
        remove_vm(host, name)


def _accepted(response: httpx.Response) -> str:
    assert response.status_code == 202, response.text
    return str(response.json()["job_id"])


def test_cancel_a_running_backup_job(api: ApiServer, big_vm: tuple[str, str], repo_dir: Path,
                                     host: Host, tmp_path: Path) -> None:
    vm, digest = big_vm
    image = Path(str(host.domain(vm).XMLDesc(0)).split("<source file='", 1)[1].split("'")[0])
    with api.client("operator") as client:
        throttle_reads(host, vm, image, 2 << 20)
        try:
            job_id = _accepted(client.post(f"/vms/{vm}/backups", json={
                "repo": str(repo_dir), "mode": "full", "speed": "1M", "freeze": False}))

            def still_running() -> bool:
                job = client.get(f"/jobs/{job_id}").json()
                assert job["state"] in ("queued", "running"), job  # say why it ended
                return True

            wait_backup_job(host, vm, repo_dir / vm / "backups", still_running)
            running = client.get(f"/jobs/{job_id}").json()
            assert running["state"] == "running" and running["kind"] == "backup.create"
            cancelled = client.post(f"/jobs/{job_id}/cancel")
            assert cancelled.status_code == 200, cancelled.text
            lift_read_throttle(vm)  # the cancelled job's reads in flight drain at once
            job = wait_job(client, job_id, timeout=120)
        finally:
            lift_read_throttle(vm)
        assert job["state"] == "cancelled", job
        assert "cancelled" in str(job["error"]), job

        # Nothing of it is left: no checkpoint, no partial directory, no backup listed.
        assert host.domain(vm).listAllCheckpoints(0) == []
        assert not list((repo_dir / vm / "backups").glob(".partial-*"))
        assert client.get(f"/vms/{vm}/backups", params={"repo": str(repo_dir)}).json() == []
        events = json.loads(run_cli("backup", "events", vm, "--json").stdout)
        assert events[-1]["event"] == "cancelled", events[-1]
        again = client.post(f"/jobs/{job_id}/cancel")  # a finished job stays as it ended
        assert again.status_code == 200 and again.json()["state"] == "cancelled", again.text

        # The next backup is a sound full with exactly its own checkpoint.
        job = wait_job(client, _accepted(client.post(f"/vms/{vm}/backups", json={
            "repo": str(repo_dir), "freeze": False})))
        assert job["state"] == "succeeded", job
        made = job["result"]
        assert made["type"] == "full" and made["consistency"] == "crash", made
        assert any("freezing was turned off" in n for n in made["notes"]), made
        names = [c.getName() for c in host.domain(vm).listAllCheckpoints(0)]
        assert names == [made["checkpoint"]]
    out = tmp_path / "r"
    result = run_cli("backup", "restore", vm, "--repo", str(repo_dir), "--to", str(out))
    assert result.code == 0, result.stderr
    assert image_hash(out / "vda.qcow2") == digest
