"""The facts the migration preflight judges, read through libvirt from both hosts.

Source: the VM's XML (live when it runs, else its definition), its block jobs, its domain
job (a backup), its snapshots with memory, the networks its NICs join (a network that
hands out VFs), each disk's allocation. Target: its networks, host interfaces, storage
pools, defined VMs (names and UUIDs), free memory, domain capabilities (CPU), libvirt's
CPU compare of the VM's CPU, and for each disk or cdrom path whether one of its pools
holds the same path (storage both hosts share, or an image that is present there).

A cold migration (:func:`cold_facts`) reads more: each disk file's length and, for
qcow2, its header (the guest's size, a backing or data file: nothing probes a format), the
size of the same path on the target, the VM's persistence, saved state and snapshot kinds,
and the volume names of the pool the copy goes to.

Reads only, except a refresh of a target pool whose directory holds a path kvmops looks
for (so a file put there since the pool's last scan is seen), and of the copy's pool.
"""

from __future__ import annotations

import contextlib
from typing import Any

import libvirt
from lxml import etree

from kvmops.errors import KvmopsError, NotFoundError
from kvmops.host import pools as host_pools
from kvmops.host import transfer
from kvmops.host.connection import Host, call
from kvmops.migration.cpu import HostCpu, host_cpu, host_model_xml, parse_domain_cpu
from kvmops.migration.preflight import (
    DiskFact,
    MigrationFacts,
    PoolFact,
    TargetFacts,
    VmFacts,
    copied_disks,
    parse_domain,
    passthrough_devices,
)
from kvmops.storage import qcow2

__all__ = ["baseline_model", "cold_facts", "cpu_verdict", "gather", "host_uuid",
           "qcow2_facts", "read_disk_file", "snapshot_kind", "target_facts", "vm_facts"]

# How many first bytes of a qcow2 disk are read for its header (the first cluster, 2 MiB
# at most: QEMU's largest; usually 64 KiB).
_HEAD = 1 << qcow2.MAX_CLUSTER_BITS

_BLOCK_JOBS = {
    getattr(libvirt, "VIR_DOMAIN_BLOCK_JOB_TYPE_PULL", 1): "pull",
    getattr(libvirt, "VIR_DOMAIN_BLOCK_JOB_TYPE_COPY", 2): "copy",
    getattr(libvirt, "VIR_DOMAIN_BLOCK_JOB_TYPE_COMMIT", 3): "commit",
    getattr(libvirt, "VIR_DOMAIN_BLOCK_JOB_TYPE_ACTIVE_COMMIT", 4): "active commit",
    getattr(libvirt, "VIR_DOMAIN_BLOCK_JOB_TYPE_BACKUP", 5): "backup",
}
_OPERATIONS = {
    getattr(libvirt, "VIR_DOMAIN_JOB_OPERATION_START", 1): "start",
    getattr(libvirt, "VIR_DOMAIN_JOB_OPERATION_SAVE", 2): "save",
    getattr(libvirt, "VIR_DOMAIN_JOB_OPERATION_RESTORE", 3): "restore",
    getattr(libvirt, "VIR_DOMAIN_JOB_OPERATION_MIGRATION_IN", 4): "incoming migration",
    getattr(libvirt, "VIR_DOMAIN_JOB_OPERATION_MIGRATION_OUT", 5): "migration",
    getattr(libvirt, "VIR_DOMAIN_JOB_OPERATION_SNAPSHOT", 6): "snapshot",
    getattr(libvirt, "VIR_DOMAIN_JOB_OPERATION_SNAPSHOT_REVERT", 7): "snapshot revert",
    getattr(libvirt, "VIR_DOMAIN_JOB_OPERATION_DUMP", 8): "dump",
    getattr(libvirt, "VIR_DOMAIN_JOB_OPERATION_BACKUP", 9): "backup",
}
_RUNNING_JOBS = (libvirt.VIR_DOMAIN_JOB_BOUNDED, libvirt.VIR_DOMAIN_JOB_UNBOUNDED)


