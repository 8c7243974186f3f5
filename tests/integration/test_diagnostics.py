"""Hung-guest diagnostics on one booted tiny guest (module-scoped): ``vm nmi`` (seen in
the guest kernel's log), ``vm dump --memory-only`` (an ELF core of about the guest's
RAM, written atomically), ``vm screenshot`` (a PNG Pillow decodes), ``vm reset`` (the
guest boots again: a new boot id through the agent); the same through the API (roles,
the dump as a job, the screenshot's content type) and the VM page's thumbnail in
Chromium; one-line errors for a shut-off VM and refused paths. ``vm console``'s round
trip is tests/integration/test_console.py."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from PIL import Image

from kvmops.config import settings
from kvmops.devguest.build import GuestImage
from tests.conftest import SESSION_PREFIX, assert_one_line_error, run_cli
from tests.integration.api_server import ApiServer, add_users, start_server, wait_job
from tests.integration.browser import CHROMIUM, chromium_page, log_in
from tests.integration.nshost import defined_vm, second_host

MIB = 1024 * 1024
GUEST_RAM = 256 * MIB  # vm_factory's --memory
NMI_LINE = re.compile(r"NMI received for unknown reason")  # arch/x86/kernel/nmi.c


@pytest.fixture(scope="module")
def guest(vm_factory: Callable[..., str]) -> str:
    """The module's booted guest (reset here: not the session's shared one)."""
    return vm_factory(start=True)


@pytest.fixture(scope="module")
def server(images_dir: Path) -> Iterator[ApiServer]:
    workdir = Path(tempfile.mkdtemp(prefix="kvmops-diag-"))
    srv = start_server(f"sqlite:///{workdir / 'kvmops.sqlite'}", workdir, "--allow-dir",
                       str(images_dir))
    try:
        add_users(srv)
        yield srv
    finally:
        srv.stop()
        log = srv.log.read_text()
        shutil.rmtree(workdir, ignore_errors=True)
        assert "Traceback" not in log, log


def _guest_out(vm: str, *argv: str) -> str:
    result = run_cli("guest", "exec", vm, "--", *argv)
    assert result.code == 0, result.stderr
    return result.stdout


def _nmi_count(vm: str) -> int:
    return len(NMI_LINE.findall(_guest_out(vm, "dmesg")))


def _assert_elf_core(path: Path) -> None:
    """An ELF core file (e_type ET_CORE) of about the guest's RAM, private to root."""
    with path.open("rb") as fh:
        header = fh.read(18)
    assert header[:4] == b"\x7fELF", header
    assert int.from_bytes(header[16:18], "little") == 4  # ET_CORE
    size = path.stat().st_size
    assert GUEST_RAM <= size <= GUEST_RAM + 64 * MIB, size  # RAM + ROMs/VGA + headers
    assert path.stat().st_mode & 0o077 == 0, oct(path.stat().st_mode)


def _no_temp_files(directory: Path) -> None:
    assert not list(directory.glob(".*.part")), list(directory.iterdir())


def test_nmi_is_logged_by_the_guest_kernel(guest: str) -> None:
    before = _nmi_count(guest)
    result = run_cli("vm", "nmi", guest)
    assert result.code == 0, result.stderr
    deadline = time.monotonic() + 60
    while _nmi_count(guest) <= before:
        assert time.monotonic() < deadline, _guest_out(guest, "dmesg")[-2000:]
        time.sleep(1)


def test_memory_only_dump_is_an_elf_core_of_the_guest_ram(guest: str, images_dir: Path
                                                          ) -> None:
    target = images_dir / "diag-cli.core"
    result = run_cli("vm", "dump", guest, str(target), "--memory-only", "--json")
    assert result.code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["path"] == str(target) and report["format"] == "elf"
    assert report["size"] == target.stat().st_size
    _assert_elf_core(target)
    _no_temp_files(images_dir)
    jobs = json.loads(run_cli("job", "list", "--target", guest, "--json").stdout)  # its row
    row = next(j for j in jobs if j["kind"] == "vm.dump" and j["target"] == guest)
    assert row["state"] == "succeeded" and row["result"]["path"] == str(target), row
    assert row["progress"]["done"] == row["progress"]["total"] >= GUEST_RAM, row
    # an existing file is refused, and kept as it was; --force replaces it
    assert_one_line_error(run_cli("vm", "dump", guest, str(target), "--memory-only"), 4,
                          str(target), "already exists", "--force")
    first = target.stat().st_ino
    replaced = run_cli("vm", "dump", guest, str(target), "--memory-only", "--force")
    assert replaced.code == 0, replaced.stderr
    assert target.stat().st_ino != first  # a new file renamed over the old one
    _assert_elf_core(target)
    _no_temp_files(images_dir)
    assert run_cli("guest", "ping", guest).code == 0  # the guest runs on after the dump


