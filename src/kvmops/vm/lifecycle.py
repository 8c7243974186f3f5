"""VM life cycle: the service functions the CLI and the API call."""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from kvmops.agent.libvirt_transport import agent_command, agent_configured
from kvmops.errors import (
    AlreadyExistsError,
    GuestAgentError,
    KvmopsError,
    NotFoundError,
    OperationTimeoutError,
    StateError,
    StorageError,
    ValidationError,
)
from kvmops.host.accel import Accelerator, probe
from kvmops.host.connection import Host
from kvmops.host.domain import STATE_NAMES, Domain, ShutdownMode
from kvmops.paths import policy
from kvmops.records import Record
from kvmops.sizes import format_size, parse_size
from kvmops.vm.domxml import (
    DiskSpec,
    DomainDocument,
    DomainSpec,
    NicKind,
    NicSpec,
    OwnedFile,
    Topology,
    validate_mac,
    validate_name,
    validate_nic_model,
    validate_nic_source,
)

DISK_TARGETS = [f"vd{chr(c)}" for c in range(ord("a"), ord("z") + 1)]
MAX_MEMORY = 16 * 1024**4  # 16 TiB: beyond what QEMU/KVM give an x86 guest in practice


# ------------------------------------------------------------------ models
# Plain records, not pydantic models: ``kvmops vm list``/``vm info`` start without pydantic
# (kvmops.records); the API validates its own bodies before it builds these.
@dataclass
class DiskRequest(Record):
    """One disk of ``vm create``: a new image of ``size``, or an existing ``path``; or
    from a storage ``pool``: a new volume of ``size``, or an existing ``volume``."""

    size: int | None = None
    path: Path | None = None
    fmt: str | None = None
    bus: str = "virtio"
    pool: str | None = None
    volume: str | None = None

    @classmethod
    def parse(cls, text: str) -> DiskRequest:
        """``size=64M``, ``path=/img.qcow2``, ``path=/a.raw,format=raw``, ``bus=sata``,
        ``pool=NAME,size=64M[,volume=NEW]``, ``pool=NAME,volume=EXISTING``."""
        values: dict[str, str] = {}
        for part in text.split(","):
            key, sep, value = part.partition("=")
            if not sep or not value:
                raise ValidationError(
                    f"invalid --disk '{text}'",
                    hint="use size=64M or path=/file.qcow2, optionally ,format=qcow2,bus=virtio",
                )
            values[key.strip()] = value.strip()
        unknown = set(values) - {"size", "path", "format", "bus", "pool", "volume"}
        if unknown:
            raise ValidationError(f"invalid --disk '{text}': unknown key(s) "
                                  f"{', '.join(sorted(unknown))}",
                                  hint="known keys: size, path, format, bus, pool, volume")
        if "pool" in values:
            if "path" in values:
                raise ValidationError(f"invalid --disk '{text}': path= is not for a pool "
                                      "disk", hint="give pool=NAME,size=64M (a new volume) "
                                      "or pool=NAME,volume=VOL (an existing one)")
            if "size" not in values and "volume" not in values:
                raise ValidationError(f"invalid --disk '{text}': give size= (a new volume) "
                                      "or volume= (an existing one)")
        elif "volume" in values:
            raise ValidationError(f"invalid --disk '{text}': volume= needs pool=")
        elif ("size" in values) == ("path" in values):
            raise ValidationError(f"invalid --disk '{text}': give exactly one of size= or path=")
        return cls(
            size=parse_size(values["size"], what="disk size") if "size" in values else None,
            path=Path(values["path"]) if "path" in values else None,
            fmt=values.get("format"),
            bus=values.get("bus", "virtio"),
            pool=values.get("pool"),
            volume=values.get("volume"),
        )


@dataclass
class CreateRequest(Record):
    """What ``vm create`` (and ``POST /api/v1/vms``) asks for."""

    name: str
    memory: int  # bytes
    vcpus: int = 1
    sockets: int | None = None
    cores: int | None = None
    threads: int | None = None
    disks: list[DiskRequest] = field(default_factory=list)
    kernel: Path | None = None
    initrd: Path | None = None
    cmdline: str | None = None
    cdrom: Path | None = None
    network: str | None = None
    bridge: str | None = None
    mac: str | None = None
    nics: list[NicSpec] = field(default_factory=list)  # --nic, after --network/--bridge's
    agent: bool = True
    images_dir: Path | None = None
    accelerator: Accelerator | None = None
    start: bool = False
    force: bool = False  # create although memory or disk space would be overcommitted


