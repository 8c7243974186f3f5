"""Storage pools over the API: a viewer reads, an operator manages volumes and starts,
stops and refreshes pools, only an admin creates and deletes pools; the path policy and
bad input are one-line 4xx; changes and refusals are in the audit log."""

from __future__ import annotations

import contextlib
import os
import pwd
import socket
import subprocess
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
MIB = 1024 * 1024


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
    made = run_cli("volume", "create", pool_name, "cli.raw", "--size", "8M", "--format",
                   "raw", env=env)
    assert made.code == 0, made.stderr
    # A command's transfer is a job too (kvmops job list, GET /jobs), with its bytes.
    source = images_dir / f"{pool_name}-cli-up.raw"
    source.write_bytes(os.urandom(MIB + 3))
    uploaded = run_cli("volume", "upload", pool_name, "cli.raw", str(source), "--format",
                       "raw", env=env)
    source.unlink()
    assert uploaded.code == 0, uploaded.stderr
    with api.client("viewer") as viewer:
        jobs = viewer.get("/jobs", params={"target": f"{pool_name}/cli.raw"}).json()
    assert [(j["kind"], j["state"], j["progress"]["done"]) for j in jobs] == [
        ("volume.upload", "succeeded", MIB + 3)], jobs
    deleted = run_cli("pool", "delete", pool_name, env=env)
    assert deleted.code == 0, deleted.stderr
    with api.client("admin") as admin:
        rows = admin.get("/audit", params={"limit": 1000}).json()
    mine = [(r["user"], r["action"], r["target"], r["status_code"])
            for r in rows if r["via"] == "cli" and pool_name in (r["target"] or "")]
    user = pwd.getpwuid(os.geteuid()).pw_name
    assert sorted(mine) == sorted([(user, "pool.create", pool_name, 21),
                                   (user, "pool.create", pool_name, 0),
                                   (user, "volume.create", f"{pool_name}/cli.raw", 0),
                                   (user, "volume.upload", f"{pool_name}/cli.raw", 0),
                                   (user, "pool.delete", pool_name, 0)]), mine


def _refused_before_the_body(api: ApiServer, request_line: str, length: int) -> str:
    """An operator's request announcing ``length`` bytes, none sent: the whole answer
    (it must come without the body)."""
    host, port = api.url.removeprefix("http://").split(":")
    head = (f"{request_line} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
            f"{api.tokens['operator']}\r\nContent-Length: {length}\r\n"
            "Connection: close\r\n\r\n")
    answer = b""
    with socket.create_connection((host, int(port)), timeout=60) as conn:
        conn.sendall(head.encode())
        while chunk := conn.recv(65536):
            answer += chunk
    return answer.decode("latin-1")


def _chunks(data: bytes, size: int = 64 * 1024) -> Iterator[bytes]:
    """A request body sent as it is produced (with its Content-Length: not chunked)."""
    for start in range(0, len(data), size):
        yield data[start:start + size]


def test_volume_data_upload_and_download(api: ApiServer, pool_name: str, images_dir: Path
                                         ) -> None:
    """``PUT``/``GET .../volumes/{volume}/data``: an operator's upload is read back byte
    for byte, with job progress; a viewer may do neither (a download is the disk's
    contents); a body longer than the volume (413), a wrong format (422), a qcow2 naming
    a backing file (403) are refused before a byte is written; all of it audited."""
    target = images_dir / f"{pool_name}-data"
    raw_url = f"/pools/{pool_name}/volumes/v.raw/data"
    data = os.urandom(3 * MIB + 4096)
    with api.client("viewer") as viewer, api.client("operator") as operator, \
            api.client("admin") as admin:
        made = admin.post("/pools", json={"name": pool_name, "type": "dir",
                                          "target": str(target), "build": True})
        assert made.status_code == 201, made.text
        for vol in ({"name": "v.raw", "size": "4M", "format": "raw"},
                    {"name": "v.qcow2", "size": "16M", "format": "qcow2"}):
            created = operator.post(f"/pools/{pool_name}/volumes", json=vol)
            assert created.status_code == 201, created.text

        denied = viewer.put(raw_url, params={"format": "raw"}, content=b"x")
        assert denied.status_code == 403 and "operator" in denied.json()["error"]
        assert viewer.get(raw_url).status_code == 403
        up = operator.put(raw_url, params={"format": "raw"}, content=_chunks(data),
                          headers={"Content-Length": str(len(data)),
                                   "Content-Type": "application/octet-stream"})
        assert up.status_code == 200, up.text
        assert (up.json()["name"], up.json()["format"]) == ("v.raw", "raw")
        job = wait_job(operator, up.headers["X-Job-Id"])
        assert (job["kind"], job["state"], job["progress"]["done"], job["progress"]["total"]
                ) == ("volume.upload", "succeeded", len(data), len(data)), job
        down = operator.get(raw_url)
        assert down.status_code == 200, down.text
        assert down.headers["content-disposition"] == 'attachment; filename="v.raw"'
        assert int(down.headers["content-length"]) == 4 * MIB
        assert down.content[:len(data)] == data
        assert down.content[len(data):] == bytes(4 * MIB - len(data))
        assert wait_job(operator, down.headers["X-Job-Id"])["state"] == "succeeded"

        # Refusals: before one byte reaches the volume, each one line.
        big = _refused_before_the_body(api, f"PUT /api/v1{raw_url}?format=raw", 4 * MIB + 1)
        assert big.startswith("HTTP/1.1 413") and "resize the volume" in big, big
        wrong = operator.put(raw_url, params={"format": "qcow2"}, content=b"x" * 512)
        assert wrong.status_code == 422 and "is raw; the file is qcow2" in wrong.text
        assert operator.put(raw_url, content=b"x").status_code == 422  # format named
        backed = images_dir / f"{SESSION_PREFIX}api-backed.qcow2"
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b",
                        "/etc/hostname", str(backed), "8M"], check=True, capture_output=True)
        refused = operator.put(f"/pools/{pool_name}/volumes/v.qcow2/data",
                               params={"format": "qcow2"}, content=backed.read_bytes())
        assert refused.status_code == 403 and "backing or data file" in refused.text
        assert "\n" not in refused.json()["error"]
        assert operator.get(raw_url).content[:len(data)] == data  # unchanged

        # A qcow2 file goes into a qcow2 volume and comes back as its qcow2 file.
        plain = images_dir / f"{SESSION_PREFIX}api-plain.qcow2"
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(plain), "16M"],
                       check=True, capture_output=True)
        qcow = operator.put(f"/pools/{pool_name}/volumes/v.qcow2/data",
                            params={"format": "qcow2"}, content=plain.read_bytes())
        assert qcow.status_code == 200, qcow.text
        back = operator.get(f"/pools/{pool_name}/volumes/v.qcow2/data").content
        assert back[:plain.stat().st_size] == plain.read_bytes()
        for path in (backed, plain):
            path.unlink()
        entries = admin.get("/audit?limit=300").json()
    rows = {(e["user"], e["action"], e["target"], e["status_code"]) for e in entries}
    raw = f"{pool_name}/v.raw"
    for row in [("op", "upload_volume_data", raw, 200), ("op", "download_volume_data", raw, 200),
                ("view", "upload_volume_data", pool_name, 403),
                ("view", "download_volume_data", pool_name, 403),
                ("op", "upload_volume_data", raw, 413),
                ("op", "upload_volume_data", f"{pool_name}/v.qcow2", 403)]:
        assert row in rows, (row, sorted(r for r in rows if pool_name in (r[2] or "")))
