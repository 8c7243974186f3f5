"""The migration preflight's rules: what both hosts say (facts) in, every blocker out.

Pure: :mod:`kvmops.host.migration_facts` reads the facts through libvirt, and
:mod:`kvmops.services.migration_checks` joins the two. Every rule runs, so the operator
sees every blocker at once, each naming the object and the host, with its remedy; the
codes are stable (:class:`kvmops.migration.model.Blocker`).

Which XML counts: the live XML of a running VM (what moves), the persistent definition of
a shut-off one. A host device only in the definition of a running VM does not block a live
migration; it is a warning (the VM would not start on the target later).

Live-only rules (they concern the running guest): state (must run), CPU, memory, block
jobs, a running backup, snapshots with memory, local disks without ``--copy-storage``.
Cold migration copies the disks of a shut-off VM: name clash, host devices, networks,
bridges, pools and cdrom images apply to both. Cold-only rules (the one place for them:
:mod:`kvmops.services.coldmigration` only plans the copy): state (shut off, persistent,
no saved memory), external snapshots, disks it cannot copy (not a file, another format,
missing, a backing or data file), the copy's pool (a file pool with room, ``default``
unless ``--target-pool``), a volume of the same name left there or the disk itself in
that pool; without ``--copy-storage`` every disk on storage the target sees, as long.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from lxml import etree

from kvmops.migration.cpu import DomainCpu, HostCpu, cpu_problems, parse_domain_cpu
from kvmops.migration.model import Blocker, Kind, MigrationOptions, Preflight
from kvmops.sizes import format_size
from kvmops.storage.model import FILE_TYPES, VOLUME_RE

__all__ = ["DEFAULT_POOL", "DiskFact", "HostdevFact", "MigrationFacts", "NicFact", "PoolFact",
           "TargetFacts", "VmFacts", "check", "copied_disks", "copy_pool", "parse_domain",
           "volume_names"]

#: The pool a cold migration copies into when the operator names none (libvirt's usual).
DEFAULT_POOL = "default"


@dataclass
class DiskFact:
    """One ``<disk>`` of the VM."""

    target: str  # vda, hdc ...
    device: str  # disk, cdrom, floppy, lun
    type: str  # file, block, network, volume, dir
    path: str | None  # the file or device (None: network, or an empty drive)
    readonly: bool = False
    shareable: bool = False
    pool: str | None = None  # type='volume': the source pool
    volume: str | None = None  # type='volume': the volume in it
    size: int | None = None  # bytes a copy moves (allocation), when known
    on_target: str | None = None  # the target's pool that holds the same path
    fmt: str = "raw"  # <driver type> (what a copy creates: never probed)
    # Read from the file for a cold migration (host side: migration_facts.read_disk_file):
    length: int | None = None  # bytes of the file
    capacity: int | None = None  # the disk's size as the guest sees it
    backing: bool = False  # a qcow2 file naming a backing file
    data_file: bool = False  # a qcow2 file keeping its data in an external file
    unreadable: str | None = None  # why the file cannot be read (missing ...)
    header_error: str | None = None  # why its qcow2 header cannot be parsed
    length_on_target: int | None = None  # the same path's size as the target sees it

    @property
    def local(self) -> bool:
        """Seen only by the source (a network disk is reached from any host)."""
        return self.type != "network" and self.path is not None and self.on_target is None


@dataclass
class NicFact:
    """One ``<interface>``: type network / bridge / direct / hostdev / user ..."""

    type: str
    mac: str
    source: str | None  # network, bridge or host device name
    pci: str | None = None  # type='hostdev': the VF's PCI address
    vf_network: bool = False  # a libvirt network handing out VFs (forward mode hostdev)


@dataclass
class HostdevFact:
    """One ``<hostdev>`` (PCI, USB, SCSI, mdev)."""

    type: str
    address: str


@dataclass
class VmFacts:
    """The VM on the source host."""

    name: str
    uuid: str
    active: bool
    memory: int  # bytes (the most the guest may use)
    disks: list[DiskFact] = field(default_factory=list)
    nics: list[NicFact] = field(default_factory=list)
    hostdevs: list[HostdevFact] = field(default_factory=list)
    cpu: DomainCpu | None = None
    config_only_devices: list[str] = field(default_factory=list)  # running VM: definition only
    block_jobs: dict[str, str] = field(default_factory=dict)  # disk -> job kind
    job: str | None = None  # the running domain job ("backup", "migration out" ...)
    memory_snapshots: list[tuple[str, str]] = field(default_factory=list)  # (name, kind)
    snapshots: int = 0
    # Read for a cold migration:
    persistent: bool = True
    managed_save: bool = False
    external_snapshots: list[tuple[str, str]] = field(default_factory=list)  # (name, what)
    internal_snapshots: list[str] = field(default_factory=list)  # names


@dataclass
class PoolFact:
    """A storage pool of the target."""

    name: str
    active: bool
    available: int | None  # bytes
    path: str | None
    type: str | None = None  # dir, fs, netfs, logical ... (None: not known)


@dataclass
class TargetFacts:
    """What the target host has."""

    networks: dict[str, bool] = field(default_factory=dict)  # name -> active
    hostdev_networks: list[str] = field(default_factory=list)  # VF networks (forward hostdev)
    interfaces: set[str] | None = None  # host interfaces (None: libvirt cannot list them)
    pools: dict[str, PoolFact] = field(default_factory=dict)
    domains: dict[str, str] = field(default_factory=dict)  # name -> UUID
    free_memory: int | None = None  # bytes
    cpu: HostCpu | None = None  # from its domain capabilities
    cpu_verdict: str | None = None  # libvirt's compare: why incompatible (None: fine)
    sriov_pools: list[str] = field(default_factory=list)  # kvmops SR-IOV pools there
    volumes: dict[str, set[str]] = field(default_factory=dict)  # cold copy's pool -> names


@dataclass
class MigrationFacts:
    """Everything the rules read."""

    vm: VmFacts
    target: TargetFacts
    source_cpu: HostCpu | None = None
    baseline_cpu: str | None = None  # libvirt's baseline of both host models, if computed


# --------------------------------------------------------------------------- XML
def _parse(xml: str) -> etree._Element:
    parser = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False)
    return etree.fromstring(xml.encode(), parser)


def _memory_bytes(root: etree._Element) -> int:
    node = root.find("memory")
    if node is None or not (node.text or "").strip():
        return 0
    units = {"b": 1, "bytes": 1, "k": 1024, "kib": 1024, "kb": 1000, "m": 1024**2,
             "mib": 1024**2, "mb": 1000**2, "g": 1024**3, "gib": 1024**3, "gb": 1000**3,
             "t": 1024**4, "tib": 1024**4, "tb": 1000**4}
    return int((node.text or "0").strip()) * units.get((node.get("unit") or "KiB").lower(), 1024)


def _pci(addr: etree._Element | None) -> str:
    if addr is None:
        return "?"
    try:
        return "{:04x}:{:02x}:{:02x}.{:x}".format(
            *(int(addr.get(k, "0"), 0) for k in ("domain", "bus", "slot", "function")))
    except ValueError:
        return "?"


def _hostdev(node: etree._Element) -> HostdevFact:
    kind = node.get("type", "?")
    source = node.find("source")
    if kind == "pci":
        return HostdevFact("pci", _pci(source.find("address") if source is not None else None))
    if kind == "usb" and source is not None:
        vendor, product = source.find("vendor"), source.find("product")
        if vendor is not None and product is not None:
            return HostdevFact("usb", f"{vendor.get('id')}:{product.get('id')}")
        addr = source.find("address")
        if addr is not None:
            return HostdevFact("usb", f"bus {addr.get('bus')} device {addr.get('device')}")
    if kind == "mdev" and source is not None:
        addr = source.find("address")
        return HostdevFact("mdev", addr.get("uuid", "?") if addr is not None else "?")
    if kind == "scsi" and source is not None:
        adapter, addr = source.find("adapter"), source.find("address")
        where = adapter.get("name", "?") if adapter is not None else "?"
        if addr is not None:
            where += f" {addr.get('bus')}:{addr.get('target')}:{addr.get('unit')}"
        return HostdevFact("scsi", where)
    return HostdevFact(kind, "?")


def parse_domain(xml: str) -> VmFacts:
    """The static part of the facts from a domain XML (state, jobs and target lookups are
    the host side's)."""
    root = _parse(xml)
    disks = []
    for d in root.findall("devices/disk"):
        src = d.find("source")
        dtype = d.get("type", "file")
        path = None
        pool = volume = None
        if src is not None:
            path = src.get("file") or src.get("dev") or src.get("dir")
            if dtype == "volume":
                pool, volume = src.get("pool"), src.get("volume")
                path = None
            elif dtype == "network":
                path = None
        target = d.find("target")
        driver = d.find("driver")
        disks.append(DiskFact(target=target.get("dev", "?") if target is not None else "?",
                              device=d.get("device", "disk"), type=dtype, path=path,
                              readonly=d.find("readonly") is not None,
                              shareable=d.find("shareable") is not None, pool=pool,
                              volume=volume, fmt=(driver.get("type") if driver is not None
                                                  else None) or "raw"))
    nics = []
    for n in root.findall("devices/interface"):
        ntype = n.get("type", "?")
        mac_node = n.find("mac")
        mac = mac_node.get("address", "?") if mac_node is not None else "?"
        src = n.find("source")
        source = None
        pci = None
        if src is not None:
            source = src.get("network") or src.get("bridge") or src.get("dev")
            if ntype == "hostdev":
                pci = _pci(src.find("address"))
        nics.append(NicFact(type=ntype, mac=mac, source=source, pci=pci))
    hostdevs = [_hostdev(h) for h in root.findall("devices/hostdev")]
    return VmFacts(name=root.findtext("name") or "?", uuid=root.findtext("uuid") or "",
                   active=root.get("id") not in (None, "-1"), memory=_memory_bytes(root),
                   disks=disks, nics=nics, hostdevs=hostdevs, cpu=parse_domain_cpu(xml))


def passthrough_devices(xml: str) -> list[str]:
    """The host devices and VF NICs of a domain XML, as the warnings name them."""
    facts = parse_domain(xml)
    return ([f"{h.type} host device {h.address}" for h in facts.hostdevs]
            + [f"VF NIC {n.mac} ({n.pci})" for n in facts.nics if n.type == "hostdev"])


def copied_disks(vm: VmFacts) -> list[DiskFact]:
    """The disks a cold migration moves: every disk and lun with a source other than the
    network (cdroms and floppies stay: their images must be present on the target)."""
    return [d for d in vm.disks
            if d.device in ("disk", "lun") and d.path is not None and d.type != "network"]


def copy_pool(options: MigrationOptions, kind: Kind) -> str | None:
    """The target's pool the disks are copied into (None: nothing is copied into a pool
    named here; a live copy without ``--target-pool`` uses the pool of the same path)."""
    if not options.copy_storage:
        return None
    return options.target_pool or (DEFAULT_POOL if kind == "cold" else None)


def volume_names(vm: str, disks: Sequence[tuple[str, str, str]]) -> list[str]:
    """Each copied disk's volume name in the target pool, for ``(device, file, format)``:
    its file's name, or -- when that is not a volume name or two disks share it --
    ``VM-DEV.FORMAT``."""
    used: set[str] = set()
    names = []
    for device, path, fmt in disks:
        name = os.path.basename(path)
        if not VOLUME_RE.match(name) or name in used:
            name = f"{vm}-{device}.{fmt}"
        used.add(name)
        names.append(name)
    return names


# --------------------------------------------------------------------------- rules
def _size(value: int | None) -> str:
    return format_size(value) if value is not None else "?"


def _vf_remedy(vm: str, mac: str, target: str, pools: list[str]) -> str:
    detach = f"detach the VF ('kvmops vm nic remove {vm} {mac}'), migrate, "
    if pools:
        return (detach + f"attach a free VF from the target's pool {pools[0]} ('kvmops vm "
                f"nic add {vm} --vf-pool {pools[0]} --host {target}')"
                + (f" (pools on {target}: {', '.join(pools)})" if len(pools) > 1 else ""))
    return (detach + f"then give it a VF of host {target} (it has no SR-IOV pool: "
            f"create one there with 'kvmops sriov pool create')")


_Block = Callable[[str, str, str], None]


def check(facts: MigrationFacts, options: MigrationOptions, *, source: str, target: str,
          kind: Kind) -> Preflight:
    """Every blocker of moving ``facts.vm`` from host ``source`` to host ``target``."""
    vm = facts.vm
    there = facts.target
    name = vm.name
    result = Preflight(vm=name, source=source, target=target, kind=kind)
    blockers = result.blockers
    warnings = result.warnings
    live = kind == "live"

    def block(code: str, message: str, remedy: str) -> None:
        blockers.append(Blocker(code=code, message=message, remedy=remedy))

    # State -----------------------------------------------------------------------------
    if live and not vm.active:
        block("state", f"VM '{name}' is shut off on host {source}: a live migration moves "
              "a running VM", f"start it first, or migrate it shut off (cold): 'kvmops vm "
              f"migrate {name} --to {target}' moves a shut-off VM cold")
    if not live and vm.active:
        block("state", f"VM '{name}' is running, not shut off (host {source}): a cold "
              "migration moves a shut-off VM", f"shut it down first ('kvmops vm shutdown "
              f"{name}'), or leave it running and let 'kvmops vm migrate {name} --to "
              f"{target}' move it live")
    if not live and not vm.persistent:
        block("state", f"VM '{name}' is transient on host {source}", "define it first")
    elif not live and vm.managed_save:
        block("state", f"VM '{name}' has a saved memory state on host {source}",
              f"start it and shut it down, or discard the state ('virsh managedsave-remove "
              f"{name}')")

    # Name clash ------------------------------------------------------------------------
    if name in there.domains:
        block("name-clash", f"a VM named '{name}' is already defined on host {target}",
              f"remove or rename that VM on {target} ('kvmops vm undefine {name} --host "
              f"{target}'), or rename this one first")
    else:
        twins = [n for n, uuid in there.domains.items() if uuid and uuid == vm.uuid]
        for twin in twins:
            block("name-clash", f"VM '{twin}' on host {target} has the UUID of VM '{name}' "
                  f"({vm.uuid})", f"remove VM '{twin}' from {target} (a leftover copy?) "
                  "before migrating")

    # Host devices and VFs --------------------------------------------------------------
    for hdev in vm.hostdevs:
        block("hostdev", f"VM '{name}' holds {hdev.type} host device {hdev.address} of host "
              f"{source}", f"detach it ('virsh detach-device {name} FILE --live --config'), "
              f"migrate, then attach the matching device of host {target}")
    for nic in vm.nics:
        if nic.type == "hostdev" or nic.vf_network:
            where = f"PCI {nic.pci}" if nic.pci else f"network '{nic.source}'"
            pools = sorted(set(there.sriov_pools) | set(there.hostdev_networks))
            block("vf", f"NIC {nic.mac} of VM '{name}' is an SR-IOV VF ({where}) of host "
                  f"{source}", _vf_remedy(name, nic.mac, target, pools))
    for dev in vm.config_only_devices:
        warnings.append(f"the definition of VM '{name}' (not the running VM) holds {dev}: "
                        f"it would not start on host {target} with it")

    # CPU -------------------------------------------------------------------------------
    if live and vm.active and vm.cpu is not None:
        problems = cpu_problems(vm.cpu, there.cpu) if there.cpu is not None else []
        if there.cpu_verdict and not problems:
            problems = [there.cpu_verdict]
        if problems:
            model = vm.cpu.model or vm.cpu.mode
            baseline = facts.baseline_cpu
            if baseline is None and facts.source_cpu is not None and there.cpu is not None:
                from kvmops.migration.cpu import suggest_baseline

                baseline = suggest_baseline(facts.source_cpu, there.cpu)
            fix = (f"give the VM a CPU model both hosts run: <cpu mode='custom'><model>"
                   f"{baseline}</model></cpu> ('virsh edit {name}'), then restart it"
                   if baseline else "give the VM a CPU model both hosts list as usable "
                   "('virsh domcapabilities' on each), then restart it")
            block("cpu", f"the CPU of VM '{name}' ({model}) is not supported by host "
                  f"{target}: {'; '.join(problems)}", fix + ", or choose another host")
    if live and vm.active and vm.cpu is not None and vm.cpu.mode in ("host-passthrough",
                                                                    "maximum"):
        warnings.append(f"VM '{name}' runs the host's own CPU ({vm.cpu.mode}): the move "
                        f"works only if host {target}'s CPU is identical")

    # Networks and bridges --------------------------------------------------------------
    for nic in vm.nics:
        if nic.type == "network" and nic.source and not nic.vf_network:
            if nic.source not in there.networks:
                block("network", f"network '{nic.source}' (NIC {nic.mac}) does not exist on "
                      f"host {target}", f"create it there ('kvmops net create "
                      f"{nic.source} --host {target} ...'), or move the NIC to a network "
                      f"host {target} has")
            elif not there.networks[nic.source]:
                text = f"network '{nic.source}' (NIC {nic.mac}) is not active on host {target}"
                fix = f"start it ('kvmops net start {nic.source} --host {target}')"
                if live:
                    block("network", text, fix)
                else:
                    warnings.append(f"{text}: {fix} before the VM starts there")
        elif (nic.type in ("bridge", "direct") and nic.source
              and there.interfaces is not None and nic.source not in there.interfaces):
            what = "bridge" if nic.type == "bridge" else "host interface"
            block("bridge", f"{what} '{nic.source}' (NIC {nic.mac}) does not exist on host "
                  f"{target}", f"create it there ('kvmops net create NAME --mode bridge "
                  f"--uplink DEV --host {target}'), or move the NIC to a network host "
                  f"{target} has")

    # Storage ---------------------------------------------------------------------------
    moving = [d for d in vm.disks if d.local and not d.readonly and d.device in ("disk", "lun")]
    cold_copy = not live and options.copy_storage
    copies = [] if live else _cold_disks(vm, options, block, warnings, source=source,
                                         target=target)
    named_pool = copy_pool(options, kind) or (options.target_pool if not live else None)
    usable = None  # the copy's pool, when it can take the copies
    if named_pool:
        pool = there.pools.get(named_pool)
        if pool is None:
            have = ", ".join(sorted(there.pools)) or "none"
            block("pool", f"storage pool '{named_pool}' does not exist on host "
                  f"{target}", f"create it there ('kvmops pool create {named_pool} "
                  f"--host {target} ...'), or name another with --target-pool (host "
                  f"{target} has: {have})")
        elif cold_copy and pool.type is not None and (pool.type not in FILE_TYPES
                                                      or not pool.path):
            block("pool", f"storage pool '{pool.name}' on host {target} is {pool.type}: "
                  "disks are copied into file pools", "name a dir, fs or netfs pool with "
                  "--target-pool")
        elif not pool.active:
            block("pool", f"storage pool '{pool.name}' is not active on host {target}",
                  f"start it ('kvmops pool start {pool.name} --host {target}')")
        else:
            usable = pool
            need = (sum(d.length or 0 for d in copies) if cold_copy
                    else sum(d.size or 0 for d in moving))
            if pool.available is not None and need > pool.available:
                block("pool", f"storage pool '{pool.name}' on host {target} has "
                      f"{_size(pool.available)} free, the disks of VM '{name}' need "
                      f"{_size(need)}", "free space in it, or name another with "
                      "--target-pool")
    if cold_copy and usable is not None and usable.path:
        names = volume_names(name, [(d.target, d.path or "", d.fmt) for d in copies])
        for disk, volume in zip(copies, names, strict=True):
            if os.path.normpath(os.path.join(usable.path, volume)) == os.path.normpath(
                    disk.path or ""):
                block("name-clash", f"disk {disk.target} ({disk.path}) is in pool "
                      f"'{usable.name}' of host {target} already: the target sees the disk "
                      "itself", "leave out --copy-storage (the disk is on storage both "
                      "hosts share), or name another --target-pool")
            elif volume in there.volumes.get(usable.name, set()):
                block("name-clash", f"volume '{volume}' exists in pool '{usable.name}' on "
                      f"host {target}", f"delete it if it is a leftover of an interrupted "
                      f"migration ('kvmops volume delete {usable.name} {volume} --host "
                      f"{target}'), or name another --target-pool")
    for disk in vm.disks:
        if (disk.pool and not options.target_pool and not cold_copy
                and disk.pool not in there.pools):
            block("pool", f"storage pool '{disk.pool}' (disk {disk.target} of VM '{name}') "
                  f"does not exist on host {target}", "create it there, or copy the disk "
                  "to another pool: --copy-storage --target-pool POOL")
    if live and not options.copy_storage:
        for disk in moving:
            block("local-disk", f"disk {disk.target} ({disk.path}) of VM '{name}' is local "
                  f"to host {source}: host {target} has no storage pool holding it",
                  "add --copy-storage (and --target-pool POOL), or put the disk on storage "
                  f"both hosts share (a pool on host {target} over the same path)")
    for drive in vm.disks:
        if drive.device in ("cdrom", "floppy") and drive.path and drive.local:
            block("cdrom", f"{drive.device} {drive.target} image {drive.path} of VM '{name}' is "
                  f"not present on host {target}", f"eject it ('virsh change-media {name} "
                  f"{drive.target} --eject --live --config'), or put the image in a storage "
                  f"pool of host {target} at the same path")

    # The running guest -----------------------------------------------------------------
    if live and vm.active:
        if there.free_memory is not None and vm.memory > there.free_memory:
            block("memory", f"host {target} has {_size(there.free_memory)} of memory free, "
                  f"VM '{name}' needs {_size(vm.memory)}", f"free memory on {target} (stop "
                  "or move VMs there), lower the VM's memory, or choose another host")
        for dev, job in sorted(vm.block_jobs.items()):
            block("block-job", f"disk {dev} of VM '{name}' has a running block job ({job}) "
                  f"on host {source}", f"wait for it to end, or cancel it ('virsh blockjob "
                  f"{name} {dev} --abort')")
        if vm.job == "backup":
            block("backup", f"a backup of VM '{name}' is running on host {source}",
                  f"wait for it to end, or cancel it ('kvmops job cancel JOB' or 'virsh "
                  f"domjobabort {name}')")
        elif vm.job:
            block("state", f"VM '{name}' already has a running job ({vm.job}) on host "
                  f"{source}", f"wait for it to end, or cancel it ('virsh domjobabort "
                  f"{name}')")
        for snap, where in vm.memory_snapshots:
            block("memory-snapshot", f"snapshot '{snap}' of VM '{name}' holds the guest's "
                  f"memory ({where}) on host {source}", f"delete it ('kvmops snapshot "
                  f"delete {name} {snap}'), or revert and migrate the VM cold")
    elif not live:
        for snap, what in vm.external_snapshots:
            block("snapshot", f"snapshot '{snap}' of VM '{name}' is external ({what})",
                  f"delete it first ('kvmops snapshot delete {name} {snap}'): external "
                  "snapshots do not move with a cold migration")
        if vm.internal_snapshots:
            warnings.append(f"{len(vm.internal_snapshots)} internal snapshot(s) moved with "
                            f"the disks: {', '.join(vm.internal_snapshots)}")
        elif vm.snapshots > len(vm.external_snapshots):
            warnings.append(f"the {vm.snapshots} snapshot(s) of VM '{name}' move with its "
                            "disks when internal (external ones refuse the cold migration)")
    return result


def _cold_disks(vm: VmFacts, options: MigrationOptions, block: _Block,
                warnings: list[str], *, source: str, target: str) -> list[DiskFact]:
    """The cold migration's disk rules; the disks it can copy. Copying (``--copy-storage``)
    takes raw or qcow2 files it can read, without a backing or data file; without it each
    disk must be a file the target sees at the same path, as long (a backing chain must
    then be reachable there: a warning)."""
    name = vm.name
    fine = []
    for disk in copied_disks(vm):
        what = f"disk {disk.target} ({disk.path})"
        if disk.type != "file":
            block("disk", f"{what} is not a file", "cold migration copies file disks: detach "
                  "it (or move its data into a file disk) first")
        elif disk.fmt not in ("raw", "qcow2"):
            block("disk", f"{what} is {disk.fmt}", "convert it to qcow2 or raw first")
        elif disk.unreadable:
            block("disk", f"disk {disk.target}: {disk.unreadable}", "fix the VM's definition "
                  "or restore the file")
        elif disk.header_error:
            block("disk", f"{what} is not a qcow2 file kvmops can read: "
                  f"{disk.header_error}", "check its format in the VM's definition")
        elif disk.backing and options.copy_storage:
            block("backing-file", f"{what} has a backing file", "flatten it first (e.g. "
                  "'qemu-img convert -f qcow2 -O qcow2 IN OUT' and point the disk at OUT): "
                  "chains are not copied")
        elif disk.data_file:
            block("disk", f"{what} keeps its data in an external data file",
                  "convert it into a plain qcow2 file first")
        else:
            fine.append(disk)
    if options.copy_storage:
        return fine
    for disk in fine:
        if disk.on_target is None:
            block("local-disk", f"disk {disk.target} ({disk.path}) of VM '{name}' is local to "
                  f"host {source}: host {target} has no storage pool holding it",
                  "add --copy-storage (and --target-pool POOL) to copy it, or put the disk "
                  f"on storage both hosts share (a pool on host {target} over the same path)")
        elif (disk.length is not None and disk.length_on_target is not None
              and disk.length != disk.length_on_target):
            block("local-disk", f"disk {disk.target}: {disk.path} is "
                  f"{disk.length_on_target} bytes on host {target} and {disk.length} on "
                  f"host {source}: not the same file", "add --copy-storage to copy it")
        elif disk.backing:
            warnings.append(f"disk {disk.target} ({disk.path}) has a backing file: host "
                            f"{target} must reach its chain at the same paths")
    return []