def requested_nics(req: CreateRequest) -> list[NicSpec]:
    """The NICs a request asks for: the one of --network/--bridge (with --mac), then
    every --nic; MACs checked (unicast) and unique within the request."""
    if req.network and req.bridge:
        raise ValidationError("give either --network or --bridge, not both")
    nics: list[NicSpec] = []
    if req.network or req.bridge:
        kind: NicKind = "network" if req.network else "bridge"
        nics.append(NicSpec(kind=kind,
                            source=validate_nic_source(kind, req.network or req.bridge or ""),
                            mac=validate_mac(req.mac) if req.mac else None))
    elif req.mac:
        raise ValidationError("--mac needs --network or --bridge",
                              hint="or give it inside --nic: --nic network=NAME,mac=...")
    for nic in req.nics:
        validate_nic_model(nic.model)
        nics.append(dataclasses.replace(
            nic, source=validate_nic_source(nic.kind, nic.source),
            mac=validate_mac(nic.mac) if nic.mac else None).check_queues_and_boot())
    orders = [n.boot_order for n in nics if n.boot_order is not None]
    if len(orders) != len(set(orders)):
        raise ValidationError(f"two NICs of VM '{req.name}' have the same boot order",
                              hint="give each NIC its own boot=N")
    seen: set[str] = set()
    for nic in nics:
        if nic.mac and nic.mac in seen:
            raise ValidationError(f"MAC address {nic.mac} is given to two NICs of VM "
                                  f"'{req.name}'", hint="give each NIC its own MAC")
        if nic.mac:
            seen.add(nic.mac)
    return nics


def macs_in_use(host: Host, *, skip: str | None = None) -> dict[str, str]:
    """MAC -> VM of every interface of every VM on the host (live and persistent
    definitions), except VM ``skip``'s."""
    found: dict[str, str] = {}
    for domain in host.all_domains():
        if domain.name == skip:
            continue
        try:
            xmls = [domain.xml()]
            if domain.is_persistent():
                xmls.append(domain.xml(inactive=True))
        except KvmopsError:
            continue  # went away meanwhile
        for xml in xmls:
            for mac in DomainDocument(xml).interface_macs():
                found.setdefault(mac, domain.name)
    return found


def check_macs_free(host: Host, vm: str, macs: list[str]) -> None:
    """Refuse a MAC another VM on this host already has (two NICs with one MAC on a
    network break both)."""
    wanted = [m for m in macs if m]
    if not wanted:
        return
    used = macs_in_use(host, skip=vm)
    for mac in wanted:
        if mac in used:
            raise AlreadyExistsError(f"MAC address {mac} is already used by VM '{used[mac]}'",
                                     hint="choose another MAC, or leave it out and kvmops "
                                          "picks a free one")


def new_mac(taken: set[str]) -> str:
    """A random locally administered MAC in QEMU's 52:54:00 range, not in ``taken``."""
    import secrets  # here: quick kvmops vm list/info

    while True:
        mac = "52:54:00:" + ":".join(f"{b:02x}" for b in secrets.token_bytes(3))
        if mac not in taken:
            return mac


@dataclass
class DiskInfo(Record):
    """One disk of a VM as ``vm info`` shows it."""

    target: str
    source: str | None
    format: str
    bus: str
    device: str
    node_name: str | None = None
    alias: str | None = None


@dataclass
class NicInfo(Record):
    """One network interface of a VM as ``vm info`` shows it."""

    type: str
    source: str
    model: str
    mac: str | None
    host_device: str | None = None


@dataclass
class VmSummary(Record):
    """A VM's name, state and size."""

    name: str
    state: str
    vcpus: int
    memory: int  # bytes
    accelerator: str
    autostart: bool
    persistent: bool


