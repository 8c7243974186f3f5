"""A libvirt domain behind a narrow, typed adapter.

:class:`Domain` is what the rest of kvmops holds instead of a ``virDomain``:
every method is one libvirt call (or a short, fixed sequence of them), returns
plain Python values or small dataclasses, and raises only kvmops errors,
translated in :mod:`kvmops.host.errors`. Snapshots and checkpoints come as
:class:`Snapshot` and :class:`Checkpoint`.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import libvirt
import libvirt_qemu

from kvmops.errors import HypervisorError, KvmopsError, NotFoundError
from kvmops.host.errors import (
    AGENT_CODES,
    BLOCK_COPY_ACTIVE,
    NO_SNAPSHOT,
    call,
    connection_lost,
    error_code,
    error_text,
    libvirt_desc,
    translate,
    translate_agent_error,
)

STATE_NAMES: dict[int, str] = {
    libvirt.VIR_DOMAIN_NOSTATE: "no state",
    libvirt.VIR_DOMAIN_RUNNING: "running",
    libvirt.VIR_DOMAIN_BLOCKED: "idle",
    libvirt.VIR_DOMAIN_PAUSED: "paused",
    libvirt.VIR_DOMAIN_SHUTDOWN: "in shutdown",
    libvirt.VIR_DOMAIN_SHUTOFF: "shut off",
    libvirt.VIR_DOMAIN_CRASHED: "crashed",
    libvirt.VIR_DOMAIN_PMSUSPENDED: "pmsuspended",
}
#: States in which QEMU runs (a snapshot is taken live, a commit is an active one).
ACTIVE_STATES = frozenset({"running", "paused", "idle", "pmsuspended"})

ShutdownMode = Literal["acpi", "agent"]
AddressSource = Literal["lease", "agent", "arp"]

_ADDRESS_SOURCES: dict[str, int] = {
    "lease": libvirt.VIR_DOMAIN_INTERFACE_ADDRESSES_SRC_LEASE,
    "agent": libvirt.VIR_DOMAIN_INTERFACE_ADDRESSES_SRC_AGENT,
    "arp": libvirt.VIR_DOMAIN_INTERFACE_ADDRESSES_SRC_ARP,
}
#: The statistics groups of :meth:`Domain.stats_record`.
_STATS_GROUPS = (libvirt.VIR_DOMAIN_STATS_STATE | libvirt.VIR_DOMAIN_STATS_CPU_TOTAL
                 | libvirt.VIR_DOMAIN_STATS_BALLOON | libvirt.VIR_DOMAIN_STATS_VCPU
                 | libvirt.VIR_DOMAIN_STATS_INTERFACE | libvirt.VIR_DOMAIN_STATS_BLOCK)

_CHECKPOINT_REFUSALS = {libvirt.VIR_ERR_OPERATION_INVALID,
                        libvirt.VIR_ERR_OPERATION_UNSUPPORTED, libvirt.VIR_ERR_NO_SUPPORT,
                        libvirt.VIR_ERR_CONFIG_UNSUPPORTED}


def state_name(code: int) -> str:
    return STATE_NAMES.get(code, "unknown")


@dataclass(frozen=True)
class DomainStats:
    """``virDomainGetInfo``: sizes in bytes."""

    state: str
    max_memory: int
    memory: int
    vcpus: int
    cpu_time_ns: int


@dataclass(frozen=True)
class BlockJob:
    """One block job of a disk (``virDomainGetBlockJobInfo``)."""

    kind: int
    cur: int
    end: int

    @property
    def ready(self) -> bool:
        """Everything copied: a commit or copy can pivot now."""
        return self.end > 0 and self.cur == self.end


class SnapshotCreateError(HypervisorError):
    """libvirt refused to create a snapshot; says whether the guest agent (a quiesce)
    or the VM's backup checkpoints were the cause, for the caller to explain."""

    def __init__(self, translated: KvmopsError, text: str, *, agent: bool,
                 checkpoints: bool) -> None:
        self.translated = translated
        self.text = text
        self.agent = agent
        self.checkpoints = checkpoints
        super().__init__(translated.message, hint=translated.hint)


