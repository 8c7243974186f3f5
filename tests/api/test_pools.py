"""Storage pools over the API: a viewer reads, an operator manages volumes and starts,
stops and refreshes pools, only an admin creates and deletes pools; the path policy and
bad input are one-line 4xx; changes and refusals are in the audit log."""

from __future__ import annotations

import contextlib
import os
import pwd
from collections.abc import Iterator
from pathlib import Path

import pytest

from kvmops.devguest.build import GuestImage
from kvmops.host import pools as host_pools
from kvmops.host.connection import Host
from tests.conftest import SESSION_PREFIX, run_cli
from tests.integration.api_server import ApiServer, wait_job
from tests.integration.conftest import remove_vm

NAME = f"{SESSION_PREFIX}apipool"


@pytest.fixture
def pool_name(host: Host) -> Iterator[str]:
    yield NAME
    with contextlib.suppress(Exception):
        host_pools.stop(host, NAME)
    with contextlib.suppress(Exception):
        host_pools.undefine(host, NAME)


def test_pool_and_volume_life_cycle_with_role_checks(api: ApiServer, pool_name: str,
                                                     images_dir: Path) -> None:
    target = images_dir / f"{pool_name}-dir"
    body = {"name": pool_name, "type": "dir", "target": str(target), "build": True}
    with api.client("viewer") as viewer, api.client("operator") as operator, \
            api.client("admin") as admin:
        assert viewer.get("/pools").status_code == 200
        assert viewer.post("/pools", json=body).status_code == 403
        assert operator.post("/pools", json=body).status_code == 403  # admin's
        created = admin.post("/pools", json=body)
        assert created.status_code == 201, created.text
        assert (created.json()["type"], created.json()["active"]) == ("dir", True)
        listed = {p["name"]: p for p in viewer.get("/pools").json()}
        assert listed[pool_name]["target"] == str(target)
        assert admin.post("/pools", json=body).status_code == 409

        vol = {"name": "a.qcow2", "size": "16M", "format": "qcow2"}
        assert viewer.post(f"/pools/{pool_name}/volumes", json=vol).status_code == 403
        made = operator.post(f"/pools/{pool_name}/volumes", json=vol)
        assert made.status_code == 201, made.text
        assert (made.json()["format"], made.json()["capacity"]) == ("qcow2", 16 << 20)
        assert (target / "a.qcow2").is_file()
        cloned = operator.post(f"/pools/{pool_name}/volumes/a.qcow2/clone",
                               json={"name": "b.raw", "format": "raw"})
        assert cloned.status_code == 201, cloned.text
        resized = operator.post(f"/pools/{pool_name}/volumes/b.raw/resize",
                                json={"size": "32M"})
        assert resized.status_code == 200 and resized.json()["capacity"] == 32 << 20
        shrink = operator.post(f"/pools/{pool_name}/volumes/b.raw/resize",
                               json={"size": "8M"})
        assert shrink.status_code == 422 and "--shrink" in shrink.text
        names = [v["name"] for v in viewer.get(f"/pools/{pool_name}/volumes").json()]
        assert names == ["a.qcow2", "b.raw"]
        assert viewer.get(f"/pools/{pool_name}/volumes/b.raw").json()["format"] == "raw"
        no_format = operator.post(f"/pools/{pool_name}/volumes",
                                  json={"name": "c", "size": "8M"})
        assert no_format.status_code == 422  # the format is always named
        assert viewer.delete(f"/pools/{pool_name}/volumes/b.raw").status_code == 403
        assert operator.delete(f"/pools/{pool_name}/volumes/b.raw").status_code == 200

        refreshed = operator.post(f"/pools/{pool_name}/refresh")
        assert refreshed.status_code == 200 and refreshed.json()["volumes"] == 1
        assert viewer.post(f"/pools/{pool_name}/stop").status_code == 403
        assert operator.post(f"/pools/{pool_name}/stop").json()["active"] is False
        assert operator.post(f"/pools/{pool_name}/start").json()["active"] is True
        assert operator.delete(f"/pools/{pool_name}").status_code == 403
        assert admin.delete(f"/pools/{pool_name}").status_code == 200
        assert viewer.get(f"/pools/{pool_name}").status_code == 404
        entries = admin.get("/audit?limit=300").json()
    actions = {(e["user"], e["action"], e["status_code"]) for e in entries}
    assert ("admin", "create_pool", 201) in actions, actions
    assert ("op", "create_volume", 201) in actions
    assert ("op", "create_pool", 403) in actions
    assert ("admin", "delete_pool", 200) in actions