def _parse(xml: str) -> etree._Element:
    parser = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False)
    return etree.fromstring(xml.encode(), parser)


def host_uuid(host: Host) -> str | None:
    """The host's UUID from its capabilities (two connections, one host: same UUID)."""
    try:
        return _parse(host.capabilities()).findtext("host/uuid")
    except Exception:
        return None


def _job(raw: Any) -> str | None:
    """The domain's running job (a backup, a migration ...), None when there is none."""
    try:
        stats = raw.jobStats(0)
    except libvirt.libvirtError:
        return None
    if stats.get("type") not in _RUNNING_JOBS:
        return None
    op = stats.get("operation")
    return _OPERATIONS.get(op, "job") if op is not None else "job"


def _memory_snapshots(raw: Any) -> tuple[list[tuple[str, str]], int]:
    found: list[tuple[str, str]] = []
    snaps = call("listing snapshots", raw.listAllSnapshots, 0)
    for snap in snaps:
        with contextlib.suppress(libvirt.libvirtError, etree.XMLSyntaxError):
            root = _parse(snap.getXMLDesc(0))
            memory = root.find("memory")
            kind = memory.get("snapshot") if memory is not None else None
            state = root.findtext("state") or ""
            if kind in ("internal", "external"):
                found.append((snap.getName(), kind))
            elif memory is None and state in ("running", "paused", "pmsuspended"):
                found.append((snap.getName(), "internal"))  # before <memory> was written
    return found, len(snaps)


def _source_network_is_vf_pool(source: Host, name: str) -> bool:
    try:
        xml = source.network(name).XMLDesc(0)
    except Exception:
        return False
    forward = _parse(xml).find("forward")
    return forward is not None and forward.get("mode") == "hostdev"


def vm_facts(source: Host, vm: str, *, live: bool) -> VmFacts:
    """The VM's facts on the source (its live XML while it runs, else its definition;
    the running guest's jobs and snapshots only with ``live``)."""
    domain = source.lookup(vm)
    active = domain.is_active()
    xml = domain.xml()
    facts = parse_domain(xml)
    facts.active = active
    raw = domain.raw
    if active and domain.is_persistent():
        now = set(passthrough_devices(xml))
        facts.config_only_devices = [d for d in passthrough_devices(domain.xml(inactive=True))
                                     if d not in now]
    for nic in facts.nics:
        if nic.type == "network" and nic.source:
            nic.vf_network = _source_network_is_vf_pool(source, nic.source)
    for disk in facts.disks:
        if disk.type == "volume" and disk.pool and disk.volume:
            with contextlib.suppress(libvirt.libvirtError):
                disk.path = str(source.conn.storagePoolLookupByName(disk.pool)
                                .storageVolLookupByName(disk.volume).path())
        if disk.path and disk.device in ("disk", "lun"):
            with contextlib.suppress(libvirt.libvirtError):
                _capacity, allocation, physical = raw.blockInfo(disk.target, 0)
                disk.size = int(max(allocation, physical if not active else 0))
    if live and active:
        for disk in facts.disks:
            with contextlib.suppress(Exception):
                job = raw.blockJobInfo(disk.target, 0)
                if job:
                    facts.block_jobs[disk.target] = _BLOCK_JOBS.get(job.get("type"), "job")
        facts.job = _job(raw)
    facts.memory_snapshots, facts.snapshots = _memory_snapshots(raw)
    return facts


def _pools(target: Host) -> dict[str, PoolFact]:
    pools: dict[str, PoolFact] = {}
    for pool in call("listing storage pools", target.conn.listAllStoragePools, 0):
        with contextlib.suppress(libvirt.libvirtError, etree.XMLSyntaxError):
            active = bool(pool.isActive())
            info = pool.info()
            root = _parse(pool.XMLDesc(0))
            pools[pool.name()] = PoolFact(name=pool.name(), active=active,
                                          available=int(info[3]) if active else None,
                                          path=root.findtext("target/path"),
                                          type=root.get("type"))
    return pools