@dataclass
class VmInfo(VmSummary):
    """Everything ``vm info`` (and ``GET /api/v1/vms/NAME``) tells about a VM."""

    uuid: str
    id: int | None
    agent: bool
    agent_configured: bool
    managed_save: bool
    cpu_time_ns: int
    topology: dict[str, int] | None
    kernel: str | None
    cmdline: str | None
    vnc: str | None
    disks: list[DiskInfo]
    nics: list[NicInfo]
    tainted: list[str]


# ------------------------------------------------------------------ helpers
def state_name(domain: Domain) -> str:
    """The VM's state as ``virsh domstate`` names it (``running``, ``shut off`` ...)."""
    return Domain.of(domain).state()


def _summary(domain: Domain) -> VmSummary:
    spec = DomainSpec.from_xml(domain.xml(what="reading XML"))
    return VmSummary(
        name=domain.name,
        state=domain.state(),
        vcpus=spec.vcpus,
        memory=spec.memory_bytes,
        accelerator=Accelerator.from_domain_type(spec.domain_type).value,
        autostart=domain.autostart(),
        persistent=domain.is_persistent(),
    )


def _require_state(domain: Domain, allowed: set[str], action: str, hint: str = ""
                   ) -> str:
    domain = Domain.of(domain)
    state = domain.state()
    if state not in allowed:
        raise StateError(
            f"cannot {action} VM '{domain.name}': it is {state}",
            actual=state, required=" or ".join(sorted(allowed)), hint=hint or None,
        )
    return state


def ensure_qemu_can_reach(directory: Path) -> None:
    """QEMU runs as libvirt-qemu: every ancestor of an image needs search permission for it."""
    for parent in [directory, *directory.parents]:
        try:
            mode = parent.stat().st_mode
        except FileNotFoundError:
            continue
        if not mode & 0o001:
            raise StorageError(
                f"QEMU (user libvirt-qemu) cannot reach images under {directory}: "
                f"{parent} has no search permission for others",
                hint=f"run 'chmod o+x {parent}' or choose another --images-dir",
            )


def ping_agent(domain: Domain, timeout: int = 2) -> bool:
    if not domain.is_active() or not agent_configured(domain):
        return False
    try:
        agent_command(domain, "guest-ping", timeout=timeout)
    except GuestAgentError:
        return False
    return True


# ------------------------------------------------------------------ services
def list_vms(host: Host) -> list[VmSummary]:
    return sorted((_summary(d) for d in host.all_domains()), key=lambda vm: vm.name)


def info(host: Host, name: str) -> VmInfo:
    domain = host.lookup(name)
    spec = DomainSpec.from_xml(domain.xml())
    summary = _summary(domain)
    stats = domain.stats()
    vnc = f"{spec.vnc_listen}:{spec.vnc_port}" if spec.vnc_port else None
    active = domain.is_active()
    return VmInfo(
        **summary.model_dump(),
        uuid=domain.uuid(),
        id=domain.id(),
        agent=ping_agent(domain),
        agent_configured=spec.agent_channel,
        managed_save=domain.has_managed_save(),
        cpu_time_ns=stats.cpu_time_ns,
        topology=(vars(spec.topology) if spec.topology else None),
        kernel=spec.kernel,
        cmdline=spec.cmdline,
        vnc=vnc,
        disks=[DiskInfo(target=d.target, source=d.source, format=d.fmt, bus=d.bus,
                        device=d.device, node_name=d.node_name, alias=d.alias)
               for d in spec.disks],
        nics=[NicInfo(type=n.kind, source=n.source, model=n.model, mac=n.mac,
                      host_device=n.target_dev) for n in spec.nics],
        tainted=_taints(name) if active else [],
    )


def _taints(name: str) -> list[str]:
    """libvirt logs taint flags (e.g. custom-ga-command after guest-exec) in the VM's log."""
    log = Path("/var/log/libvirt/qemu") / f"{name}.log"
    found: list[str] = []
    with contextlib.suppress(OSError):
        for line in log.read_text(errors="replace").splitlines()[-400:]:
            if "Domain id=" in line and "is tainted:" in line:
                flag = line.rsplit("is tainted:", 1)[1].strip()
                if flag not in found:
                    found.append(flag)
    return found


