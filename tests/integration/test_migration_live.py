"""``kvmops vm migrate`` live across the two daemons (issue 12 item 3): one second host,
one tiny guest booted once and moved around; every test starts and ends with it on the
machine (the tests run in any order).

1. shared storage, machine -> h2: the guest's RAM (a file in its RAM root file system)
   and disk (a region of /dev/vda written before, hashed after with the page cache
   dropped) survived; the VM is defined only on h2; ``vm info VM --host h2 --json`` and
   ``guest exec VM --host h2 -- CMD`` reach it there;
2. shared storage, h2 -> machine (the machine's libvirtd does not listen on TCP: the
   stream goes to tcp://10.250.N.1, derived from the route to h2);
3. cancel mid-way: 1 MiB/s with a writer dirtying the guest's memory cannot finish;
   ``kvmops job cancel`` of the command's job aborts it: the VM runs on the machine,
   defined only there, nothing left on h2;
4. ``--copy-storage`` machine -> h2 into a dir pool at h2's own images directory: the
   disk is copied there (the source file removed: it was in an allowed images
   directory), RAM and disk intact, the VM defined only on h2; then home again, copied
   back into the machine's pool (h2's copy, a volume of its pool, removed).

Shared storage is one file system seen by both daemons, with a dir pool over the same
directory on each (the preflight's proof that a disk is shared).
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import libvirt
import pytest

from kvmops.devguest.build import GuestImage
from kvmops.host.connection import Host
from tests.conftest import REPO, SESSION_PREFIX, assert_one_line_error, run_cli
from tests.integration.conftest import remove_vm
from tests.integration.nshost import NsHost, second_host

VM = f"{SESSION_PREFIX}mlive"
POOL = f"{SESSION_PREFIX}mlpool"  # on h2, at its own images directory (copies land)
SHARED = f"{SESSION_PREFIX}mlshared"  # on both, at the machine's images directory
REGION = "bs=1M count=4 skip=8"  # the disk region written and hashed (MiB 8..12)


@pytest.fixture(scope="module")
def bed(tiny_guest: GuestImage, images_dir: Path, host: Host,
        tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[NsHost, dict[str, str]]]:
    """The second host registered as ``h2`` in a database of this module, and the guest
    booted on the machine with its RAM and disk marked."""
    db = tmp_path_factory.mktemp("mlive") / "kvmops.db"
    env = {"KVMOPS_DB": f"sqlite:///{db}"}
    with second_host(f"{SESSION_PREFIX}mlv") as h2:
        try:
            added = run_cli("host", "add", "h2", h2.uri, env=env)
            assert added.code == 0, added.stderr
            # Storage both hosts reach (one file system): a pool over the same directory
            # on each, which is how the preflight knows the disk is shared.
            for where in ({}, {"KVMOPS_URI": h2.uri}):
                pool = run_cli("pool", "create", SHARED, "--type", "dir", "--target",
                               str(images_dir), env={**env, **where})
                assert pool.code == 0, pool.stderr
            pool = h2.run_cli("pool", "create", POOL, "--type", "dir", "--target",
                              h2.images_dir)
            assert pool.code == 0, pool.stderr
            created = run_cli(
                "vm", "create", VM, "--memory", "256M", "--vcpus", "1",
                "--kernel", str(tiny_guest.kernel), "--initrd", str(tiny_guest.initrd),
                "--cmdline", "console=ttyS0", "--disk", "size=64M",
                "--images-dir", str(images_dir), env=env)
            assert created.code == 0, created.stderr
            started = run_cli("vm", "start", VM, "--wait-agent", "240", env=env)
            assert started.code == 0, started.stderr
            marked = run_cli("guest", "exec", VM, "--", "sh", "-c",
                             "echo ram-survived > /tmp/marker && "
                             "dd if=/dev/urandom of=/dev/vda bs=1M count=4 seek=8 "
                             "conv=fsync 2>/dev/null && sync", env=env)
            assert marked.code == 0, marked.stderr
            env["DISK_HASH"] = _disk_hash(env, None)
            yield h2, env
        finally:
            remove_vm(host, VM)
            with contextlib.suppress(libvirt.libvirtError):  # the pool, not its directory
                shared = host.conn.storagePoolLookupByName(SHARED)
                with contextlib.suppress(libvirt.libvirtError):
                    shared.destroy()
                shared.undefine()


def _on(h2: NsHost | None) -> tuple[str, ...]:
    """``--host h2`` (the issue's interface on the target) or nothing (the machine)."""
    return ("--host", "h2") if h2 is not None else ()


def _disk_hash(env: dict[str, str], h2: NsHost | None) -> str:
    """The written region of the guest's disk, read from the device (caches dropped)."""
    read = run_cli("guest", "exec", VM, *_on(h2), "--", "sh", "-c",
                   f"echo 3 > /proc/sys/vm/drop_caches; dd if=/dev/vda {REGION} "
                   "2>/dev/null | sha256sum", env=env)
    assert read.code == 0, read.stderr
    return read.stdout.split()[0]


def _where(host: Host, h2: NsHost) -> tuple[bool, bool]:
    """(defined on the machine, defined on h2)."""
    there = subprocess.run(["virsh", "-c", h2.uri, "list", "--all", "--name"],
                           capture_output=True, text=True, timeout=60, check=True)
    return host.has_domain(VM), VM in there.stdout.split()


def _survived(env: dict[str, str], h2: NsHost | None) -> None:
    read = run_cli("guest", "exec", VM, *_on(h2), "--", "cat", "/tmp/marker", env=env)
    assert read.code == 0 and read.stdout.strip() == "ram-survived", read
    assert _disk_hash(env, h2) == env["DISK_HASH"]


def _migrate(env: dict[str, str], *args: str) -> dict[str, Any]:
    moved = run_cli("vm", "migrate", VM, *args, "--json", env=env, timeout=600)
    assert moved.code == 0, moved.stderr
    result: dict[str, Any] = json.loads(moved.stdout)
    return result


def test_shared_storage_both_ways(bed: tuple[NsHost, dict[str, str]], host: Host) -> None:
    h2, env = bed
    # The preflight refuses a VM of that name on the target, before anything moves.
    assert_one_line_error(run_cli("vm", "migrate", VM, "--to", "local", env=env), 24,
                          "same-host")
    plan = _migrate(env, "--to", "h2", "--dry-run")
    assert plan["kind"] == "live" and "dry run: nothing changed" in plan["notes"]
    assert _where(host, h2) == (True, False)

    # The tuning options reach libvirt (flags, typed parameters, max downtime once the
    # job runs). Not --postcopy: the test machine's QEMU refuses it (no userfaultfd).
    result = _migrate(env, "--to", "h2", "--auto-converge", "--max-downtime", "500",
                      "--bandwidth", "500")
    assert (result["source"], result["target"], result["kind"]) == ("local", "h2", "live")
    assert result["downtime_ms"] is not None and result["data_transferred"] > 0, result
    assert _where(host, h2) == (False, True)
    info = run_cli("vm", "info", VM, "--host", "h2", "--json", env=env)
    assert info.code == 0, info.stderr
    assert json.loads(info.stdout)["state"] == "running"
    _survived(env, h2)

    back = _migrate(env, "--to", "local", "--host", "h2")
    assert (back["source"], back["target"]) == ("h2", "local")
    assert _where(host, h2) == (True, False)
    _survived(env, None)


def _writer(env: dict[str, str], *, start: bool) -> None:
    """A guest process rewriting 24 MiB of its RAM file system without end (a migration
    at 1 MiB/s never converges), started or stopped."""
    command = ("setsid sh -c 'while :; do dd if=/dev/urandom of=/tmp/dirty bs=1M "
               "count=24 2>/dev/null; done' </dev/null >/dev/null 2>&1 & "
               "echo $! > /tmp/writer.pid") if start else \
        "kill $(cat /tmp/writer.pid); rm -f /tmp/dirty"
    done = run_cli("guest", "exec", VM, "--", "sh", "-c", command, env=env)
    assert done.code == 0, done.stderr


def _job(env: dict[str, str]) -> dict[str, Any] | None:
    listed = run_cli("job", "list", "--target", VM, "--json", env=env)
    assert listed.code == 0, listed.stderr
    for job in json.loads(listed.stdout):
        if job["kind"] == "vm.migrate" and job["state"] == "running":
            return dict(job)
    return None


def test_cancel_leaves_the_vm_on_the_source(bed: tuple[NsHost, dict[str, str]],
                                            host: Host) -> None:
    h2, env = bed
    assert _where(host, h2) == (True, False)
    _writer(env, start=True)
    proc = subprocess.Popen(
        [sys.executable, "-m", "kvmops.cli.main", "vm", "migrate", VM, "--to", "h2",
         "--bandwidth", "1", "--json"], cwd=REPO, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env={**_environ(), **env})
    try:
        job = None
        deadline = time.monotonic() + 180
        while proc.poll() is None:  # until the job shows data moving
            job = _job(env)
            moved = (job or {}).get("progress") or {}
            if job is not None and (moved.get("done") or 0) > 0:
                break
            assert time.monotonic() < deadline, f"the migration job shows no data: {job}"
            time.sleep(0.5)
        assert job is not None and proc.poll() is None, proc.communicate()
        cancelled = run_cli("job", "cancel", str(job["id"]), env=env)
        assert cancelled.code == 0, cancelled.stderr
        out, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, (out, err)
    assert "keeps running" in err and "Traceback" not in err, err
    assert _where(host, h2) == (True, False)
    assert host.lookup(VM).is_active()
    _writer(env, start=False)
    _survived(env, None)
    jobs = json.loads(run_cli("job", "list", "--target", VM, "--json", env=env).stdout)
    assert [j["state"] for j in jobs if j["id"] == job["id"]] == ["cancelled"]


def _environ() -> dict[str, str]:
    import os

    return dict(os.environ)


def test_copy_storage_into_the_targets_pool(bed: tuple[NsHost, dict[str, str]],
                                            host: Host) -> None:
    h2, env = bed
    source_disks = [d for d in json.loads(run_cli("vm", "info", VM, "--json",
                                                  env=env).stdout)["disks"]]
    source_paths = [Path(d.get("source") or d.get("path")) for d in source_disks]
    assert all(p.is_file() for p in source_paths)

    result = _migrate(env, "--to", "h2", "--copy-storage", "--target-pool", POOL)
    assert _where(host, h2) == (False, True)
    disks = [Path(str(p)) for p in result["disks"]]
    assert disks and all(p.parent == Path(h2.images_dir) and p.is_file() for p in disks)
    assert not any(p.exists() for p in source_paths), "source copies removed"
    assert any("removed the source copy" in str(n) for n in result["notes"])
    _survived(env, h2)
    # Home again, copied back into the machine's pool; h2's copy (a pool volume) removed.
    home = _migrate(env, "--to", "local", "--host", "h2", "--copy-storage",
                    "--target-pool", SHARED)
    assert _where(host, h2) == (True, False)
    assert [Path(str(p)) for p in home["disks"]] == source_paths
    assert all(p.is_file() for p in source_paths) and not any(p.exists() for p in disks)
    _survived(env, None)


def test_web_migrate_dialog(bed: tuple[NsHost, dict[str, str]], host: Host) -> None:
    """The VM page's Migrate dialog: the hosts of the server's database offered, the
    preflight's verdict listed; a migration cancelled through the page (the API's job
    cancel: the VM stays on the machine), then one run as a job followed to its end;
    then home again from the command line."""
    pytest.importorskip("playwright.sync_api")
    from tests.integration.browser import CHROMIUM, chromium_page, log_in, web_server

    if not CHROMIUM.exists():
        pytest.fail("chromium missing: run scripts/setup-host.sh")
    h2, env = bed
    assert _where(host, h2) == (True, False)
    users = [("mop", "operator", "migrate-op-1")]
    with web_server("kvmops-webmig-", users) as server, chromium_page() as page:
        added = run_cli("host", "add", "h2", h2.uri, env={"KVMOPS_DB": server.db})
        assert added.code == 0, added.stderr
        log_in(page, server.url, "mop", "migrate-op-1")
        page.goto(f"{server.url}/vms/{VM}")
        page.click("#migrate-btn")
        page.wait_for_selector("#migrate-dialog select[name=to] option[value=h2]",
                               state="attached")
        page.click("#migrate-check")
        page.wait_for_selector("#migrate-checks li")
        checks = page.inner_text("#migrate-checks")
        assert "live migration to 'h2' may run" in checks, (checks, server.log.read_text())
        # First cancelled (1 MiB/s, memory kept dirty): the job's cancel through the API.
        _writer(env, start=True)
        page.fill("#migrate-dialog input[name=bandwidth_mib]", "1")
        page.click("#migrate-go")
        # The job's progress on the page (libvirt's job stats: "memory, 250.1 MiB left, ...")
        page.wait_for_selector("#migrate-status [data-field=message]:has-text('left')",
                               timeout=300_000)
        page.click("#migrate-cancel")
        page.wait_for_selector("#migrate-status[data-state=cancelled]", timeout=300_000)
        assert _where(host, h2) == (True, False) and host.lookup(VM).is_active()
        _writer(env, start=False)
        # Then for real.
        page.click("#migrate-btn")
        page.wait_for_selector("#migrate-dialog select[name=to] option[value=h2]",
                               state="attached")
        page.fill("#migrate-dialog input[name=bandwidth_mib]", "")
        page.click("#migrate-go")
        page.wait_for_selector("#migrate-status[data-state=succeeded]", timeout=300_000)
        assert "migrated to 'h2'" in page.inner_text("#migrate-status")
    assert _where(host, h2) == (False, True)
    _survived(env, h2)
    _migrate(env, "--to", "local", "--host", "h2")
    assert _where(host, h2) == (True, False)