class Snapshot:
    """One snapshot of a domain."""

    def __init__(self, raw: Any, vm: str) -> None:
        self._raw = raw
        self.vm = vm
        self.name = str(raw.getName())

    def xml(self) -> str:
        return str(call(f"reading snapshot '{self.name}'", self._raw.getXMLDesc, 0))

    def children(self) -> list[str]:
        found = call("listing child snapshots", self._raw.listAllChildren, 0)
        return [str(c.getName()) for c in found]

    def delete(self, *, metadata_only: bool = False, what: str | None = None) -> None:
        flags = libvirt.VIR_DOMAIN_SNAPSHOT_DELETE_METADATA_ONLY if metadata_only else 0
        call(what or f"deleting snapshot '{self.name}' of VM '{self.vm}'",
             self._raw.delete, flags)


class Checkpoint:
    """One checkpoint of a domain (a backup's bitmaps)."""

    def __init__(self, raw: Any, vm: str) -> None:
        self._raw = raw
        self.vm = vm
        self.name = str(raw.getName())

    def xml(self) -> str:
        return str(call(f"reading checkpoint '{self.name}' of VM '{self.vm}'",
                        self._raw.getXMLDesc, 0))

    def delete(self, *, metadata_only: bool = False, what: str | None = None) -> None:
        """Delete it; libvirt merges its bitmaps into the parent's. ``metadata_only``
        drops libvirt's record alone (the bitmaps stay in the images)."""
        flags = libvirt.VIR_DOMAIN_CHECKPOINT_DELETE_METADATA_ONLY if metadata_only else 0
        call(what or f"deleting checkpoint {self.name} of VM '{self.vm}'",
             self._raw.delete, flags)


def _affect(live: bool, config: bool) -> int:
    flags = 0
    if live:
        flags |= libvirt.VIR_DOMAIN_AFFECT_LIVE
    if config:
        flags |= libvirt.VIR_DOMAIN_AFFECT_CONFIG
    return flags


