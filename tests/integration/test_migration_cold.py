"""Cold migration across the two daemons (issue 12 item 4; kvmops.services.coldmigration):
a shut-off tiny VM whose qcow2 disk holds known bytes moves from the machine into a dir
pool of the second host -- copied, hashed and read back, defined only there, its source
disk removed -- boots there and reads the bytes from its disk, then moves back into a
pool of the machine. A migration cancelled after its first chunk (a VM of the second
host whose disk no pool holds: read through a transient pool) leaves the source as it
was (definition and disk hash) and nothing on the target. One second host, one boot."""

from __future__ import annotations

import contextlib
import hashlib
import json
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from kvmops.devguest.build import GuestImage
from kvmops.errors import CancelledError, StateError
from kvmops.host import pools as host_pools
from kvmops.host.connection import Host
from kvmops.migration.model import MigrationOptions, MigrationProgress
from kvmops.services.caller import Caller
from kvmops.services.coldmigration import cold_migrate
from tests.conftest import SESSION_PREFIX, assert_one_line_error, run_cli
from tests.integration.conftest import remove_vm
from tests.integration.nshost import NsHost, second_host

PATTERN = "0xab"  # the known bytes: 64 KiB of them at 1 MiB into the disk
OLD = "0x11"  # what the same bytes were at the VM's snapshot
OFFSET, LENGTH = 1024 * 1024, 64 * 1024


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _virsh(uri: str, *args: str) -> str:
    proc = subprocess.run(["virsh", "-c", uri, *args], capture_output=True, text=True,
                          timeout=60, check=True)
    return proc.stdout


def _names(uri: str) -> list[str]:
    return _virsh(uri, "list", "--all", "--name").split()


def _disk_of(uri: str, vm: str) -> Path:
    lines = _virsh(uri, "domblklist", vm, "--details").splitlines()
    files = [ln.split()[-1] for ln in lines if " disk " in f" {ln} " and "/" in ln]
    assert len(files) == 1, lines
    return Path(files[0])


def _qemu_io(path: Path, command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["qemu-io", "-f", "qcow2", "-c", command, str(path)],
                          capture_output=True, text=True, timeout=60, check=False)


@pytest.fixture(scope="module")
def h2() -> Iterator[NsHost]:
    with second_host(f"{SESSION_PREFIX}cold") as h:
        yield h


