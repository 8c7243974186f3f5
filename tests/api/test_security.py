"""The security regression suite: each attack chain an audit found, tried through the
real API as a hostile operator would, with a real guest writing the hostile bytes.

Every test proves the refusal *and* that the host file the attack aimed at is
untouched (existence, content, owner, mode, modification time). Host files are
root-only files under /tmp named ``kvmops-test-secret-*`` (removed at the end).
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from kvmops.devguest.build import GuestImage
from kvmops.host.connection import Host
from tests.conftest import SESSION_PREFIX, run_cli
from tests.hostile import FileState, header, host_secret, state_of
from tests.integration.api_server import ApiServer, wait_job
from tests.integration.conftest import remove_vm

VM = f"{SESSION_PREFIX}sec"


def ok(response: httpx.Response, status: int = 200) -> Any:
    assert response.status_code == status, response.text
    return response.json()


def refused(response: httpx.Response, *fragments: str) -> dict[str, Any]:
    assert response.status_code == 403, response.text
    body: dict[str, Any] = response.json()
    assert body["kind"] == "PathRefusedError", body
    for fragment in fragments:
        assert fragment in body["error"], (fragment, body)
    return body


def job(client: httpx.Client, response: httpx.Response) -> dict[str, Any]:
    started = ok(response, 202)
    return wait_job(client, str(started["job_id"]))


def run_in_guest(client: httpx.Client, vm: str, script: str) -> str:
    result = ok(client.post(f"/vms/{vm}/guest/exec",
                            json={"argv": ["/bin/sh", "-c", script], "timeout": 60}))
    assert result["exit_code"] == 0, result
    return str(result["stdout"])


@pytest.fixture(scope="module")
def secrets() -> Iterator[dict[str, Path]]:
    """The host files the tests guard (added by make_secret), removed at the end."""
    made: dict[str, Path] = {}
    yield made
    for path in made.values():
        path.unlink(missing_ok=True)


def make_secret(secrets: dict[str, Path], tag: str) -> tuple[Path, FileState]:
    path = host_secret(tag)
    secrets[tag] = path
    return path, state_of(path)


@pytest.fixture(scope="module")
def operator(api: ApiServer) -> Iterator[httpx.Client]:
    with api.client("operator") as client:
        yield client


@pytest.fixture(scope="module")
def sec_vm(api: ApiServer, operator: httpx.Client, tiny_guest: GuestImage, images_dir: Path,
           host: Host) -> Iterator[str]:
    """A running tiny guest created through the API by the operator."""
    try:
        done = job(operator, operator.post("/vms", json={
            "name": VM, "memory": "256M", "kernel": str(tiny_guest.kernel),
            "initrd": str(tiny_guest.initrd), "cmdline": "console=ttyS0",
            "disks": [{"size": "32M"}], "images_dir": str(images_dir)}))
        assert done["state"] == "succeeded", done
        ok(operator.post(f"/vms/{VM}/start", json={}))
        deadline = time.monotonic() + 180
        while operator.get(f"/vms/{VM}/guest/ping").status_code != 200:
            assert time.monotonic() < deadline, "the guest agent never answered"
            time.sleep(1)
        yield VM
    finally:
        remove_vm(host, VM)


def _wait_device(client: httpx.Client, vm: str, target: str, present: bool) -> None:
    test = f"test -b /dev/{target}" if present else f"! test -b /dev/{target}"
    deadline = time.monotonic() + 60
    while True:
        result = ok(client.post(f"/vms/{vm}/guest/exec", json={"argv": ["/bin/sh", "-c", test]}))
        if result["exit_code"] == 0:
            return
        assert time.monotonic() < deadline, f"/dev/{target} present={not present} in the guest"
        time.sleep(0.5)


def guest_writes_header(client: httpx.Client, vm: str, images_dir: Path, data: bytes) -> Path:
    """Hot-plug a new raw disk, let the guest write ``data`` at its start, unplug it."""
    disk = ok(client.post(f"/vms/{vm}/disks", json={"size": "16M", "format": "raw",
                                                     "images_dir": str(images_dir)}), 201)
    target, image = disk["target"], Path(disk["image"])
    _wait_device(client, vm, target, True)
    ok(client.post(f"/vms/{vm}/guest/push", json={
        "path": "/tmp/hostile", "content_b64": base64.b64encode(data).decode()}))
    run_in_guest(client, vm, f"dd if=/tmp/hostile of=/dev/{target} bs=4096 conv=notrunc,fsync"
                             f" 2>/dev/null && sync")
    ok(client.delete(f"/vms/{vm}/disks/{target}"))
    assert image.read_bytes()[:len(data)] == data  # the guest really wrote it
    return image


# ----------------------------------------------------------------- chain 1: format probing
@pytest.mark.parametrize("kind", ["qcow2-backing", "qcow2-data-file", "luks", "vmdk"])
def test_guest_written_header_never_reaches_a_host_file(
        api: ApiServer, operator: httpx.Client, sec_vm: str, images_dir: Path,
        secrets: dict[str, Path], kind: str) -> None:
    secret, before = make_secret(secrets, kind)
    image = guest_writes_header(operator, sec_vm, images_dir, header(kind, secret))
    try:
        # read as raw by default: no backing, no data file, the guest's bytes as data
        info = ok(operator.get("/images/info", params={"path": str(image)}))
        assert (info["format"], info["format_source"]) == ("raw", "recorded")
        assert info["backing_filename"] is None and info["data_file"] is None
        copy = images_dir / f"{SESSION_PREFIX}{kind}-copy.qcow2"
        converted = job(operator, operator.post("/images/convert", json={
            "source": str(image), "destination": str(copy)}))
        assert converted["state"] == "succeeded", converted
        flat = images_dir / f"{SESSION_PREFIX}{kind}-copy.raw"
        subprocess.run(["qemu-img", "convert", "-f", "qcow2", "-O", "raw", str(copy),
                        str(flat)], check=True)
        assert flat.read_bytes() == image.read_bytes()
        assert secret.read_bytes() not in flat.read_bytes()

        # attached again (the format kvmops recorded: raw), the guest reads its own bytes
        attached = ok(operator.post(f"/vms/{sec_vm}/disks", json={"image": str(image)}), 201)
        assert attached["format"] == "raw"
        _wait_device(operator, sec_vm, attached["target"], True)
        ok(operator.delete(f"/vms/{sec_vm}/disks/{attached['target']}"))
        _wait_device(operator, sec_vm, attached["target"], False)

        if kind.startswith("qcow2"):
            # insisting it is qcow2 is refused before anything opens the named file
            refused(operator.get("/images/info", params={"path": str(image),
                                                         "format": "qcow2"}), str(secret))
            refused(operator.post("/images/convert", json={
                "source": str(image), "source_format": "qcow2",
                "destination": str(images_dir / f"{SESSION_PREFIX}{kind}-x.qcow2")}),
                str(secret))
            refused(operator.post(f"/vms/{sec_vm}/disks",
                                  json={"image": str(image), "format": "qcow2"}), str(secret))
            refused(operator.post("/images", json={
                "path": str(images_dir / f"{SESSION_PREFIX}{kind}-overlay.qcow2"),
                "backing": str(image), "backing_format": "qcow2"}), str(secret))
            assert not (images_dir / f"{SESSION_PREFIX}{kind}-x.qcow2").exists()
        else:
            bad = operator.post(f"/vms/{sec_vm}/disks",
                                json={"image": str(image), "format": kind})
            assert bad.status_code == 422, bad.text  # only raw and qcow2 exist for the API
        assert state_of(secret) == before  # never opened for write, never chowned, unchanged
    finally:
        for leftover in (image, *images_dir.glob(f"{SESSION_PREFIX}{kind}-*")):
            leftover.unlink(missing_ok=True)


# ------------------------------------------------------------ chain 2: deletion outside
def test_storage_removal_never_leaves_the_allowed_dirs(
        api: ApiServer, operator: httpx.Client, tiny_guest: GuestImage, images_dir: Path,
        secrets: dict[str, Path], host: Host) -> None:
    name = f"{SESSION_PREFIX}sec-rm"
    imported = images_dir / f"{SESSION_PREFIX}imported.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(imported), "16M"],
                   check=True)
    try:
        done = job(operator, operator.post("/vms", json={
            "name": name, "memory": "64M", "disks": [
                {"size": "16M"}, {"path": str(imported), "format": "qcow2"}],
            "images_dir": str(images_dir)}))
        assert done["state"] == "succeeded", done
        vda = Path(done["result"]["disks"][0]["source"])
        # What an older kvmops let happen: the VM's image chain leads to a host file
        # whose name is a prefix of the image's.
        victim = Path("/tmp") / vda.stem
        secrets["rm"] = victim
        victim.write_bytes(b"root-only victim\n" * 100)
        victim.chmod(0o600)
        before = state_of(victim)
        subprocess.run(["qemu-img", "rebase", "-u", "-f", "qcow2", "-b", str(victim), "-F",
                        "raw", str(vda)], check=True)
        result = ok(operator.delete(f"/vms/{name}", params={"remove_storage": True}))
        details = result["details"]
        assert details["removed"] == [str(vda)]
        kept = {k["path"]: k["reason"] for k in details["kept"]}
        assert "outside the allowed" in kept[str(vda)]  # the chain was not followed
        assert "did not create it" in kept[str(imported.resolve())]
        assert state_of(victim) == before
        assert imported.exists() and not vda.exists()
    finally:
        remove_vm(host, name)
        imported.unlink(missing_ok=True)


# ----------------------------------------------------------- chain 3: forged manifests
def _offline_vm(operator: httpx.Client, name: str, images_dir: Path) -> None:
    done = job(operator, operator.post("/vms", json={
        "name": name, "memory": "64M", "disks": [{"size": "8M"}],
        "images_dir": str(images_dir)}))
    assert done["state"] == "succeeded", done


def test_forged_and_changed_manifests_are_never_used(
        api: ApiServer, operator: httpx.Client, images_dir: Path, repo_dir: Path,
        secrets: dict[str, Path], host: Host) -> None:
    name = f"{SESSION_PREFIX}sec-bk"
    secret, before = make_secret(secrets, "manifest")
    try:
        _offline_vm(operator, name, images_dir)
        backup = job(operator, operator.post(f"/vms/{name}/backups", json={"repo": str(repo_dir)}))
        assert backup["state"] == "succeeded", backup
        genuine = str(backup["result"]["id"])
        backups = repo_dir / name / "backups"

        # the operator cannot write into a repository at all (image and backup dirs apart)
        refused(operator.post("/images", json={
            "path": str(backups / "20990101T000000.000000Z" / "manifest.json"), "size": "1M"}))
        refused(operator.post("/images/convert", json={
            "source": str(images_dir / f"{name}-vda.qcow2"),
            "destination": str(backups / genuine / "vda.qcow2")}))

        # a manifest planted by whoever could write there: a VM definition with QEMU
        # arguments and a CD-ROM on a host file
        forged_id = "20990101T000000.000000Z"
        forged_dir = backups / forged_id
        forged_dir.mkdir()
        shutil.copy(backups / genuine / "vda.qcow2", forged_dir / "vda.qcow2")
        manifest = json.loads((backups / genuine / "manifest.json").read_text())
        evil_xml = (f"<domain type='qemu' xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>"
                    f"<name>{name}</name><memory unit='MiB'>64</memory>"
                    f"<os><type arch='x86_64'>hvm</type></os><devices>"
                    f"<disk type='file' device='cdrom'><source file='{secret}'/>"
                    f"<target dev='hdc' bus='ide'/></disk></devices>"
                    f"<qemu:commandline><qemu:arg value='-S'/></qemu:commandline></domain>")
        manifest.update(id=forged_id, domain_xml=evil_xml)
        (forged_dir / "manifest.json").write_text(json.dumps(manifest))
        listed = ok(operator.get(f"/vms/{name}/backups", params={"repo": str(repo_dir)}))
        assert [b["id"] for b in listed] == [genuine]
        restored = job(operator, operator.post(f"/vms/{name}/backups/restore", json={
            "repo": str(repo_dir), "at": forged_id, "new_vm": f"{name}-x"}))
        assert restored["state"] == "failed" and restored["error_kind"] == "TamperedError"
        assert not host.has_domain(f"{name}-x")
        verified = job(operator, operator.post("/backups/verify", json={"repo": str(repo_dir),
                                                                        "vm": name}))
        assert verified["state"] == "failed" and "tampered" in verified["error"]
        pruned = job(operator, operator.post(f"/vms/{name}/backups/prune", json={
            "repo": str(repo_dir), "keep_last": 1}))
        assert pruned["state"] == "failed" and pruned["error_kind"] == "TamperedError"
        shutil.rmtree(forged_dir)

        # a genuine manifest changed afterwards fails too
        path = backups / genuine / "manifest.json"
        original = path.read_text()
        path.write_text(original.replace('"notes": []', '"notes": ["x"]', 1)
                        if '"notes": []' in original else original + " ")
        restored = job(operator, operator.post(f"/vms/{name}/backups/restore", json={
            "repo": str(repo_dir), "new_vm": f"{name}-y"}))
        assert restored["state"] == "failed" and restored["error_kind"] == "TamperedError"
        assert not host.has_domain(f"{name}-y")
        path.write_text(original)
        verified = job(operator, operator.post("/backups/verify", json={"repo": str(repo_dir),
                                                                        "vm": name}))
        assert verified["state"] == "succeeded", verified
        assert state_of(secret) == before
    finally:
        for vm in (name, f"{name}-x", f"{name}-y"):
            remove_vm(host, vm)


def test_restore_as_new_vm_rebuilds_the_definition(
        api: ApiServer, operator: httpx.Client, images_dir: Path, repo_dir: Path,
        secrets: dict[str, Path], host: Host) -> None:
    """A genuine backup of an admin-made VM with QEMU arguments, a host-file CD-ROM, a
    host USB device and a kernel outside the image directories: the new VM keeps
    none of them, and the result says what was dropped."""
    name = f"{SESSION_PREFIX}sec-xml"
    new = f"{name}-copy"
    secret, before = make_secret(secrets, "xml")
    disk = images_dir / f"{name}-vda.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(disk), "8M"], check=True)
    xml = f"""<domain type='qemu' xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>
      <name>{name}</name><memory unit='MiB'>64</memory><vcpu>1</vcpu>
      <os><type arch='x86_64' machine='pc'>hvm</type><kernel>{secret}</kernel></os>
      <devices>
        <disk type='file' device='disk'><driver name='qemu' type='qcow2'/>
          <source file='{disk}'/><target dev='vda' bus='virtio'/></disk>
        <disk type='file' device='cdrom'><driver name='qemu' type='raw'/>
          <source file='{secret}'/><target dev='hdc' bus='ide'/><readonly/></disk>
        <hostdev mode='subsystem' type='usb'><source><vendor id='0x1d6b'/>
          <product id='0x0002'/></source></hostdev>
      </devices>
      <qemu:commandline><qemu:arg value='-no-user-config'/></qemu:commandline>
    </domain>"""
    try:
        host.define(xml)
        made = run_cli("backup", "create", name, "--repo", str(repo_dir))  # root, offline
        assert made.code == 0, made.stderr
        restored = job(operator, operator.post(f"/vms/{name}/backups/restore", json={
            "repo": str(repo_dir), "new_vm": new, "images_dir": str(images_dir)}))
        assert restored["state"] == "succeeded", restored
        dropped = " | ".join(restored["result"]["dropped"])
        for fragment in ("qemu:commandline", "device <hostdev>", "CD-ROM hdc",
                         "direct kernel boot"):
            assert fragment in dropped, (fragment, dropped)
        defined = operator.get(f"/vms/{new}/xml", params={"inactive": True}).text
        assert "commandline" not in defined and "<hostdev" not in defined
        assert str(secret) not in defined
        assert f"{new}-vda.qcow2" in defined
        assert state_of(secret) == before
    finally:
        remove_vm(host, new)
        remove_vm(host, name)
        disk.unlink(missing_ok=True)


# ------------------------------------------------------------ chain 4: the state dir
def test_a_configuration_reaching_the_state_dir_is_refused(tmp_path: Path) -> None:
    result = run_cli("serve", "--port", "1", "--db", f"sqlite:///{tmp_path}/x.db",
                     "--allow-dir", "/var/lib/kvmops", timeout=60)
    assert result.code == 78, (result.stdout, result.stderr)
    assert "overlaps the state directory" in result.error_line


def test_the_state_dir_is_never_reachable(operator: httpx.Client) -> None:
    for path in ("/var/lib/kvmops/state/kvmops.db", "/var/lib/kvmops/state/keys/manifest"):
        refused(operator.get("/images/info", params={"path": path}), "state directory")
    refused(operator.post("/images/convert", json={
        "source": "/var/lib/kvmops/state/kvmops.db",
        "destination": "/var/lib/kvmops/images/db.raw"}), "state directory")
    assert os.stat("/var/lib/kvmops/state").st_mode & 0o077 == 0


# --------------------------------------------------------------- chain 5: the server
def test_long_requests_are_limited_and_health_stays_answering(
        api: ApiServer, operator: httpx.Client, sec_vm: str) -> None:
    """Four long guest commands hold the operator's four slots; a fifth is refused at
    once with 429 and Retry-After, and /health answers while they run.

    Which request is the fifth is a race (an extra one can get in before the last long
    one): a refused long command retries after Retry-After, like a polite client."""
    import concurrent.futures

    refusals: list[str | None] = []

    def long_exec() -> tuple[int, str]:
        deadline = time.monotonic() + 120
        with api.client("operator") as client:
            while True:
                answer = client.post(f"/vms/{sec_vm}/guest/exec", json={
                    "argv": ["/bin/sleep", "10"], "timeout": 60})
                if answer.status_code != 429 or time.monotonic() > deadline:
                    return answer.status_code, answer.text
                refusals.append(answer.headers.get("retry-after"))
                time.sleep(0.5)

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        running = [pool.submit(long_exec) for _ in range(4)]
        while not all(f.done() for f in running):
            assert ok(httpx.get(api.url + "/api/v1/health", timeout=30))["status"] == "ok"
            extra = operator.post(f"/vms/{sec_vm}/guest/exec", json={"argv": ["/bin/true"]})
            if extra.status_code == 429:
                refusals.append(extra.headers.get("retry-after"))
                break
            assert extra.status_code == 200, extra.text
            time.sleep(0.2)
        results = [f.result() for f in running]
    assert refusals, ("no fifth long request was ever refused", results)
    assert all(refusals), "a 429 came without Retry-After"
    assert [code for code, _ in results] == [200] * 4, results
    ok(operator.post(f"/vms/{sec_vm}/guest/exec", json={"argv": ["/bin/true"]}))


def test_guest_reads_and_refusals_are_audited(api: ApiServer, operator: httpx.Client,
                                              sec_vm: str) -> None:
    ok(operator.get(f"/vms/{sec_vm}/guest/info"))
    operator.get("/images/info", params={"path": "/etc/shadow"})
    with api.client("admin") as admin:
        rows = ok(admin.get("/audit", params={"limit": 200}))
    mine = [r for r in rows if r["user"] == "op"]
    assert any(r["action"] == "info" and r["target"] == sec_vm and r["result"] == "ok"
               for r in mine)
    assert any(r["path"] == "/api/v1/images/info" and r["result"] == "denied"
               and r["status_code"] == 403 for r in mine)
    assert all(r["address"] == "127.0.0.1" for r in mine)


def test_long_guest_commands_run_as_jobs(api: ApiServer, operator: httpx.Client,
                                         sec_vm: str) -> None:
    started = operator.post(f"/vms/{sec_vm}/guest/exec", json={
        "argv": ["/bin/sh", "-c", "sleep 2; echo done"], "background": True})
    finished = wait_job(operator, str(ok(started, 202)["job_id"]))
    assert finished["state"] == "succeeded", finished
    assert finished["kind"] == "guest.exec"
    assert finished["result"]["stdout"] == "done\n" and finished["result"]["exit_code"] == 0
