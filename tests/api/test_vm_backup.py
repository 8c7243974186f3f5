"""A VM's life through the API only: create from the tiny guest, disks, snapshot,
start, guest ops, QMP, full + incremental backup, restore, verify, prune,
shutdown through the agent, delete."""

from __future__ import annotations

import base64
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from kvmops.devguest.build import GuestImage
from kvmops.host.connection import Host
from tests.conftest import SESSION_PREFIX
from tests.integration.api_server import ApiServer, wait_job
from tests.integration.conftest import remove_vm


@pytest.fixture(scope="module")
def vm_names(host: Host) -> Iterator[list[str]]:
    """Names of VMs the API creates here; removed at the end even on failure."""
    names: list[str] = []
    yield names
    for name in names:
        remove_vm(host, name)


def _ok(response: httpx.Response, status: int = 200) -> dict[str, object]:
    assert response.status_code == status, response.text
    body = response.json()
    assert isinstance(body, dict)
    return body


def _job(client: httpx.Client, response: httpx.Response) -> dict[str, object]:
    started = _ok(response, 202)
    job = wait_job(client, str(started["job_id"]))
    assert job["state"] == "succeeded", job
    return job


def _wait_agent(client: httpx.Client, name: str) -> None:
    deadline = time.monotonic() + 180
    while client.get(f"/vms/{name}/guest/ping").status_code != 200:
        assert time.monotonic() < deadline, "guest agent never answered"
        time.sleep(1)


def _exec(client: httpx.Client, name: str, *argv: str) -> dict[str, object]:
    result = _ok(client.post(f"/vms/{name}/guest/exec", json={"argv": list(argv)}))
    assert result["exit_code"] == 0, result
    return result