def test_screenshot_is_a_png(guest: str, images_dir: Path) -> None:
    target = images_dir / "diag-screen.png"
    result = run_cli("vm", "screenshot", guest, str(target))
    assert result.code == 0, result.stderr
    with Image.open(target) as image:
        image.load()
        assert image.format == "PNG"
        width, height = image.size
    assert 320 <= width <= 4096 and 200 <= height <= 4096, (width, height)
    _no_temp_files(images_dir)


def test_reset_boots_the_guest_again(guest: str) -> None:
    boot_id = _guest_out(guest, "cat", "/proc/sys/kernel/random/boot_id").strip()
    result = run_cli("vm", "reset", guest)
    assert result.code == 0, result.stderr
    deadline = time.monotonic() + 240
    while True:  # the agent answers again, from a new boot
        now = run_cli("guest", "exec", guest, "--", "cat", "/proc/sys/kernel/random/boot_id")
        if now.code == 0 and now.stdout.strip() not in ("", boot_id):
            break
        assert time.monotonic() < deadline, (now.code, now.stdout, now.stderr)
        time.sleep(2)


def test_one_line_errors(fresh_vm: str, guest: str, images_dir: Path) -> None:
    off = str(images_dir / "diag-off.core")
    for argv in (("nmi", fresh_vm), ("reset", fresh_vm),
                 ("screenshot", fresh_vm, str(images_dir / "diag-off.png")),
                 ("dump", fresh_vm, off, "--memory-only")):
        assert_one_line_error(run_cli("vm", *argv), 5, fresh_vm, "shut off", "kvmops vm start")
    assert not list(images_dir.glob("diag-off*"))
    assert_one_line_error(run_cli("vm", "nmi", "kvmops-test-no-such-vm"), 3, "not found")
    # paths: the state directory is refused to everyone, a missing directory named
    state = settings().state_dir / "diag.core"
    assert_one_line_error(run_cli("vm", "dump", guest, str(state), "--memory-only"), 21,
                          "state directory")
    assert not state.exists()
    assert_one_line_error(run_cli("vm", "dump", guest, str(images_dir / "nodir" / "x.core"),
                                  "--memory-only"), 3, "does not exist")
    assert_one_line_error(run_cli("vm", "dump", guest, off, "--format", "kdump-zlib"), 2,
                          "--memory-only")


def test_host_option_acts_on_the_second_host(tiny_guest: GuestImage, images_dir: Path,
                                             tmp_path: Path) -> None:
    """``--host NAME`` and the API's ``?host=``: the commands reach the VM there (started
    paused: nothing boots); a dump is refused for a host over the network (its libvirtd
    would write the file on its own disks)."""
    env = {"KVMOPS_DB": f"sqlite:///{tmp_path / 'hosts.db'}"}
    with second_host(f"{SESSION_PREFIX}dgh") as h2, defined_vm(
            h2.uri, f"{SESSION_PREFIX}dgvm", str(tiny_guest.kernel),
            str(tiny_guest.initrd)) as vm:
        assert run_cli("host", "add", "h2", h2.uri, env=env).code == 0
        assert run_cli("vm", "nmi", vm, env=env).code == 3  # not on this host
        assert_one_line_error(run_cli("vm", "nmi", vm, "--host", "h2", env=env), 5,
                              "shut off")
        started = run_cli("vm", "start", vm, "--paused", "--host", "h2", env=env)
        assert started.code == 0, started.stderr
        for verb in ("nmi", "reset"):
            done = run_cli("vm", verb, vm, "--host", "h2", env=env)
            assert done.code == 0, (verb, done.stderr)
        assert_one_line_error(  # that VM has a serial console only
            run_cli("vm", "screenshot", vm, str(tmp_path / "h2.png"), "--host", "h2",
                    env=env), 5, "no video device", "kvmops vm console")
        assert_one_line_error(
            run_cli("vm", "dump", vm, str(images_dir / "diag-h2.core"), "--memory-only",
                    "--host", "h2", env=env), 6, "on its own disks", "on that host")
        assert not (images_dir / "diag-h2.core").exists()
        # the API's ?host= reaches it too
        srv = start_server(f"sqlite:///{tmp_path / 'api.db'}", tmp_path, "--allow-dir",
                           str(images_dir))
        try:
            add_users(srv)
            with srv.client("admin") as admin, srv.client("operator") as op:
                added = admin.post("/hosts", json={"name": "h2", "uri": h2.uri})
                assert added.status_code == 201, added.text
                assert op.post(f"/vms/{vm}/nmi").status_code == 404  # not on this host
                there = op.post(f"/vms/{vm}/nmi", params={"host": "h2"})
                assert there.status_code == 200, there.text
                shot = op.get(f"/vms/{vm}/screenshot", params={"host": "h2"})
                assert shot.status_code == 409 and "no video device" in shot.json()["error"]
                dump = op.post(f"/vms/{vm}/dump", params={"host": "h2"},
                               json={"file": str(images_dir / "diag-h2.core"),
                                     "memory_only": True})
                assert dump.status_code == 501 and "on that host" in dump.json()["error"]
        finally:
            srv.stop()