MIN_DISK = 1024 * 1024


def check_resources(req: CreateRequest, *, memory_total: int, memory_available: int | None,
                    cpus: int, max_vcpus: int | None, free_space: int, machine: str = "pc"
                    ) -> list[str]:
    """Refuse what cannot work or would overcommit the host (unless ``req.force``);
    return warnings for what merely may be slow. Pure: the facts are passed in."""
    notes: list[str] = []
    name = req.name
    if max_vcpus is not None and req.vcpus > max_vcpus:
        raise ValidationError(f"{req.vcpus} vCPUs is more than the {max_vcpus} a {machine} "
                              f"VM can have (VM '{name}')", hint=f"give at most {max_vcpus}")
    if req.vcpus > cpus:
        notes.append(f"VM '{name}' gets {req.vcpus} vCPUs on a host with {cpus} CPUs: they "
                     "will share them")
    for disk in req.disks:
        if disk.size is not None and disk.size < MIN_DISK:
            raise ValidationError(f"a new disk of {format_size(disk.size)} is too small "
                                  f"(VM '{name}')", hint="give at least 1M, e.g. size=64M")
    if req.memory > memory_total and not req.force:
        raise ValidationError(
            f"memory {format_size(req.memory)} for VM '{name}' is more than this host has "
            f"({format_size(memory_total)})", hint="give less, or pass --force to overcommit")
    if memory_available is not None and req.memory > memory_available:
        notes.append(f"VM '{name}' asks for {format_size(req.memory)}; only "
                     f"{format_size(memory_available)} is available now")
    new = sum(d.size or 0 for d in req.disks if d.pool is None)  # pools: their own space
    if new > free_space and not req.force:
        raise ValidationError(
            f"the new disks of VM '{name}' ({format_size(new)}) are larger than the free "
            f"space of the images directory ({format_size(free_space)})",
            hint="give smaller disks, free space, or pass --force to create them thin anyway")
    return notes