def _interfaces(target: Host) -> set[str] | None:
    try:
        return {i.name() for i in target.conn.listAllInterfaces(0)}
    except libvirt.libvirtError:
        pass
    try:  # no interface driver: the node devices of class net
        devices = target.conn.listAllDevices(libvirt.VIR_CONNECT_LIST_NODE_DEVICES_CAP_NET)
        return {str(_parse(d.XMLDesc(0)).findtext("capability/interface")) for d in devices}
    except libvirt.libvirtError:
        return None


def _domcaps(host: Host, arch: str | None, machine: str | None, virt: str | None
             ) -> str | None:
    try:
        return str(host.conn.getDomainCapabilities(None, arch, machine, virt, 0))
    except libvirt.libvirtError:
        return None


def target_facts(target: Host, vm: VmFacts, *, domain_xml: str) -> TargetFacts:
    """What the target has for ``vm`` (paths of its disks resolved against its pools)."""
    facts = TargetFacts()
    for net in call("listing networks", target.conn.listAllNetworks, 0):
        with contextlib.suppress(libvirt.libvirtError, etree.XMLSyntaxError):
            facts.networks[net.name()] = bool(net.isActive())
            forward = _parse(net.XMLDesc(0)).find("forward")
            if forward is not None and forward.get("mode") == "hostdev":
                facts.hostdev_networks.append(net.name())
    facts.interfaces = _interfaces(target)
    facts.pools = _pools(target)
    for dom in call("listing VMs", target.conn.listAllDomains, 0):
        with contextlib.suppress(libvirt.libvirtError):
            facts.domains[dom.name()] = dom.UUIDString()
    facts.free_memory = target.memory_available()
    for disk in vm.disks:
        if disk.path and disk.type != "network":
            disk.on_target = host_pools.pool_holding(target, disk.path)
    if vm.active and vm.cpu is not None:
        root = _parse(domain_xml)
        os_type = root.find("os/type")
        arch = os_type.get("arch") if os_type is not None else None
        machine = os_type.get("machine") if os_type is not None else None
        virt = root.get("type")
        caps = _domcaps(target, arch, machine, virt)
        facts.cpu = host_cpu(caps) if caps else None
        if vm.cpu.xml and vm.cpu.mode in ("custom", "host-model"):
            facts.cpu_verdict = cpu_verdict(target, arch, machine, virt, vm.cpu.xml)
    return facts


def cpu_verdict(target: Host, arch: str | None, machine: str | None, virt: str | None,
             cpu_xml: str) -> str | None:
    """Why ``target`` cannot give a guest the CPU ``cpu_xml``, by libvirt's
    ``virConnectCompareHypervisorCPU`` there (None: it can, or libvirt cannot tell)."""
    try:
        verdict = target.conn.compareHypervisorCPU(None, arch, machine, virt, cpu_xml, 0)
    except libvirt.libvirtError:
        return None
    if verdict != libvirt.VIR_CPU_COMPARE_INCOMPATIBLE:
        return None
    try:
        target.conn.compareHypervisorCPU(
            None, arch, machine, virt, cpu_xml,
            libvirt.VIR_CONNECT_COMPARE_CPU_FAIL_INCOMPATIBLE)
    except libvirt.libvirtError as err:
        return (err.get_error_message() or str(err)).strip()
    return "libvirt says the CPU is incompatible"


def baseline_model(target: Host, cpus: list[HostCpu], arch: str | None,
                   machine: str | None, virt: str | None) -> str | None:
    """libvirt's baseline (``virConnectBaselineHypervisorCPU``, computed on ``target``)
    of the hosts' host-model CPUs: the model of the richest CPU all of them can run."""
    xmls = [x for x in (host_model_xml(c) for c in cpus) if x]
    if not xmls or len(xmls) != len(cpus):
        return None
    try:
        xml = target.conn.baselineHypervisorCPU(None, arch, machine, virt, xmls, 0)
    except libvirt.libvirtError:
        return None
    found = parse_domain_cpu(f"<domain>{xml}</domain>")
    return found.model if found else None