# --------------------------------------------------------------------------- API
def test_api_nmi_and_reset_need_an_operator(server: ApiServer, guest: str, fresh_vm: str
                                            ) -> None:
    with server.client("viewer") as view, server.client("operator") as op, server.client() as anon:
        assert anon.post(f"/vms/{guest}/nmi").status_code == 401
        assert view.post(f"/vms/{guest}/nmi").status_code == 403
        assert view.post(f"/vms/{guest}/reset").status_code == 403
        done = op.post(f"/vms/{guest}/nmi")
        assert done.status_code == 200, done.text
        assert "NMI" in done.json()["message"]
        refused = op.post(f"/vms/{fresh_vm}/reset")
        assert refused.status_code == 409, refused.text
        assert "shut off" in refused.json()["error"]


def test_api_screenshot_is_png_for_a_viewer(server: ApiServer, guest: str) -> None:
    with server.client("viewer") as view, server.client() as anon:
        assert anon.get(f"/vms/{guest}/screenshot").status_code == 401
        shot = view.get(f"/vms/{guest}/screenshot")
        assert shot.status_code == 200, shot.text
        assert shot.headers["content-type"] == "image/png"
        assert shot.headers["cache-control"] == "no-store"
        with Image.open(io.BytesIO(shot.content)) as image:
            assert image.format == "PNG" and image.size[0] >= 320


def test_api_dump_is_a_job_in_an_allowed_directory(server: ApiServer, guest: str,
                                                   fresh_vm: str, images_dir: Path) -> None:
    target = images_dir / "diag-api.core"
    body = {"file": str(target), "memory_only": True}
    with server.client("viewer") as view, server.client("operator") as op:
        assert view.post(f"/vms/{guest}/dump", json=body).status_code == 403
        outside = op.post(f"/vms/{guest}/dump", json={**body, "file": "/etc/diag.core"})
        assert outside.status_code == 403, outside.text  # the path policy, before any job
        assert "outside the allowed" in outside.json()["error"]
        assert not os.path.exists("/etc/diag.core")
        bad = op.post(f"/vms/{guest}/dump", json={**body, "format": "kdump-zlib",
                                                  "memory_only": False})
        assert bad.status_code == 422, bad.text
        off = op.post(f"/vms/{fresh_vm}/dump", json=body)
        assert off.status_code == 409, off.text  # at once, not as a failed job
        assert "shut off" in off.json()["error"]
        started = op.post(f"/vms/{guest}/dump", json=body)
        assert started.status_code == 202, started.text
        assert started.json()["kind"] == "vm.dump"
        job = wait_job(op, started.json()["job_id"])
        assert job["state"] == "succeeded", job
        assert job["result"]["path"] == str(target)
        assert job["result"]["size"] == target.stat().st_size
        assert job["progress"]["total"] >= GUEST_RAM
        assert job["progress"]["done"] == job["progress"]["total"]
        _assert_elf_core(target)
        again = op.post(f"/vms/{guest}/dump", json=body)
        assert again.status_code == 409, again.text  # exists; force replaces it


# --------------------------------------------------------------------------- web
@pytest.mark.skipif(not CHROMIUM.exists(), reason="chromium missing: run scripts/setup-host.sh")
def test_vm_page_shows_the_screenshot_thumbnail(server: ApiServer, guest: str,
                                                images_dir: Path) -> None:
    with chromium_page() as page:
        log_in(page, server.url, "op", "password-op")
        page.goto(f"{server.url}/vms/{guest}")
        thumb = page.locator("#screenshot-img")
        thumb.wait_for(state="visible")
        page.wait_for_function(
            "() => document.getElementById('screenshot-img').naturalWidth >= 320")
        assert "taken" in page.locator('[data-field="screenshot-note"]').inner_text()
        page.click("#screenshot-refresh")
        page.wait_for_function(
            "() => !document.getElementById('screenshot-refresh').disabled")
        page.click("#nmi-btn")
        page.locator(".toast", has_text="NMI injected").wait_for()
        target = images_dir / "diag-web.core"  # the dump dialog: a job, its progress
        page.click("#dump-btn")
        page.fill("#dump-dialog input[name=file]", str(target))
        page.click("#dump-go")
        page.locator("#dump-status", has_text="written to " + str(target)).wait_for()
        _assert_elf_core(target)