def create(host: Host, req: CreateRequest,
           progress: Callable[[str], None] | None = None,
           note: Callable[[str], None] | None = None) -> VmInfo:
    """Define a new VM; create its new disks; optionally start it."""
    import shutil  # here: quick kvmops vm info

    validate_name(req.name)
    if host.has_domain(req.name):
        raise AlreadyExistsError(f"VM '{req.name}' already exists",
                                 hint="choose another name or undefine the existing VM")
    if req.memory < 16 * 1024**2:
        raise ValidationError(f"memory {req.memory} bytes is too small for VM '{req.name}'",
                              hint="give at least 16M")
    if req.memory > MAX_MEMORY:
        raise ValidationError(f"memory {format_size(req.memory)} is more than the "
                              f"{format_size(MAX_MEMORY)} a VM may have (VM '{req.name}')")
    if req.vcpus < 1:
        raise ValidationError("--vcpus must be at least 1")
    for label, path in (("kernel", req.kernel), ("initrd", req.initrd), ("CD-ROM ISO", req.cdrom)):
        if path is not None and not path.is_file():
            raise NotFoundError(f"{label} file {path} not found (VM '{req.name}')",
                                hint="check the path")
    if req.initrd and not req.kernel:
        raise ValidationError("--initrd needs --kernel")
    nics = requested_nics(req)
    if nics:
        # Every NIC gets a MAC no VM on this host has (given ones checked, the rest picked
        # here rather than by libvirt, which does not look at the other VMs).
        check_macs_free(host, req.name, [n.mac for n in nics if n.mac])
        taken = set(macs_in_use(host)) | {n.mac for n in nics if n.mac}
        for nic in nics:
            if nic.mac is None:
                nic.mac = new_mac(taken)
                taken.add(nic.mac)
    warnings: list[str] = []  # told once the VM is defined, never before a refusal
    for network in dict.fromkeys(n.source for n in nics if n.kind == "network"):
        if not host.network_active(network):
            warnings.append(f"network '{network}' is not active: VM '{req.name}' will not "
                            f"start until it is ('kvmops net start {network}')")
    topology = None
    if req.sockets or req.cores or req.threads:
        topology = Topology(req.sockets or 1, req.cores or 1, req.threads or 1)
    images_dir = policy().new_images_dir(req.images_dir, trusted=True)
    accel = req.accelerator or probe().accelerator
    if topology is not None and topology.vcpus != req.vcpus:
        raise ValidationError(
            f"CPU topology {topology.sockets}x{topology.cores}x{topology.threads} gives "
            f"{topology.vcpus} vCPUs, not {req.vcpus}",
            hint="make sockets*cores*threads equal --vcpus")
    warnings += check_resources(
        req, memory_total=host.memory_total(), memory_available=host.memory_available(),
        cpus=host.cpus(), max_vcpus=host.max_vcpus(accel.domain_type),
        free_space=shutil.disk_usage(images_dir).free)

    disks: list[DiskSpec] = []
    created: list[Path] = []
    volumes: list[tuple[str, str]] = []  # (pool, volume) created here
    owned: list[OwnedFile] = []
    try:
        for index, disk in enumerate(req.disks):
            target = DISK_TARGETS[index]
            if disk.pool is not None:
                from kvmops.storage.volumes import vm_disk  # here: quick vm list/info

                got = vm_disk(host, disk.pool, volume_name=disk.volume, size=disk.size,
                              fmt=disk.fmt, default_name=f"{req.name}-{target}")
                if got.created:
                    volumes.append((got.pool, got.volume))
                if got.path is not None:  # a file pool: the file, as every other disk
                    ensure_qemu_can_reach(Path(got.path).parent)
                    if got.created:
                        owned.append(OwnedFile(got.path, got.fmt))
                    disks.append(DiskSpec(target=target, source=got.path, fmt=got.fmt,
                                          bus=disk.bus))
                else:
                    disks.append(DiskSpec(target=target, source=got.volume, fmt=got.fmt,
                                          bus=disk.bus, pool=got.pool, volume=got.volume))
                continue
            if disk.path is not None:
                path = disk.path.absolute()
                if not path.is_file():
                    raise NotFoundError(f"disk image {path} not found (VM '{req.name}')",
                                        hint="check the path, or use --disk size=... "
                                             "for a new disk")
                if not disk.fmt:
                    raise ValidationError(f"no format given for disk image {path} "
                                          f"(VM '{req.name}')", hint="name it: format=raw "
                                          "or format=qcow2")
                fmt = disk.fmt
                ensure_qemu_can_reach(path.parent)
            else:
                assert disk.size is not None
                fmt = disk.fmt or "qcow2"
                ensure_qemu_can_reach(images_dir)
                path = images_dir / f"{req.name}-{target}.{fmt}"
                if path.exists():
                    raise AlreadyExistsError(
                        f"disk image {path} already exists (VM '{req.name}')",
                        hint="import it with --disk path=... or remove it",
                    )
                if progress:
                    progress(f"creating {path} ({disk.size} bytes)")
                from kvmops.images import qemuimg  # here: kvmops vm list/info start quicker

                qemuimg.create(path, disk.size, fmt=fmt)
                created.append(path)
                owned.append(OwnedFile(str(path), fmt))
            disks.append(DiskSpec(target=target, source=str(path), fmt=fmt, bus=disk.bus))
        if req.cdrom:
            disks.append(DiskSpec(target="hdc", source=str(req.cdrom.absolute()), fmt="raw",
                                  bus="ide", device="cdrom", cache=None))
        spec = DomainSpec(
            name=req.name, memory_bytes=req.memory, vcpus=req.vcpus,
            domain_type=accel.domain_type, topology=topology,
            kernel=str(req.kernel.absolute()) if req.kernel else None,
            initrd=str(req.initrd.absolute()) if req.initrd else None,
            cmdline=req.cmdline, boot=["cdrom", "hd"] if req.cdrom else ["hd"],
            disks=disks, nics=nics, agent_channel=req.agent, owned_files=owned,
        )
        host.define_domain(spec.to_xml())
    except BaseException:
        for path in created:
            with contextlib.suppress(OSError):
                path.unlink()
        if volumes:
            from kvmops.host import pools as host_pools

            for pool, volume in volumes:
                with contextlib.suppress(KvmopsError):
                    host_pools.delete_volume(host, pool, volume)
        raise
    for message in warnings:
        (note or progress or (lambda _m: None))(message)
    if req.start:
        start(host, req.name)
    return info(host, req.name)