@pytest.mark.parametrize(("change", "code", "fragment"), [
    ({"target": "/tmp/kvmops-not-allowed"}, 403, "outside the allowed image directories"),
    ({"target": "/var/lib/kvmops/state/pool"}, 403, "state directory"),
    ({"type": "fs", "device": "/etc/hostname"}, 422, "not a block device"),
    ({"host": "127.0.0.1"}, 422, "--host is not for a --type dir pool"),
    ({"type": "tape"}, 422, "type"),
])
def test_bad_pools_are_refused_and_audited(api: ApiServer, pool_name: str,
                                           change: dict[str, str], code: int, fragment: str
                                           ) -> None:
    body = {"name": pool_name, "type": "dir", "target": "/var/lib/kvmops/test-images/x",
            **change}
    with api.client("admin") as admin:
        response = admin.post("/pools", json=body)
        assert response.status_code == code, response.text
        assert fragment in response.text
        assert admin.get(f"/pools/{pool_name}").status_code == 404
        entries = admin.get("/audit?limit=50").json()
    assert ("admin", "create_pool", code) in {(e["user"], e["action"], e["status_code"])
                                              for e in entries}


def test_vm_create_with_a_pool_disk(api: ApiServer, pool_name: str, images_dir: Path,
                                    tiny_guest: GuestImage, host: Host) -> None:
    """``POST /vms`` with ``{"pool": ..., "size": ...}``: a new volume in the pool is the
    VM's disk, the same as ``vm create --disk pool=NAME,size=...``."""
    target = images_dir / f"{pool_name}-vms"
    vm = f"{SESSION_PREFIX}apipoolvm"
    body = {"name": vm, "memory": "256M", "kernel": str(tiny_guest.kernel),
            "initrd": str(tiny_guest.initrd), "cmdline": "console=ttyS0",
            "disks": [{"pool": pool_name, "size": "16M", "format": "raw"}]}
    try:
        with api.client("admin") as admin, api.client("operator") as operator:
            made = admin.post("/pools", json={"name": pool_name, "type": "dir",
                                              "target": str(target), "build": True})
            assert made.status_code == 201, made.text
            bad = operator.post("/vms", json={**body, "disks": [{"pool": pool_name}]})
            assert bad.status_code == 422 and "size" in bad.text, bad.text
            created = operator.post("/vms", json=body)
            assert created.status_code in (201, 202), created.text
            if created.status_code == 202:
                assert wait_job(operator, created.json()["job_id"])["state"] == "succeeded"
            disk = target / f"{vm}-vda.raw"
            info = operator.get(f"/vms/{vm}").json()
            assert [(d["source"], d["format"]) for d in info["disks"]] == [(str(disk), "raw")]
            vols = operator.get(f"/pools/{pool_name}/volumes").json()
            assert [(v["name"], v["used_by"]) for v in vols] == [(disk.name, [vm])]
            refused = admin.delete(f"/pools/{pool_name}")
            assert refused.status_code == 409 and vm in refused.text, refused.text
    finally:
        remove_vm(host, vm)


def test_cli_changes_and_refusals_are_audited(api: ApiServer, pool_name: str,
                                              images_dir: Path) -> None:
    """``kvmops pool``/``volume`` commands write their audit rows (via cli), refusals
    (here the path policy's, exit 21) with their exit codes."""
    env = {"KVMOPS_DB": api.db}
    refused = run_cli("pool", "create", pool_name, "--type", "dir", "--target", "/tmp",
                      env=env)
    assert refused.code == 21, refused.stderr
    target = str(images_dir / f"{pool_name}-cli")
    created = run_cli("pool", "create", pool_name, "--type", "dir", "--target", target,
                      "--build", env=env)
    assert created.code == 0, created.stderr
    made = run_cli("volume", "create", pool_name, "v.raw", "--size", "8M", "--format",
                   "raw", env=env)
    assert made.code == 0, made.stderr
    deleted = run_cli("pool", "delete", pool_name, env=env)
    assert deleted.code == 0, deleted.stderr
    with api.client("admin") as admin:
        rows = admin.get("/audit", params={"limit": 1000}).json()
    mine = [(r["user"], r["action"], r["target"], r["status_code"])
            for r in rows if r["via"] == "cli" and pool_name in (r["target"] or "")]
    user = pwd.getpwuid(os.geteuid()).pw_name
    assert sorted(mine) == sorted([(user, "pool.create", pool_name, 21),
                                   (user, "pool.create", pool_name, 0),
                                   (user, "volume.create", f"{pool_name}/v.raw", 0),
                                   (user, "pool.delete", pool_name, 0)]), mine