class Domain:
    """A libvirt domain (VM). Looked up by :meth:`kvmops.host.connection.Host.lookup`."""

    def __init__(self, raw: Any) -> None:
        self._raw = raw
        self.name = str(raw.name())

    @classmethod
    def of(cls, domain: Domain | Any) -> Domain:
        """``domain`` itself, or a raw ``virDomain`` wrapped (for callers that still hold
        one while they move to this adapter)."""
        return domain if isinstance(domain, Domain) else cls(domain)

    @property
    def raw(self) -> Any:
        """The ``virDomain`` (for code in :mod:`kvmops.host` only)."""
        return self._raw

    # ---------------------------------------------------------------- identity, state
    def uuid(self) -> str:
        return str(self._raw.UUIDString())

    def uri(self) -> str:
        """The URI of the connection this domain was looked up on."""
        return str(call("reading the libvirt URI", self._raw.connect().getURI))

    def id(self) -> int | None:
        """QEMU's domain id while it runs."""
        return int(self._raw.ID()) if self.is_active() else None

    def state_code(self) -> int:
        state, _reason = call(f"reading state of VM '{self.name}'", self._raw.state)
        return int(state)

    def state(self) -> str:
        """``running``, ``shut off``, ``paused`` ... (as ``virsh domstate``)."""
        return state_name(self.state_code())

    def is_active(self) -> bool:
        return bool(call(f"reading state of VM '{self.name}'", self._raw.isActive))

    def is_persistent(self) -> bool:
        return bool(call(f"reading state of VM '{self.name}'", self._raw.isPersistent))

    def stats(self) -> DomainStats:
        state, max_kib, kib, vcpus, cpu_time = call("reading VM info", self._raw.info)
        return DomainStats(state_name(int(state)), int(max_kib) * 1024, int(kib) * 1024,
                           int(vcpus), int(cpu_time))

    def stats_record(self, *, what: str) -> dict[str, Any]:
        """This VM's ``virConnectGetAllDomainStats`` record (state, cpu, balloon, vcpu,
        net, block: libvirt's flat ``group.key`` names, memory in KiB)."""
        records = call(what, self._raw.connect().domainListGetStats, [self._raw],
                       _STATS_GROUPS, 0)
        return dict(records[0][1]) if records else {}

    # ---------------------------------------------------------------- guest
    def interface_addresses(self, source: AddressSource, *, what: str) -> dict[str, Any]:
        """The guest's addresses by interface, from the guest agent, the DHCP lease or
        the host's ARP table (``virDomainInterfaceAddresses``)."""
        found = call(what, self._raw.interfaceAddresses, _ADDRESS_SOURCES[source], 0)
        return dict(found or {})

    def guest_info(self, *, what: str) -> dict[str, Any]:
        """The OS and host name the guest agent reports (``os.*`` and ``hostname`` keys)."""
        flags = libvirt.VIR_DOMAIN_GUEST_INFO_OS | libvirt.VIR_DOMAIN_GUEST_INFO_HOSTNAME
        return dict(call(what, self._raw.guestInfo, flags, 0) or {})

    def send_keys(self, codes: list[int], *, hold_ms: int = 30, what: str) -> None:
        """Press one combination of Linux key codes (up to 16) on the VM's keyboard."""
        call(what, self._raw.sendKey, libvirt.VIR_KEYCODE_SET_LINUX, hold_ms, codes,
             len(codes), 0)

    # ---------------------------------------------------------------- XML
    def xml(self, *, inactive: bool = False, what: str | None = None) -> str:
        """The live XML (the definition when shut off), or with ``inactive`` the
        persistent definition."""
        flags = libvirt.VIR_DOMAIN_XML_INACTIVE if inactive else 0
        return str(call(what or f"reading XML of VM '{self.name}'", self._raw.XMLDesc, flags))

    def config_xml(self, what: str | None = None) -> str:
        """The persistent definition, or the live XML of a transient domain."""
        return self.xml(inactive=self.is_persistent(), what=what)

    def redefine(self, xml: str, what: str | None = None) -> None:
        """Replace the persistent definition (same name and UUID)."""
        call(what or f"redefining VM '{self.name}'", self._raw.connect().defineXML, xml)

    def set_metadata(self, key: str, namespace: str, xml: str | None, *, what: str) -> None:
        """Set (``None``: remove) a metadata element in the definition and, while the
        domain runs, in the live state."""
        flags = _affect(self.is_active(), self.is_persistent())
        call(what, self._raw.setMetadata, libvirt.VIR_DOMAIN_METADATA_ELEMENT, xml, key,
             namespace, flags)

    # ---------------------------------------------------------------- life cycle
    def has_managed_save(self) -> bool:
        return self.is_persistent() and bool(
            call(f"reading the managed-save state of VM '{self.name}'",
                 self._raw.hasManagedSaveImage, 0))

    def remove_managed_save(self) -> None:
        call(f"removing managed-save image of VM '{self.name}'",
             self._raw.managedSaveRemove, 0)

    def start(self, *, paused: bool = False, what: str | None = None) -> None:
        flags = libvirt.VIR_DOMAIN_START_PAUSED if paused else 0
        call(what or f"starting VM '{self.name}'", self._raw.createWithFlags, flags)

    def shutdown(self, mode: ShutdownMode = "acpi") -> None:
        """Ask the guest to power off (ACPI button or the guest agent); returns at once."""
        flags = (libvirt.VIR_DOMAIN_SHUTDOWN_GUEST_AGENT if mode == "agent"
                 else libvirt.VIR_DOMAIN_SHUTDOWN_ACPI_POWER_BTN)
        try:
            self._raw.shutdownFlags(flags)
        except libvirt.libvirtError as err:
            if connection_lost(err):
                raise translate(err, f"shutting down VM '{self.name}'") from err
            if mode == "agent":
                raise translate_agent_error(err, self.name, "guest-shutdown") from err
            raise HypervisorError(f"shutting down VM '{self.name}' failed: "
                                  f"{error_text(err)}") from err

    def reboot(self, mode: ShutdownMode = "acpi") -> None:
        flags = (libvirt.VIR_DOMAIN_REBOOT_GUEST_AGENT if mode == "agent"
                 else libvirt.VIR_DOMAIN_REBOOT_ACPI_POWER_BTN)
        call(f"rebooting VM '{self.name}'", self._raw.reboot, flags)

    def destroy(self, what: str | None = None) -> None:
        call(what or f"destroying VM '{self.name}'", self._raw.destroy)

    def suspend(self) -> None:
        call(f"suspending VM '{self.name}'", self._raw.suspend)

    def resume(self) -> None:
        call(f"resuming VM '{self.name}'", self._raw.resume)

    def undefine(self) -> None:
        """Remove the definition with its managed save, NVRAM and the metadata of its
        snapshots and checkpoints (their files stay)."""
        flags = (libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE
                 | libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA
                 | getattr(libvirt, "VIR_DOMAIN_UNDEFINE_CHECKPOINTS_METADATA", 0)
                 | libvirt.VIR_DOMAIN_UNDEFINE_NVRAM)
        call(f"undefining VM '{self.name}'", self._raw.undefineFlags, flags)

    def autostart(self) -> bool:
        return bool(call("reading autostart", self._raw.autostart))

    def set_autostart(self, enabled: bool) -> None:
        call(f"setting autostart of VM '{self.name}'", self._raw.setAutostart,
             1 if enabled else 0)

    def set_vcpus(self, count: int, *, live: bool, config: bool) -> None:
        call(f"setting the vCPUs of VM '{self.name}' to {count}", self._raw.setVcpusFlags,
             count, _affect(live, config))

    def set_max_vcpus(self, count: int) -> None:
        """The most vCPUs the definition allows (takes effect at the next start)."""
        call(f"setting the maximum vCPUs of VM '{self.name}' to {count}",
             self._raw.setVcpusFlags, count,
             libvirt.VIR_DOMAIN_AFFECT_CONFIG | libvirt.VIR_DOMAIN_VCPU_MAXIMUM)

    def set_memory(self, size: int, *, live: bool, config: bool) -> None:
        """The current memory (balloon target), bytes."""
        call(f"setting the memory of VM '{self.name}'", self._raw.setMemoryFlags,
             size // 1024, _affect(live, config))

    def set_max_memory(self, size: int) -> None:
        """The maximum memory of the definition, bytes (takes effect at the next start)."""
        call(f"setting the maximum memory of VM '{self.name}'", self._raw.setMemoryFlags,
             size // 1024, libvirt.VIR_DOMAIN_AFFECT_CONFIG | libvirt.VIR_DOMAIN_MEM_MAXIMUM)

    # ---------------------------------------------------------------- devices
    def attach_device(self, xml: str, *, live: bool, config: bool, what: str) -> None:
        call(what, self._raw.attachDeviceFlags, xml, _affect(live, config))

    def detach_device(self, xml: str, *, live: bool, config: bool, what: str) -> None:
        call(what, self._raw.detachDeviceFlags, xml, _affect(live, config))

    def set_block_iotune(self, target: str, limits: Mapping[str, int], *, live: bool,
                         config: bool, what: str) -> None:
        """A disk's I/O limits (``virDomainSetBlockIoTune``; libvirt's parameter names,
        0 removes a limit). libvirt takes each group -- bytes, iops -- whole: give all
        three of a group you change."""
        call(what, self._raw.setBlockIoTune, target, {k: int(v) for k, v in limits.items()},
             _affect(live, config))

    def update_device(self, xml: str, *, live: bool, config: bool, what: str) -> None:
        """Change a device in place (e.g. a NIC's ``<link state>``)."""
        call(what, self._raw.updateDeviceFlags, xml, _affect(live, config))

    # ---------------------------------------------------------------- QEMU channels
    def agent_command(self, command: str, arguments: Mapping[str, Any] | None = None, *,
                      timeout: int = 10) -> Any:
        """One guest-agent command through libvirt; its ``return`` value, or the
        precise GuestAgentError."""
        request: dict[str, Any] = {"execute": command}
        if arguments:
            request["arguments"] = dict(arguments)
        try:
            reply = libvirt_qemu.qemuAgentCommand(self._raw, json.dumps(request), timeout, 0)
        except libvirt.libvirtError as err:
            if connection_lost(err):
                raise translate(err, f"guest agent command '{command}' on VM "
                                     f"'{self.name}'") from err
            raise translate_agent_error(err, self.name, command) from err
        return json.loads(reply).get("return")

    def monitor_command(self, text: str, *, hmp: bool = False, what: str) -> str:
        """One QMP command (JSON text) or, with ``hmp``, one HMP command line; QEMU's
        reply text. libvirt marks the VM tainted (custom-monitor)."""
        flags = (libvirt_qemu.VIR_DOMAIN_QEMU_MONITOR_COMMAND_HMP if hmp
                 else libvirt_qemu.VIR_DOMAIN_QEMU_MONITOR_COMMAND_DEFAULT)
        return str(call(what, libvirt_qemu.qemuMonitorCommand, self._raw, text, flags))

    # ---------------------------------------------------------------- block jobs
    def block_commit_active(self, target: str, *, what: str) -> None:
        """Start merging the top overlay of disk ``target`` into its backing file
        (an active, shallow commit; pivot with :meth:`block_job_pivot`)."""
        flags = (libvirt.VIR_DOMAIN_BLOCK_COMMIT_ACTIVE
                 | libvirt.VIR_DOMAIN_BLOCK_COMMIT_SHALLOW)
        call(what, self._raw.blockCommit, target, None, None, 0, flags)

    def block_job(self, target: str) -> BlockJob | None:
        """The block job of disk ``target``, None when it has none."""
        job = call(f"reading the block job of disk {target}", self._raw.blockJobInfo,
                   target, 0)
        if not job:
            return None
        return BlockJob(int(job.get("type", 0)), int(job.get("cur", 0)),
                        int(job.get("end", 0)))

    def block_job_pivot(self, target: str) -> bool:
        """Pivot a ready commit or copy job; False when QEMU says it is not ready yet."""
        try:
            self._raw.blockJobAbort(target, libvirt.VIR_DOMAIN_BLOCK_JOB_ABORT_PIVOT)
        except libvirt.libvirtError as err:
            if error_code(err) == BLOCK_COPY_ACTIVE:
                return False
            raise translate(err, f"pivoting disk {target} of VM '{self.name}'") from err
        return True

    def block_job_abort(self, target: str) -> None:
        call(f"cancelling the block job of disk {target} of VM '{self.name}'",
             self._raw.blockJobAbort, target, 0)

    # ---------------------------------------------------------------- snapshots
    def find_snapshot(self, name: str) -> Snapshot | None:
        try:
            return Snapshot(self._raw.snapshotLookupByName(name, 0), self.name)
        except libvirt.libvirtError as err:
            if error_code(err) == NO_SNAPSHOT:
                return None
            raise translate(err, f"looking up snapshot '{name}' of VM '{self.name}'") from err

    def snapshot(self, name: str) -> Snapshot:
        found = self.find_snapshot(name)
        if found is None:
            raise NotFoundError(f"VM '{self.name}' has no snapshot '{name}'",
                                hint=f"see 'kvmops snapshot list {self.name}'")
        return found

    def snapshots(self) -> list[Snapshot]:
        found = call(f"listing snapshots of VM '{self.name}'", self._raw.listAllSnapshots, 0)
        return [Snapshot(s, self.name) for s in found]

    def current_snapshot(self) -> str | None:
        """The name of the current snapshot (None: none, or unreadable)."""
        try:
            if not self._raw.hasCurrentSnapshot(0):
                return None
            return str(self._raw.snapshotCurrent(0).getName())
        except libvirt.libvirtError as err:
            if connection_lost(err):
                raise translate(err, f"reading the current snapshot of VM '{self.name}'"
                                ) from err
            return None

    def create_snapshot(self, xml: str, *, disk_only: bool = False, atomic: bool = False,
                        quiesce: bool = False, what: str) -> None:
        """Create a snapshot from ``<domainsnapshot>`` XML; a refusal raises
        SnapshotCreateError (telling whether the agent or checkpoints were the cause)."""
        flags = 0
        if disk_only:
            flags |= libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_DISK_ONLY
        if atomic:
            flags |= libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_ATOMIC
        if quiesce:
            flags |= libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_QUIESCE
        try:
            self._raw.snapshotCreateXML(xml, flags)
        except libvirt.libvirtError as err:
            translated = translate(err, what)
            if connection_lost(err):
                raise translated from err
            code, text = error_code(err), error_text(err)
            agent = quiesce and (code in AGENT_CODES or libvirt_desc(text) != text
                                 or code == libvirt.VIR_ERR_ARGUMENT_UNSUPPORTED)
            checkpoints = False
            if code in _CHECKPOINT_REFUSALS:
                with contextlib.suppress(KvmopsError):
                    checkpoints = not self.is_active() and bool(self.checkpoints())
            raise SnapshotCreateError(translated, text, agent=agent,
                                      checkpoints=checkpoints) from err

    def redefine_snapshot(self, xml: str, *, current: bool, what: str) -> None:
        """Replace a snapshot's metadata (``REDEFINE``), optionally making it current."""
        flags = libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_REDEFINE
        if current:
            flags |= libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_CURRENT
        call(what, self._raw.snapshotCreateXML, xml, flags)

    def revert_to(self, snapshot: Snapshot, *, running: bool = False, paused: bool = False,
                  force: bool = False, what: str) -> None:
        flags = 0
        if running:
            flags |= libvirt.VIR_DOMAIN_SNAPSHOT_REVERT_RUNNING
        elif paused:
            flags |= libvirt.VIR_DOMAIN_SNAPSHOT_REVERT_PAUSED
        if force:
            flags |= libvirt.VIR_DOMAIN_SNAPSHOT_REVERT_FORCE
        call(what, self._raw.revertToSnapshot, snapshot._raw, flags)

    # ---------------------------------------------------------------- checkpoints
    def checkpoints(self) -> list[Checkpoint]:
        """Every checkpoint of the VM, as libvirt lists them."""
        found = call("listing checkpoints", self._raw.listAllCheckpoints, 0)
        return [Checkpoint(c, self.name) for c in found]

    def create_checkpoint(self, xml: str, *, redefine: bool = False, validate: bool = True,
                          what: str) -> Checkpoint:
        """Create a checkpoint from ``<domaincheckpoint>`` XML, or with ``redefine`` put
        back the metadata of one whose bitmaps exist (``validate``: libvirt checks them)."""
        flags = 0
        if redefine:
            flags |= libvirt.VIR_DOMAIN_CHECKPOINT_CREATE_REDEFINE
            if validate:
                flags |= getattr(libvirt, "VIR_DOMAIN_CHECKPOINT_CREATE_REDEFINE_VALIDATE", 0)
        return Checkpoint(call(what, self._raw.checkpointCreateXML, xml, flags), self.name)

    def find_checkpoint(self, name: str, what: str | None = None) -> Checkpoint | None:
        """The checkpoint ``name``; None when it is not there (or cannot be read); a lost
        connection raises (``what`` names the action for that error)."""
        try:
            return Checkpoint(self._raw.checkpointLookupByName(name, 0), self.name)
        except libvirt.libvirtError as err:
            if connection_lost(err):
                raise translate(err, what or f"looking up checkpoint {name}") from err
            return None


def clear_tap_shaping(dev: str | None) -> None:
    """Remove the tc root and ingress qdiscs of a VM's tap: what libvirt leaves behind
    when its bandwidth rules fail half way (an htb root without its sfq leaf). Never
    fails; only for a NIC that had no limits before."""
    import subprocess  # only this cleanup runs tc

    if not dev or "/" in dev or dev.startswith("-"):
        return
    for kind in ("root", "ingress"):
        with contextlib.suppress(OSError, subprocess.TimeoutExpired):
            subprocess.run(["tc", "qdisc", "del", "dev", dev, kind], capture_output=True,
                           timeout=10, check=False)