def start(host: Host, name: str, *, paused: bool = False, discard_managed_save: bool = False
          ) -> None:
    domain = host.lookup(name)
    _require_state(domain, {"shut off", "crashed"}, "start",
                   hint=f"it is already active; see 'kvmops vm info {name}'")
    for nic in DomainSpec.from_xml(domain.xml(what="reading XML")).nics:
        if nic.kind == "network" and not host.network_active(nic.source):
            raise StateError(f"cannot start VM '{name}': its network '{nic.source}' is not "
                             "active", hint=f"start it with 'virsh net-start {nic.source}' "
                                            f"(and 'virsh net-autostart {nic.source}')")
    has_save = domain.has_managed_save()
    if discard_managed_save and has_save:
        domain.remove_managed_save()
        has_save = False
    what = f"starting VM '{name}'"
    try:
        domain.start(paused=paused, what=what)
    except KvmopsError as err:
        if has_save:
            detail = err.message.removeprefix(f"{what}: ")
            raise StateError(
                f"VM '{name}' failed to start from its managed-save image ({detail}); "
                "the saved state is probably stale",
                hint=f"run 'kvmops vm start {name} --discard-managed-save' to boot afresh "
                     "(the saved memory state is lost)",
            ) from err
        raise


def wait_for_state(domain: Domain, wanted: set[str], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if state_name(domain) in wanted:
                return True
        except NotFoundError:  # a transient domain vanishes when it stops
            return True
        time.sleep(0.2)
    return state_name(domain) in wanted


def wait_for_agent(host: Host, name: str, timeout: float = 60.0) -> None:
    """Block until the guest agent answers a ping."""
    domain = host.lookup(name)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ping_agent(domain, timeout=2):
            return
        if not domain.is_active():
            raise StateError(f"VM '{name}' stopped while waiting for its guest agent")
        time.sleep(0.5)
    raise OperationTimeoutError(
        f"guest agent of VM '{name}' did not answer within {timeout:.0f}s",
        hint="the guest may be slow to boot, or qemu-ga is not running in it",
    )


def shutdown(host: Host, name: str, *, mode: ShutdownMode = "acpi", timeout: float = 60.0,
             wait: bool = True) -> None:
    domain = host.lookup(name)
    _require_state(domain, {"running", "idle", "paused", "in shutdown"}, "shut down",
                   hint="it is not running")
    if mode == "agent":
        if not agent_configured(domain):
            agent_command(domain, "guest-ping")  # raises AgentNotConfiguredError
        how = "the guest agent's shutdown request"
    else:
        how = "the ACPI power-button request"
    domain.shutdown(mode)
    if not wait:
        return
    if not wait_for_state(domain, {"shut off"}, timeout):
        hint = (f"the guest ignored it (no ACPI daemon?); try 'kvmops vm shutdown {name} --agent' "
                f"or force it off with 'kvmops vm destroy {name}'") if mode == "acpi" else (
                f"force it off with 'kvmops vm destroy {name}'")
        raise OperationTimeoutError(
            f"VM '{name}' is still {state_name(domain)} {timeout:.0f}s after {how}", hint=hint)


def destroy(host: Host, name: str) -> None:
    domain = host.lookup(name)
    _require_state(domain, {"running", "idle", "paused", "in shutdown", "crashed",
                            "pmsuspended"}, "destroy", hint="it is not running")
    domain.destroy()


def reboot(host: Host, name: str, *, mode: ShutdownMode = "acpi") -> None:
    domain = host.lookup(name)
    _require_state(domain, {"running", "idle"}, "reboot")
    domain.reboot(mode)


def suspend(host: Host, name: str) -> None:
    domain = host.lookup(name)
    _require_state(domain, {"running", "idle"}, "suspend")
    domain.suspend()


def resume(host: Host, name: str) -> None:
    domain = host.lookup(name)
    _require_state(domain, {"paused"}, "resume")
    domain.resume()


def set_autostart(host: Host, name: str, enabled: bool) -> None:
    host.lookup(name).set_autostart(enabled)


def dumpxml(host: Host, name: str, *, inactive: bool = False) -> str:
    return host.lookup(name).xml(inactive=inactive)


@dataclass
class UndefineResult(Record):
    """The images ``vm undefine --remove-storage`` removed and the ones it kept."""

    removed: list[str] = field(default_factory=list)
    kept: list[dict[str, str]] = field(default_factory=list)  # path, reason


def undefine(host: Host, name: str, *, remove_storage: bool = False) -> UndefineResult:
    """Undefine a shut-off VM; with ``remove_storage`` delete the files kvmops created for
    it (:mod:`kvmops.vm.ownership`): never an imported image, a shared template, another
    VM's file or anything outside the allowed image directories -- those are listed."""
    from kvmops.vm.ownership import removal_plan, remove_files

    domain = host.lookup(name)
    _require_state(domain, {"shut off", "crashed"}, "undefine",
                   hint=f"stop it first with 'kvmops vm shutdown {name}' or 'kvmops vm destroy'")
    spec = DomainSpec.from_xml(domain.config_xml(what="reading XML"))
    plan = removal_plan(host, name, spec) if remove_storage else None
    domain.undefine()
    result = UndefineResult()
    if plan is not None:
        try:
            result.removed = remove_files(plan, name)
        except StorageError as err:
            raise StorageError(f"VM '{name}' undefined, but {err.message}") from err
        result.kept = [{"path": k.path, "reason": k.reason} for k in plan.kept]
    return result


def _labelled(progress: Callable[[str, float], None] | None, label: str
              ) -> Callable[[float], None] | None:
    if progress is None:
        return None
    return lambda pct: progress(label, pct)


def clone(host: Host, source: str, new_name: str, *, images_dir: Path | None = None,
          progress: Callable[[str, float], None] | None = None) -> VmInfo:
    """Copy a shut-off VM: new name, UUID and MACs, each disk copied with qemu-img convert."""
    validate_name(new_name)
    domain = host.lookup(source)
    _require_state(domain, {"shut off"}, "clone",
                   hint=f"shut it down first ('kvmops vm shutdown {source}')")
    if host.has_domain(new_name):
        raise AlreadyExistsError(f"VM '{new_name}' already exists")
    doc = DomainDocument(domain.xml(inactive=True, what="reading XML"))
    doc.for_clone(new_name)
    target_dir = policy().new_images_dir(images_dir, trusted=True)
    ensure_qemu_can_reach(target_dir)
    copied: list[Path] = []
    owned: list[OwnedFile] = []
    try:
        for label, (file, fmt) in doc.disk_files(device="disk").items():
            src = Path(file)
            dst = target_dir / f"{new_name}-{label}.{fmt}"
            if dst.exists():
                raise AlreadyExistsError(f"disk image {dst} already exists (clone '{new_name}')")
            from kvmops.images import qemuimg  # here: kvmops vm list/info start quicker
            from kvmops.images.chain import inspect

            inspect(src, fmt, trusted_top=True)  # never follow a link out of the image dirs
            qemuimg.convert(src, fmt, dst, fmt, progress=_labelled(progress, label))
            copied.append(dst)
            owned.append(OwnedFile(str(dst), fmt))
            doc.point_disk(label, str(dst), fmt)
        doc.set_owned_files(owned)
        host.define_domain(doc.to_xml())
    except BaseException:
        for path in copied:
            with contextlib.suppress(OSError):
                path.unlink()
        raise
    return info(host, new_name)


__all__ = [
    "STATE_NAMES",
    "CreateRequest",
    "DiskRequest",
    "KvmopsError",
    "ShutdownMode",
    "UndefineResult",
    "VmInfo",
    "VmSummary",
    "clone",
    "create",
    "destroy",
    "dumpxml",
    "info",
    "list_vms",
    "reboot",
    "resume",
    "set_autostart",
    "shutdown",
    "start",
    "suspend",
    "undefine",
    "wait_for_agent",
]