def gather(source: Host, target: Host, vm: str, *, live: bool) -> MigrationFacts:
    """Everything the preflight rules read, from both hosts."""
    domain = source.lookup(vm)
    xml = domain.xml()
    facts = vm_facts(source, vm, live=live)
    there = target_facts(target, facts, domain_xml=xml)
    result = MigrationFacts(vm=facts, target=there)
    if there.cpu is not None and (there.cpu_verdict or facts.cpu is not None):
        root = _parse(xml)
        os_type = root.find("os/type")
        caps = _domcaps(source, os_type.get("arch") if os_type is not None else None,
                        os_type.get("machine") if os_type is not None else None,
                        root.get("type"))
        result.source_cpu = host_cpu(caps) if caps else None
        if there.cpu_verdict and result.source_cpu is not None:
            model = baseline_model(
                target, [result.source_cpu, there.cpu],
                os_type.get("arch") if os_type is not None else None,
                os_type.get("machine") if os_type is not None else None, root.get("type"))
            # Suggested by name only when both hosts run that model as it is (a baseline
            # with features disabled is not); else the rules name a model both list.
            if model and there.cpu.models.get(model) and result.source_cpu.models.get(model):
                result.baseline_cpu = model
    return result


# --------------------------------------------------------------------------- cold
def qcow2_facts(disk: DiskFact, head: bytes) -> None:
    """What the first bytes of the qcow2 file ``disk`` say: the guest's size, a backing
    or data file, or why the header cannot be read."""
    try:
        header = qcow2.parse(head)
    except qcow2.HeaderError as err:
        disk.header_error = str(err)
        return
    disk.backing, disk.data_file = header.backing, header.data_file
    disk.capacity = header.virtual_size


def read_disk_file(host: Host, disk: DiskFact, *, local: bool) -> None:
    """The file of ``disk`` on ``host`` (``local``: this machine): its length, and for
    qcow2 its header's facts; a missing file is ``unreadable``."""
    if disk.path is None:
        return
    try:
        with transfer.open_disk(host, disk.path, local=local) as found:
            disk.length = disk.capacity = found.length
            if disk.fmt == "qcow2":
                qcow2_facts(disk, found.head(_HEAD))
    except NotFoundError as err:
        disk.unreadable = err.message


def snapshot_kind(xml: str) -> tuple[str, str | None]:
    """A snapshot's name, and what makes it external (None: internal)."""
    root = _parse(xml)
    external = [d.get("name", "?") for d in root.findall("disks/disk")
                if d.get("snapshot") == "external"]
    memory = root.find("memory")
    if external:
        return root.findtext("name") or "?", "disks " + ", ".join(external)
    if memory is not None and memory.get("snapshot") == "external":
        return root.findtext("name") or "?", "its memory file"
    return root.findtext("name") or "?", None


def cold_facts(source: Host, target: Host, facts: MigrationFacts, *,
               pool: str | None) -> None:
    """Add to ``facts`` what only a cold migration reads (see the module's doc);
    ``pool``: the target's pool the disks are copied into (None: no copy)."""
    from kvmops.host import remote

    vm = facts.vm
    domain = source.lookup(vm.name)
    vm.persistent = domain.is_persistent()
    vm.managed_save = vm.persistent and domain.has_managed_save()
    for snap in domain.snapshots():
        with contextlib.suppress(KvmopsError, libvirt.libvirtError, etree.XMLSyntaxError):
            name, external = snapshot_kind(snap.xml())
            if external:
                vm.external_snapshots.append((name, external))
            else:
                vm.internal_snapshots.append(name)
    local = not remote.is_remote(source.uri)
    for disk in copied_disks(vm):
        if disk.type == "file":
            read_disk_file(source, disk, local=local)
        if pool is None and disk.on_target is not None and disk.path:
            disk.length_on_target = transfer.length_at(target, disk.path)
    found = facts.target.pools.get(pool or "")
    if pool is not None and found is not None and found.active:
        with contextlib.suppress(libvirt.libvirtError):
            handle = target.conn.storagePoolLookupByName(pool)
            handle.refresh(0)
            facts.target.volumes[pool] = {str(n) for n in handle.listVolumes()}