@pytest.fixture(scope="module")
def hosts_db(h2: NsHost, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A database naming the second host ``h2`` (the service resolves host names)."""
    url = f"sqlite:///{tmp_path_factory.mktemp('cold') / 'hosts.db'}"
    added = run_cli("host", "add", "h2", h2.uri, env={"KVMOPS_DB": url})
    assert added.code == 0, added.stderr
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("KVMOPS_DB", url)
        yield url


@pytest.fixture(scope="module")
def pools(h2: NsHost, host: Host, images_dir: Path) -> Iterator[tuple[str, str]]:
    """A dir pool on each host: the second host's under its images directory, the
    machine's under the session's; (their name, the same on both)."""
    name = f"{SESSION_PREFIX}coldpool"
    there = Path(h2.images_dir) / "pool"
    here = images_dir / "coldpool"
    for path in (there, here):
        path.mkdir(mode=0o755)
    made = h2.run_cli("pool", "create", name, "--type", "dir", "--target", str(there))
    assert made.code == 0, made.stderr
    made = run_cli("pool", "create", name, "--type", "dir", "--target", str(here))
    assert made.code == 0, made.stderr
    try:
        yield name, str(there)
    finally:
        with contextlib.suppress(Exception):
            host_pools.stop(host, name)
        with contextlib.suppress(Exception):
            host_pools.undefine(host, name)


def _create_on(h2: NsHost, tiny_guest: GuestImage, vm: str) -> None:
    created = h2.run_cli(
        "vm", "create", vm, "--memory", "256M", "--vcpus", "1",
        "--kernel", str(tiny_guest.kernel), "--initrd", str(tiny_guest.initrd),
        "--cmdline", "console=ttyS0", "--disk", "size=64M", "--images-dir", h2.images_dir)
    assert created.code == 0, created.stderr


def test_cold_migration_there_and_back(vm_factory: Callable[..., str], host: Host,
                                       h2: NsHost, hosts_db: str, pools: tuple[str, str],
                                       repo_dir: Path) -> None:
    pool, pool_dir = pools
    vm = vm_factory()
    source_disk = _disk_of(host.uri, vm)
    # An internal snapshot (inside the qcow2 file) of older bytes moves along.
    wrote = _qemu_io(source_disk, f"write -P {OLD} {OFFSET} {LENGTH}")
    assert wrote.returncode == 0, wrote.stderr
    snap = run_cli("snapshot", "create", vm, "s1")
    assert snap.code == 0, snap.stderr
    wrote = _qemu_io(source_disk, f"write -P {PATTERN} {OFFSET} {LENGTH}")
    assert wrote.returncode == 0, wrote.stderr
    # A backup's checkpoint (its dirty bitmap is in the qcow2 file) moves too.
    backup = run_cli("backup", "create", vm, "--repo", str(repo_dir), "--full", "--json")
    assert backup.code == 0, backup.stderr
    full = json.loads(backup.stdout)["id"]
    checkpoints = _virsh(host.uri, "checkpoint-list", vm, "--name").split()
    assert checkpoints
    digest = _sha256(source_disk)
    uuid = _virsh(host.uri, "domuuid", vm).strip()
    seen: list[MigrationProgress] = []

    # Not on storage both hosts see: refused without --copy-storage, naming the remedy.
    assert_one_line_error(run_cli("vm", "migrate", vm, "--to", "h2",
                                  env={"KVMOPS_DB": hosts_db}),
                          24, "local-disk", str(source_disk), "--copy-storage")
    # --dry-run names the cold rules too (the preflight is their one place).
    assert_one_line_error(run_cli("vm", "migrate", vm, "--to", "h2", "--dry-run",
                                  env={"KVMOPS_DB": hosts_db}),
                          24, "local-disk", str(source_disk), "--copy-storage")
    assert vm in _names(host.uri) and _sha256(source_disk) == digest

    result = cold_migrate(Caller.local(), vm, MigrationOptions(
        target="h2", copy_storage=True, target_pool=pool), progress=seen.append)

    target_disk = Path(pool_dir) / source_disk.name
    assert result.kind == "cold" and (result.source, result.target) == ("local", "h2")
    assert result.disks == [str(target_disk)]
    # Sparse: the holes of the metadata-preallocated qcow2 file were not sent, nor filled.
    size = target_disk.stat().st_size
    assert result.data_transferred is not None and 0 < result.data_transferred < size // 4
    assert target_disk.stat().st_blocks * 512 < size // 4
    assert _sha256(target_disk) == digest
    assert vm in _names(h2.uri) and vm not in _names(host.uri)
    assert _virsh(h2.uri, "domuuid", vm).strip() == uuid
    assert _disk_of(h2.uri, vm) == target_disk
    assert not source_disk.exists()
    assert any(f"removed from the source: {source_disk}" in n for n in result.notes)
    assert any("kernel" in n for n in result.notes)
    assert any("internal snapshot(s) moved with the disks: s1" in n for n in result.notes)
    assert _virsh(h2.uri, "snapshot-list", vm, "--name").split() == ["s1"]
    assert _virsh(h2.uri, "snapshot-current", vm, "--name").strip() == "s1"
    assert str(target_disk) in _virsh(h2.uri, "snapshot-dumpxml", vm, "s1")
    assert _virsh(h2.uri, "checkpoint-list", vm, "--name").split() == checkpoints
    assert any("checkpoints redefined on the target" in n for n in result.notes)
    phases = [p.phase for p in seen]
    assert "copy" in phases and "verify" in phases and phases[-1] == "done"
    copied = [p for p in seen if p.phase == "copy"]
    assert copied[-1].data_processed == copied[-1].data_total == size
    info = json.loads(h2.run_cli("vm", "info", vm, "--json").stdout)
    assert info["state"] == "shut off"

    # The guest boots on the target and reads the known bytes from its disk.
    started = h2.run_cli("vm", "start", vm, "--wait-agent", "240")
    assert started.code == 0, (started.stderr, h2.log_tail())
    read = h2.run_cli("guest", "exec", vm, "--", "sh", "-c",
                      f"dd if=/dev/vda bs={LENGTH} skip={OFFSET // LENGTH} count=1 "
                      "2>/dev/null | od -An -tx1 -v | tr -s ' \\n' '\\n\\n' | sort -u")
    assert read.code == 0, read.stderr
    assert read.stdout.split() == ["ab"], read.stdout
    # The backup chain goes on there: the next backup is an incremental one.
    later = run_cli("backup", "create", vm, "--host", "h2", "--repo", str(repo_dir),
                    "--incremental", "--json", env={"KVMOPS_DB": hosts_db})
    assert later.code == 0, later.stderr
    made = json.loads(later.stdout)
    assert (made["type"], made["parent"]) == ("incremental", full), later.stdout
    assert h2.run_cli("vm", "destroy", vm).code == 0

    # Back with vm migrate (the second host's pool volume read through its libvirt).
    digest = _sha256(target_disk)
    try:
        moved = run_cli("vm", "migrate", vm, "--to", "local", "--host", "h2",
                        "--copy-storage", "--target-pool", pool, "--json",
                        env={"KVMOPS_DB": hosts_db})
        assert moved.code == 0, moved.stderr
        back = json.loads(moved.stdout)
        assert (back["kind"], back["source"], back["target"]) == ("cold", "h2", "local")
        assert vm in _names(host.uri) and vm not in _names(h2.uri)
        assert _disk_of(host.uri, vm) == Path(back["disks"][0])
        assert _sha256(Path(back["disks"][0])) == digest
        assert not target_disk.exists()
        # The snapshot came back too, and reverting to it gives its bytes.
        reverted = run_cli("snapshot", "revert", vm, "s1")
        assert reverted.code == 0, reverted.stderr
        assert _qemu_io(Path(back["disks"][0]),
                        f"read -P {OLD} {OFFSET} {LENGTH}").returncode == 0
    finally:
        if vm not in _names(host.uri):
            with contextlib.suppress(Exception):
                _virsh(h2.uri, "destroy", vm)
        remove_vm(host, vm)


def test_cancelled_copy_leaves_the_source_untouched(tiny_guest: GuestImage, host: Host,
                                                   h2: NsHost, hosts_db: str,
                                                   pools: tuple[str, str]) -> None:
    pool, _ = pools
    vm = f"{SESSION_PREFIX}coldc"
    _create_on(h2, tiny_guest, vm)
    disk = _disk_of(h2.uri, vm)
    assert disk.parent == Path(h2.images_dir)  # in no pool: read through a transient one
    wrote = _qemu_io(disk, f"write -P {PATTERN} {OFFSET} {LENGTH}")
    assert wrote.returncode == 0, wrote.stderr
    before = (_virsh(h2.uri, "dumpxml", "--inactive", vm), _sha256(disk))
    seen: list[MigrationProgress] = []

    def cancelled() -> bool:
        return any(p.phase == "copy" and (p.data_processed or 0) > 0 for p in seen)

    # A running VM is refused, naming the state and the remedy.
    started = h2.run_cli("vm", "start", vm)
    assert started.code == 0, started.stderr
    with pytest.raises(StateError, match=r"is running, not shut off.*shut it down"):
        cold_migrate(Caller.local(), vm, MigrationOptions(
            target="local", copy_storage=True, target_pool=pool), source="h2")
    assert h2.run_cli("vm", "destroy", vm).code == 0

    with pytest.raises(CancelledError):
        cold_migrate(Caller.local(), vm, MigrationOptions(
            target="local", copy_storage=True, target_pool=pool), source="h2",
            progress=seen.append, cancelled=cancelled)
    assert [p.phase for p in seen if p.phase in ("copy", "verify", "define")][-1] == "copy"
    assert (_virsh(h2.uri, "dumpxml", "--inactive", vm), _sha256(disk)) == before
    assert vm in _names(h2.uri) and vm not in _names(host.uri)
    host_pools.refresh(host, pool)
    assert not host_pools.volume_exists(host, pool, disk.name)
    assert not [p for p in _virsh(h2.uri, "pool-list", "--all", "--name").split()
                if p.startswith("kvmops-xfer-")]


def test_shared_storage_moves_only_the_definition(tiny_guest: GuestImage, host: Host,
                                                  h2: NsHost, hosts_db: str,
                                                  pools: tuple[str, str], images_dir: Path
                                                  ) -> None:
    """Without --copy-storage a disk both hosts see (a pool over its directory on each)
    stays where it is: only the definition moves, and the file is neither copied nor
    removed."""
    pool, _ = pools
    shared = images_dir / "coldpool"  # the machine's pool's directory
    made = h2.run_cli("pool", "create", f"{pool}s", "--type", "dir", "--target", str(shared))
    assert made.code == 0, made.stderr
    vm = f"{SESSION_PREFIX}colds"
    try:
        created = run_cli(
            "vm", "create", vm, "--memory", "256M", "--vcpus", "1",
            "--kernel", str(tiny_guest.kernel), "--initrd", str(tiny_guest.initrd),
            "--cmdline", "console=ttyS0", "--disk", "size=64M", "--images-dir", str(shared))
        assert created.code == 0, created.stderr
        disk = _disk_of(host.uri, vm)
        digest = _sha256(disk)
        # A copy into the pool that holds the disk itself is refused (never "deleted").
        assert_one_line_error(run_cli("vm", "migrate", vm, "--to", "h2", "--copy-storage",
                                      "--target-pool", f"{pool}s",
                                      env={"KVMOPS_DB": hosts_db}),
                              24, "the target sees the disk itself",
                              "leave out --copy-storage")
        moved = run_cli("vm", "migrate", vm, "--to", "h2", "--json",
                        env={"KVMOPS_DB": hosts_db})
        assert moved.code == 0, moved.stderr
        result = json.loads(moved.stdout)
        assert (result["kind"], result["data_transferred"]) == ("cold", None)
        assert result["disks"] == [str(disk)]
        assert vm in _names(h2.uri) and vm not in _names(host.uri)
        assert _disk_of(h2.uri, vm) == disk and _sha256(disk) == digest
    finally:
        remove_vm(host, vm)
