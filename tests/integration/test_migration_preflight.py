"""The migration preflight (issue 12 item 3) against the real two daemons: this machine's
libvirtd (the source) and a namespaced second host (the target, with its own images
directory: the machine's test images directory is private to the source).

One preflight names every blocker at once, each naming the object and the host with a
remedy. Made real here: local disk without --copy-storage, network and bridge missing on
the target, a --target-pool the target lacks, a cdrom image the target does not have,
a VM of the same name defined on the target, host devices and VF NICs (in the definition
of a shut-off VM: never started, so the PCI addresses need not exist), a running block job
(a block copy that stays mirroring), a running backup (pull mode: it lasts until
aborted), a snapshot with memory (internal, of the running guest), the same libvirt host
on both ends; libvirt's CPU compare and baseline on the target; and end to end through
``kvmops vm migrate --dry-run``, the VF remedy naming a kvmops SR-IOV pool of the target
(this machine, with a simulated PF). What the two daemons
cannot differ in (CPU models, free memory) is in tests/unit/test_migration_preflight.py.
One guest boots for the module."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from lxml import etree

from kvmops.host import migration_facts
from kvmops.host.connection import Host
from kvmops.migration.cpu import host_cpu
from kvmops.migration.model import MigrationOptions, Preflight
from kvmops.services.caller import Caller
from kvmops.services.migration_checks import preflight
from tests.conftest import SESSION_PREFIX, assert_one_line_error, run_cli
from tests.integration.nshost import NsHost, second_host

DATA = Path(__file__).parents[1] / "unit" / "data" / "migration"
NET = f"{SESSION_PREFIX}pfnet"
BRIDGE = "kvtpf-nobr"
VF_MAC = "52:54:00:5f:00:01"


def _virsh(uri: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["virsh", "-c", uri, *args], capture_output=True, text=True,
                          timeout=120, check=False)


@pytest.fixture(scope="module")
def h2() -> Iterator[NsHost]:
    with second_host(f"{SESSION_PREFIX}pf") as found:
        yield found


@pytest.fixture(scope="module")
def target(h2: NsHost) -> Iterator[Host]:
    with Host(h2.uri) as conn:
        yield conn


def _run(host: Host, target: Host, vm: str, kind: str, **options: object) -> Preflight:
    return preflight(Caller.local(), host, target, vm,
                     MigrationOptions(target="h2", **options),  # type: ignore[arg-type]
                     source_name="local", kind=kind)  # type: ignore[arg-type]


def _blockers(result: Preflight, code: str) -> list[str]:
    """The messages of the blockers with ``code`` (each has a remedy)."""
    found = [b for b in result.blockers if b.code == code]
    assert all(b.remedy for b in found), found
    return [b.message for b in found]


def _pool(target: Host, name: str, path: Path) -> None:
    """A transient directory pool on the target (gone with its daemon)."""
    path.mkdir(parents=True, exist_ok=True)
    target.conn.storagePoolCreateXML(
        f"<pool type='dir'><name>{name}</name><target><path>{path}</path></target></pool>", 0)


# --------------------------------------------------------------------------- shut off
@pytest.fixture(scope="module")
def cold_vm(vm_factory: Callable[..., str], host: Host, target: Host, images_dir: Path
            ) -> Iterator[str]:
    """A shut-off VM (disk in the machine's private images directory) whose definition
    has: a cdrom image only the machine has, a NIC on a network only the machine has, a
    NIC on a bridge the target lacks, a VF NIC and a PCI host device; and a VM of the same
    name defined on the target."""
    name = vm_factory()
    iso = images_dir / f"{SESSION_PREFIX}pf.iso"
    iso.write_bytes(b"\0" * 4096)
    host.conn.networkDefineXML(f"<network><name>{NET}</name></network>")
    try:
        root = etree.fromstring(host.lookup(name).xml(inactive=True).encode())
        devices = root.find("devices")
        assert devices is not None
        for xml in (
            f"<disk type='file' device='cdrom'><driver name='qemu' type='raw'/>"
            f"<source file='{iso}'/><target dev='sda' bus='sata'/><readonly/></disk>",
            f"<interface type='network'><mac address='52:54:00:5f:00:02'/>"
            f"<source network='{NET}'/><model type='virtio'/></interface>",
            f"<interface type='bridge'><mac address='52:54:00:5f:00:03'/>"
            f"<source bridge='{BRIDGE}'/><model type='virtio'/></interface>",
            f"<interface type='hostdev' managed='yes'><mac address='{VF_MAC}'/><source>"
            "<address type='pci' domain='0x0000' bus='0x7e' slot='0x02' function='0x1'/>"
            "</source></interface>",
            "<hostdev mode='subsystem' type='pci' managed='yes'><source>"
            "<address domain='0x0000' bus='0x7e' slot='0x00' function='0x0'/></source>"
            "</hostdev>",
        ):
            devices.append(etree.fromstring(xml))
        host.conn.defineXML(etree.tostring(root, encoding="unicode"))
        target.conn.defineXML(f"<domain type='qemu'><name>{name}</name><memory>65536"
                              "</memory><os><type arch='x86_64'>hvm</type></os></domain>")
        yield name
    finally:
        with contextlib.suppress(Exception):
            target.conn.lookupByName(name).undefine()
        with contextlib.suppress(Exception):
            host.conn.networkLookupByName(NET).undefine()
        iso.unlink(missing_ok=True)


@pytest.fixture(scope="module")
def cold_result(cold_vm: str, host: Host, target: Host) -> Preflight:
    """One cold preflight of ``cold_vm`` to a pool the target lacks."""
    return _run(host, target, cold_vm, "cold", copy_storage=True, target_pool="nope")


def test_every_blocker_at_once_cold(cold_result: Preflight, cold_vm: str) -> None:
    assert not cold_result.ok and cold_result.vm == cold_vm
    assert (cold_result.source, cold_result.target, cold_result.kind) == ("local", "h2",
                                                                          "cold")
    assert sorted(b.code for b in cold_result.blockers) == sorted(
        ["name-clash", "hostdev", "vf", "network", "bridge", "pool", "cdrom"])


def test_name_clash(cold_result: Preflight, cold_vm: str) -> None:
    assert _blockers(cold_result, "name-clash") == [
        f"a VM named '{cold_vm}' is already defined on host h2"]


def test_hostdev_and_vf_read_from_the_definition(cold_result: Preflight) -> None:
    [hostdev] = _blockers(cold_result, "hostdev")
    assert "pci host device 0000:7e:00.0" in hostdev and "host local" in hostdev
    [vf] = _blockers(cold_result, "vf")
    assert VF_MAC in vf and "0000:7e:02.1" in vf
    remedy = next(b.remedy for b in cold_result.blockers if b.code == "vf")
    assert remedy.startswith("detach the VF ('kvmops vm nic remove")


def test_network_and_bridge_missing_on_the_target(cold_result: Preflight) -> None:
    assert _blockers(cold_result, "network") == [
        f"network '{NET}' (NIC 52:54:00:5f:00:02) does not exist on host h2"]
    assert _blockers(cold_result, "bridge") == [
        f"bridge '{BRIDGE}' (NIC 52:54:00:5f:00:03) does not exist on host h2"]


def test_target_pool_missing(cold_result: Preflight) -> None:
    assert _blockers(cold_result, "pool") == [
        "storage pool 'nope' does not exist on host h2"]


def test_cdrom_image_not_on_the_target(cold_result: Preflight, images_dir: Path,
                                       host: Host, target: Host, cold_vm: str) -> None:
    [message] = _blockers(cold_result, "cdrom")
    assert f"{SESSION_PREFIX}pf.iso" in message and "host h2" in message
    # Once a pool of the target holds the image (the same path), it is present there.
    _pool(target, f"{SESSION_PREFIX}pfimg", images_dir)
    try:
        again = _run(host, target, cold_vm, "cold")
        assert not _blockers(again, "cdrom") and not _blockers(again, "pool")
    finally:
        pool = target.conn.storagePoolLookupByName(f"{SESSION_PREFIX}pfimg")
        pool.destroy()


def test_live_of_a_shut_off_vm(cold_vm: str, host: Host, target: Host, images_dir: Path
                               ) -> None:
    """Kind live on a shut-off VM: the state, and its local disk (no --copy-storage)."""
    result = _run(host, target, cold_vm, "live")
    assert _blockers(result, "state") == [
        f"VM '{cold_vm}' is shut off on host local: a live migration moves a running VM"]
    [local] = _blockers(result, "local-disk")
    assert local.startswith(f"disk vda ({images_dir}/") and "is local to host local" in local


def test_same_host(cold_vm: str, host: Host) -> None:
    with Host(host.uri) as again:
        result = _run(host, again, cold_vm, "live")
    assert [b.code for b in result.blockers] == ["same-host"]


# --------------------------------------------------------------------------- running
@pytest.fixture(scope="module")
def live_vm(vm_factory: Callable[..., str]) -> str:
    return vm_factory(start=True)


@pytest.fixture(scope="module")
def target_pool(target: Host, h2: NsHost) -> str:
    name = f"{SESSION_PREFIX}pfpool"
    _pool(target, name, Path(h2.images_dir) / "pool")
    return name


def test_running_vm_with_copy_storage_is_clear(live_vm: str, host: Host, target: Host,
                                               target_pool: str) -> None:
    """No false blocker: CPU (libvirt's compare on the target), memory, networks and the
    pool all fine; without --copy-storage its disk is local."""
    result = _run(host, target, live_vm, "live", copy_storage=True, target_pool=target_pool)
    assert result.ok, result.blockers
    plain = _run(host, target, live_vm, "live")
    assert [b.code for b in plain.blockers] == ["local-disk"]
    assert "disk vda (" in plain.blockers[0].message
    assert "--copy-storage" in plain.blockers[0].remedy


def test_vf_in_the_definition_only_of_a_running_vm_warns(live_vm: str, host: Host,
                                                         target: Host) -> None:
    """A running VM is judged by its live XML: a VF NIC added to its definition only
    does not block the live migration, it is a warning."""
    domain = host.conn.lookupByName(live_vm)
    nic = (f"<interface type='hostdev' managed='yes'><mac address='{VF_MAC}'/><source>"
           "<address type='pci' domain='0x0000' bus='0x7e' slot='0x02' function='0x1'/>"
           "</source></interface>")
    domain.attachDeviceFlags(nic, 2)  # VIR_DOMAIN_AFFECT_CONFIG
    try:
        result = _run(host, target, live_vm, "live", copy_storage=True)
        assert not _blockers(result, "vf") and not _blockers(result, "hostdev")
        assert [VF_MAC in w for w in result.warnings] == [True]
    finally:
        domain.detachDeviceFlags(nic, 2)


def _wait_for(what: str, ready: Callable[[], bool]) -> None:
    deadline = time.monotonic() + 120
    while not ready():
        assert time.monotonic() < deadline, f"{what} did not start"
        time.sleep(0.2)


def test_running_block_job(live_vm: str, host: Host, target: Host, images_dir: Path
                           ) -> None:
    """A block copy stays mirroring until it is ended: a running block job."""
    dest = images_dir / f"{SESSION_PREFIX}pf-copy.qcow2"
    started = _virsh(host.uri, "blockcopy", live_vm, "vda", str(dest), "--transient-job")
    assert started.returncode == 0, started.stderr
    try:
        domain = host.conn.lookupByName(live_vm)
        _wait_for("the block copy", lambda: bool(domain.blockJobInfo("vda", 0)))
        result = _run(host, target, live_vm, "live", copy_storage=True)
        assert _blockers(result, "block-job") == [
            f"disk vda of VM '{live_vm}' has a running block job (copy) on host local"]
    finally:
        _virsh(host.uri, "blockjob", live_vm, "vda", "--abort")
        dest.unlink(missing_ok=True)


def test_running_backup(live_vm: str, host: Host, target: Host, images_dir: Path) -> None:
    """A pull-mode backup lasts until it is aborted: a running backup job."""
    scratch = images_dir / f"{SESSION_PREFIX}pf-scratch.qcow2"
    with socket.socket() as probe:  # a free loopback port for the NBD export
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    domain = host.conn.lookupByName(live_vm)
    domain.backupBegin(
        f"<domainbackup mode='pull'><server transport='tcp' name='127.0.0.1' "
        f"port='{port}'/><disks>"
        f"<disk name='vda' type='file'><scratch file='{scratch}'/></disk></disks>"
        "</domainbackup>", None, 0)
    try:
        result = _run(host, target, live_vm, "live", copy_storage=True)
        assert _blockers(result, "backup") == [
            f"a backup of VM '{live_vm}' is running on host local"]
    finally:
        with contextlib.suppress(Exception):
            domain.abortJob()
        scratch.unlink(missing_ok=True)


def test_snapshot_with_memory(live_vm: str, host: Host, target: Host) -> None:
    """An internal snapshot of the running guest holds its memory."""
    made = _virsh(host.uri, "snapshot-create-as", live_vm, "pfmem")
    assert made.returncode == 0, made.stderr
    try:
        result = _run(host, target, live_vm, "live", copy_storage=True)
        [message] = _blockers(result, "memory-snapshot")
        assert "'pfmem'" in message and "(internal)" in message and "host local" in message
    finally:
        _virsh(host.uri, "snapshot-delete", live_vm, "pfmem")


def test_cpu_compare_and_baseline_on_the_target(target: Host) -> None:
    """libvirt's compare on the target names what a CPU model lacks there (its QEMU runs
    TCG: Skylake-Server is not usable), a model it runs passes; libvirt's baseline of two
    captured host models is computed there."""
    verdict = migration_facts.cpu_verdict(
        target, "x86_64", None, "qemu",
        "<cpu mode='custom' match='exact'><model>Skylake-Server</model></cpu>")
    assert verdict is not None and "avx512f" in verdict
    assert migration_facts.cpu_verdict(
        target, "x86_64", None, "qemu",
        "<cpu mode='custom' match='exact'><model>qemu64</model></cpu>") is None
    caps = [host_cpu((DATA / f).read_text())
            for f in ("domcaps-qemu.xml", "domcaps-qemu-older.xml")]
    assert migration_facts.baseline_model(target, caps, "x86_64", None, "qemu")


# --------------------------------------------------------------------------- end to end
def test_vf_remedy_names_a_free_vf_pool_of_the_target(target: Host, h2: NsHost,
                                                      tmp_path: Path) -> None:
    """``kvmops vm migrate VM --host h2 --to local --dry-run``: a shut-off VM on the
    second host holds a VF; this machine (the target) has a kvmops SR-IOV pool (a
    simulated PF): the one-line refusal offers detach -> migrate -> a VF of that pool."""
    env = {"KVMOPS_SYSFS_ROOT": str(tmp_path / "sys"),
           "KVMOPS_DB": f"sqlite:///{tmp_path / 'k.db'}"}
    pool = f"{SESSION_PREFIX}pfvfs"
    for args in (("dev", "fake-sriov", str(tmp_path / "sys"), "--pf", "kvtpfeth0", "--vfs",
                  "2", "--driver", "ixgbe", "--bus", "120"),
                 ("sriov", "pool", "create", pool, "--pf", "kvtpfeth0"),
                 ("host", "add", "h2", h2.uri)):
        done = run_cli(*args, env=env)
        assert done.code == 0, done.stderr
    vm = f"{SESSION_PREFIX}pfvf"
    target.conn.defineXML(
        f"<domain type='qemu'><name>{vm}</name><memory>65536</memory><os><type "
        "arch='x86_64'>hvm</type></os><devices><interface type='hostdev' managed='yes'>"
        f"<mac address='{VF_MAC}'/><source><address type='pci' domain='0x0000' bus='0x7e' "
        "slot='0x02' function='0x1'/></source></interface></devices></domain>")
    try:
        refused = run_cli("vm", "migrate", vm, "--host", "h2", "--to", "local", "--dry-run",
                          env=env)
        assert_one_line_error(
            refused, 24, f"vf: NIC {VF_MAC} of VM '{vm}' is an SR-IOV VF (PCI 0000:7e:02.1) "
            "of host h2", f"detach the VF ('kvmops vm nic remove {vm} {VF_MAC}'), migrate, "
            f"attach a free VF from the target's pool {pool} ('kvmops vm nic add {vm} "
            f"--vf-pool {pool} --host local')")
    finally:
        target.conn.lookupByName(vm).undefine()