def test_vm_life_cycle_and_backups(api: ApiServer, tiny_guest: GuestImage, images_dir: Path,
                                   repo_dir: Path, vm_names: list[str]) -> None:
    name = f"{SESSION_PREFIX}api-1"
    data = images_dir / f"{name}-data.raw"  # ext4 the guest mounts at /data (freezable)
    shutil.copyfile(tiny_guest.data_disk, data)
    vm_names.append(name)
    operator = api.client("operator")
    admin = api.client("admin")
    with operator, admin:
        # -- create with a new disk: a job
        job = _job(operator, operator.post("/vms", json={
            "name": name, "memory": "256M", "vcpus": 1, "kernel": str(tiny_guest.kernel),
            "initrd": str(tiny_guest.initrd), "cmdline": "console=ttyS0",
            "disks": [{"size": "64M"}, {"path": str(data), "format": "raw"}],
            "images_dir": str(images_dir)}))
        assert job["kind"] == "vm.create"
        listed = {vm["name"]: vm for vm in operator.get("/vms").json()}
        assert listed[name]["state"] == "shut off"
        assert "<domain" in operator.get(f"/vms/{name}/xml").text
        assert _ok(operator.put(f"/vms/{name}/autostart", json={"enabled": False}))

        # -- disks (definition only while shut off), snapshot of the shut-off VM
        spec = httpx.get(api.url + "/openapi.json").json()["paths"]
        assert "/api/v1/vms/{name}/disks" in spec and "/api/v1/vms/{name}/snapshots" in spec
        added = _ok(operator.post(f"/vms/{name}/disks", json={
            "size": "16M", "images_dir": str(images_dir)}), 201)
        targets = [d["target"] for d in operator.get(f"/vms/{name}/disks").json()]
        assert added["target"] in targets
        _ok(operator.delete(f"/vms/{name}/disks/{added['target']}",
                            params={"remove_storage": True}))
        assert added["target"] not in [d["target"]
                                       for d in operator.get(f"/vms/{name}/disks").json()]
        _job(operator, operator.post(f"/vms/{name}/snapshots", json={"name": "s1"}))
        assert [s["name"] for s in operator.get(f"/vms/{name}/snapshots").json()] == ["s1"]
        assert _ok(operator.get(f"/vms/{name}/snapshots/s1"))["name"] == "s1"
        _ok(operator.post(f"/vms/{name}/snapshots/s1/revert", json={}))
        _job(operator, operator.delete(f"/vms/{name}/snapshots/s1"))
        assert operator.get(f"/vms/{name}/snapshots").json() == []

        # -- start paused, resume, wait for the agent
        _ok(operator.post(f"/vms/{name}/start", json={"paused": True}))
        assert _ok(operator.get(f"/vms/{name}"))["state"] == "paused"
        _ok(operator.post(f"/vms/{name}/resume"))
        _wait_agent(operator, name)

        # -- guest operations
        out = _exec(operator, name, "/bin/sh", "-c", "echo hello")
        assert out["stdout"] == "hello\n"
        payload = b"kvmops api \x00\x01 bytes"
        _ok(operator.post(f"/vms/{name}/guest/push", json={
            "path": "/tmp/api.bin", "content_b64": base64.b64encode(payload).decode()}))
        pulled = _ok(operator.post(f"/vms/{name}/guest/pull", json={"path": "/tmp/api.bin"}))
        assert base64.b64decode(str(pulled["content_b64"])) == payload
        assert _ok(operator.get(f"/vms/{name}/guest/fsfreeze"))["status"] == "thawed"
        assert _ok(operator.post(f"/vms/{name}/guest/fsfreeze", json={}))["frozen"] == 1
        assert _ok(operator.get(f"/vms/{name}/guest/fsfreeze"))["status"] == "frozen"
        _ok(operator.post(f"/vms/{name}/guest/fsthaw"))
        assert _ok(operator.get(f"/vms/{name}/guest/fsfreeze"))["status"] == "thawed"
        # -- agent queries, SSH keys, password (read back in the guest)
        _ok(operator.get(f"/vms/{name}/guest/ping"))
        assert "guest-exec" in str(_ok(operator.get(f"/vms/{name}/guest/info")))
        assert any(i.get("name") == "lo"
                   for i in operator.get(f"/vms/{name}/guest/interfaces").json())
        key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKvmopsApiTestKeyOnlyForTests api@test"
        _ok(operator.post(f"/vms/{name}/guest/ssh-keys", json={"user": "tester", "keys": [key]}))
        _ok(operator.post(f"/vms/{name}/guest/ssh-keys", json={"user": "tester", "keys": [key]}))
        listed_keys = _ok(operator.get(f"/vms/{name}/guest/ssh-keys",
                                       params={"user": "tester"}))
        assert str(listed_keys).count("api@test") == 1
        _ok(operator.post(f"/vms/{name}/guest/ssh-keys/remove",
                          json={"user": "tester", "keys": [key]}))
        assert "api@test" not in str(operator.get(f"/vms/{name}/guest/ssh-keys",
                                                  params={"user": "tester"}).json())
        shadow_before = _exec(operator, name, "/bin/sh", "-c", "grep ^tester: /etc/shadow")
        _ok(operator.post(f"/vms/{name}/guest/password",
                          json={"user": "tester", "password": "s3cret-api"}))
        shadow_after = _exec(operator, name, "/bin/sh", "-c", "grep ^tester: /etc/shadow")
        assert shadow_after["stdout"] != shadow_before["stdout"]
        assert shadow_after["stdout"].split(":")[1].startswith("$")
        assert "return" in _ok(admin.post(f"/vms/{name}/qmp", json={"execute": "query-status"}))
        assert "running" in str(_ok(admin.post(f"/vms/{name}/hmp",
                                               json={"command": "info status"}))["output"])
        _ok(operator.post(f"/vms/{name}/suspend"))
        _ok(operator.post(f"/vms/{name}/resume"))

        # -- full backup, data change, incremental backup
        repo = str(repo_dir)
        full = _job(operator, operator.post(f"/vms/{name}/backups",
                                            json={"repo": repo, "mode": "full"}))
        assert full["result"]["type"] == "full"  # type: ignore[index]
        _exec(operator, name, "/bin/sh", "-c",
              "dd if=/dev/urandom of=/dev/vda bs=64k count=8 seek=16 conv=fsync 2>/dev/null")
        incr = _job(operator, operator.post(f"/vms/{name}/backups", json={"repo": repo}))
        assert incr["result"]["type"] == "incremental"  # type: ignore[index]
        listed_backups = operator.get(f"/vms/{name}/backups", params={"repo": repo}).json()
        assert [b["type"] for b in listed_backups] == ["full", "incremental"]
        cancel = operator.post(f"/vms/{name}/backups/cancel")
        assert cancel.status_code == 409 and cancel.json()["kind"] == "StateError"

        # -- restore (flattened images into a directory), verify, prune
        target = images_dir / f"{name}-restored"  # restores go into an image directory
        restored = _job(operator, operator.post(f"/vms/{name}/backups/restore",
                                                json={"repo": repo, "to": str(target)}))
        assert (target / "vda.qcow2").is_file() and (target / "vdb.qcow2").is_file()
        assert restored["result"]["backup_id"] == listed_backups[-1]["id"]  # type: ignore[index]
        verified = _job(operator, operator.post("/backups/verify",
                                                json={"repo": repo, "vm": name}))
        assert verified["result"]["sound"] is True  # type: ignore[index]
        pruned = _job(operator, operator.post(f"/vms/{name}/backups/prune",
                                              json={"repo": repo, "keep_last": 1}))
        assert pruned["result"]["plan"]["remove"] == [listed_backups[0]["id"]]  # type: ignore[index]

        # -- reboot through the agent (the guest comes back), then shut down through it
        boot_id = _exec(operator, name, "/bin/cat", "/proc/sys/kernel/random/boot_id")
        _ok(operator.post(f"/vms/{name}/reboot", json={"mode": "agent"}))
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            time.sleep(2)
            again = operator.post(f"/vms/{name}/guest/exec",
                                  json={"argv": ["/bin/cat", "/proc/sys/kernel/random/boot_id"]})
            if again.status_code == 200 and again.json()["stdout"] != boot_id["stdout"]:
                break
        else:
            raise AssertionError("the guest did not come back after the agent reboot")
        _ok(operator.post(f"/vms/{name}/shutdown", json={"mode": "agent", "timeout": 120}))
        assert _ok(operator.get(f"/vms/{name}"))["state"] == "shut off"
        clone = f"{name}-clone"
        vm_names.append(clone)
        _job(operator, operator.post(f"/vms/{name}/clone",
                                     json={"new_name": clone, "images_dir": str(images_dir)}))
        _ok(operator.post(f"/vms/{clone}/start", json={"paused": True}))
        _ok(operator.post(f"/vms/{clone}/destroy"))
        assert _ok(operator.get(f"/vms/{clone}"))["state"] == "shut off"
        for vm in (clone, name):
            removed = _ok(operator.delete(f"/vms/{vm}", params={"remove_storage": True}))
            assert removed["details"]["removed"]  # type: ignore[index]
            assert operator.get(f"/vms/{vm}").status_code == 404
        audit = {(e["action"], e["target"]) for e in admin.get("/audit?limit=500").json()}
        assert ("create_backup", name) in audit and ("undefine", name) in audit
        assert ("create_vm", name) in audit  # the new VM named, though not in the path
