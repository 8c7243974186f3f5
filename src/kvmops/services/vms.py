"""VM use cases that name files: create (with existing disks, kernel, ISO), clone and
undefine with storage -- each path through the path policy before anything runs."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from xml.parsers import expat

from kvmops.errors import NotFoundError, StateError, ValidationError
from kvmops.host.accel import Accelerator
from kvmops.host.connection import Host
from kvmops.host.domain import Domain
from kvmops.lazy import OnFirstUse
from kvmops.paths import policy
from kvmops.records import Record
from kvmops.services.audit import audited
from kvmops.services.caller import Caller
from kvmops.sizes import format_size

if TYPE_CHECKING:
    from kvmops.vm import lifecycle
    from kvmops.vm.domxml import NicSpec
    from kvmops.vm.lifecycle import (
        CreateRequest,
        DiskRequest,
        ShutdownMode,
        UndefineResult,
        VmInfo,
    )
else:
    # The life cycle (and the domain XML it parses, lxml) loads on first use: the VM
    # list needs neither (quick ``kvmops vm list``).
    lifecycle = OnFirstUse("kvmops.vm.lifecycle")

__all__ = ["Accelerator", "CreateRequest", "DiskRequest", "NicSpec", "ShutdownMode",
           "UndefineResult", "VmInfo"]  # the faces' models
_MODELS = frozenset(__all__) - {"Accelerator"}


def __getattr__(name: str) -> Any:
    if name in _MODELS:
        return getattr(lifecycle, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _file(caller: Caller, path: Path | None, what: str, vm: str) -> Path | None:
    if path is None:
        return None
    real = policy().image_path(path, trusted=caller.trusted_paths, what=what)
    if not real.is_file():
        raise NotFoundError(f"{what} file {path} not found (VM '{vm}')", hint="check the path")
    return real


MIN_MEMORY = 16 * 1024**2


def check_request(req: CreateRequest) -> None:
    """The checks of a VM's request that need no host: the one place every face's
    request passes (the API's before it queues a job)."""
    from kvmops.vm.domxml import validate_name  # here: quick kvmops vm list/info

    validate_name(req.name)
    if req.memory < MIN_MEMORY:
        raise ValidationError(f"memory {format_size(req.memory)} is too small for VM "
                              f"'{req.name}'", hint="give at least 16M")
    if req.memory > lifecycle.MAX_MEMORY:
        raise ValidationError(f"memory {format_size(req.memory)} is more than the "
                              f"{format_size(lifecycle.MAX_MEMORY)} a VM may have "
                              f"(VM '{req.name}')")
    if req.vcpus < 1:
        raise ValidationError("--vcpus must be at least 1")
    if req.initrd and not req.kernel:
        raise ValidationError("--initrd needs --kernel")
    lifecycle.requested_nics(req)  # MACs, models, --network with --bridge
    for disk in req.disks:
        if disk.size is not None and disk.size < lifecycle.MIN_DISK:
            raise ValidationError(f"a new disk of {format_size(disk.size)} is too small "
                                  f"(VM '{req.name}')", hint="give at least 1M, e.g. size=64M")


def check_create(caller: Caller, req: CreateRequest) -> tuple[CreateRequest, list[str]]:
    """The request checked (:func:`check_request`), every path checked and resolved and
    every existing disk's format chosen (given, recorded, else raw) and its chain
    checked; plus notes."""
    check_request(req)
    rules = policy()
    notes: list[str] = []
    disks = []
    for disk in req.disks:
        if disk.path is None:
            disks.append(disk)
            continue
        from kvmops.images.chain import open_user_image  # here: quick kvmops vm list/info
        from kvmops.images.usage import vms_using

        image = open_user_image(disk.path, disk.fmt, rules=rules, trusted=caller.trusted_paths)
        users = vms_using(image.path)
        if users:
            raise StateError(f"image {image.path} is in use by running VM(s) "
                             f"{', '.join(users)}", hint="two VMs writing one image corrupt it")
        notes.extend(image.notes)
        disks.append(disk.model_copy(update={"path": image.path, "fmt": image.format}))
    checked = req.model_copy(update={
        "disks": disks,
        "kernel": _file(caller, req.kernel, "kernel", req.name),
        "initrd": _file(caller, req.initrd, "initrd", req.name),
        "cdrom": _file(caller, req.cdrom, "CD-ROM ISO", req.name),
        "images_dir": rules.new_images_dir(req.images_dir, trusted=caller.trusted_paths),
    })
    return checked, notes


@audited("vm.create", target="req")
def create(caller: Caller, host: Host, req: CreateRequest,
           progress: Callable[[str], None] | None = None,
           note: Callable[[str], None] | None = None) -> VmInfo:
    """Create a VM; ``note`` hears what the user should know (e.g. an image read as raw
    whose first bytes look like another format), ``progress`` the steps."""
    checked, notes = check_create(caller, req)
    for text in notes:
        (note or progress or (lambda _t: None))(text)
    return lifecycle.create(host, _with_virtualports(host, checked), progress=progress,
                            note=note)


def _with_virtualports(host: Host, req: CreateRequest) -> CreateRequest:
    """A VLAN only where libvirt honours it; a NIC on an Open vSwitch bridge with the
    ``<virtualport type='openvswitch'>`` libvirt needs (else it adds the tap as a Linux
    bridge port and the VM cannot start): the NIC of ``--bridge BR`` too, which becomes
    the first ``--nic bridge=BR`` for that."""
    import dataclasses

    from kvmops.services.nics import nic_virtualport
    from kvmops.vm.domxml import NicSpec

    if req.bridge and not req.network and nic_virtualport(host, req.name, "bridge",
                                                          req.bridge, None):
        first = NicSpec(kind="bridge", source=req.bridge, mac=req.mac)
        req = req.model_copy(update={"bridge": None, "mac": None,
                                     "nics": [first, *req.nics]})
    if not req.nics:
        return req
    return req.model_copy(update={"nics": [
        dataclasses.replace(n, virtualport=n.virtualport or nic_virtualport(
            host, req.name, n.kind, n.source, n.vlan)) for n in req.nics]})


def check_clone(caller: Caller, images_dir: Path | None) -> Path:
    return policy().new_images_dir(images_dir, trusted=caller.trusted_paths)


@audited("vm.clone", target="source")  # as the API names it
def clone(caller: Caller, host: Host, source: str, new_name: str, *,
          images_dir: Path | None = None,
          progress: Callable[[str, float], None] | None = None) -> VmInfo:
    from kvmops.services.jobs import track  # here: quick kvmops vm list/info (uuid, platform)
    from kvmops.services.sriov import check_clone_sharing

    check_clone_sharing(source, host.lookup(source).xml(inactive=True,
                                                        what=f"reading VM '{source}'"))
    directory = check_clone(caller, images_dir)
    with track(caller, "vm.clone", source) as job:
        def report(label: str, pct: float) -> None:
            job.percent(pct, label)
            if progress is not None:
                progress(label, pct)

        result = lifecycle.clone(host, source, new_name, images_dir=directory,
                                 progress=report)
        job.result = result
    return result


@audited("vm.undefine", target="name")
def undefine(caller: Caller, host: Host, name: str, *, remove_storage: bool = False
             ) -> UndefineResult:
    """Undefine a shut-off VM; the SR-IOV VFs it held are reset and free again."""
    has_vf = "hostdev" in host.lookup(name).xml(inactive=True, what=f"reading VM '{name}'")
    result = lifecycle.undefine(host, name, remove_storage=remove_storage)
    if has_vf:
        from kvmops.services import sriov  # the database: only for VMs with VF NICs

        sriov.release_vm(caller, name)
    return result


# The VM list ------------------------------------------------------------------------
@dataclass
class VmListItem(Record):
    """One VM of ``kvmops vm list`` and ``GET /api/v1/vms``."""

    name: str
    uuid: str
    state: str
    vcpus: int
    memory: int  # bytes, configured maximum
    memory_current: int | None  # bytes, current balloon size when running
    cpu_time_ns: int | None
    accelerator: str
    autostart: bool
    persistent: bool
    host: str | None = None  # the kvmops host it is on (set where more than one is asked)


class _RootFound(Exception):
    pass


def domain_type(xml: str) -> str:
    """The ``type`` of the domain XML's root element (``kvm``, ``qemu`` for TCG): read by
    expat up to the root's start tag (a quick list parses no whole definition and
    loads no lxml)."""
    found: list[str] = []

    def start(name: str, attrs: dict[str, str]) -> None:
        found.append(attrs.get("type", "qemu") if name == "domain" else "qemu")
        raise _RootFound

    parser = expat.ParserCreate()
    parser.StartElementHandler = start
    try:
        parser.Parse(xml, True)
    except _RootFound:
        pass
    except expat.ExpatError:
        return "qemu"
    return found[0] if found else "qemu"


class DomainTypeCache:
    """UUID -> accelerator (kvm/tcg: the hypervisor type, which is not among the bulk
    statistics); entries live ``ttl`` seconds or until a life cycle event (defined,
    undefined) invalidates them."""

    def __init__(self, ttl: float = 300.0) -> None:
        self.ttl = ttl
        self._lock = threading.Lock()
        self._items: dict[str, tuple[str, float]] = {}

    def get(self, uuid: str, domain: Domain) -> str:
        now = time.monotonic()
        with self._lock:
            hit = self._items.get(uuid)
        if hit is not None and now - hit[1] < self.ttl:
            return hit[0]
        xml = domain.xml(inactive=True, what=f"reading the definition of VM '{domain.name}'")
        accel = Accelerator.from_domain_type(domain_type(xml)).value
        with self._lock:
            self._items[uuid] = (accel, now)
        return accel

    def invalidate(self, uuid: str | None = None) -> None:
        with self._lock:
            if uuid is None:
                self._items.clear()
            else:
                self._items.pop(uuid, None)


def _list_item(domain: Domain, types: DomainTypeCache) -> VmListItem | None:
    try:
        figures = domain.stats()
        uuid = domain.uuid()
        running = figures.state not in ("shut off", "no state")
        return VmListItem(
            name=domain.name, uuid=uuid, state=figures.state, vcpus=figures.vcpus,
            memory=figures.max_memory,
            memory_current=figures.memory if running else None,
            cpu_time_ns=figures.cpu_time_ns if running else None,
            accelerator=types.get(uuid, domain), autostart=domain.autostart(),
            persistent=domain.is_persistent())
    except NotFoundError:  # undefined meanwhile
        return None


def list_vms(caller: Caller, host: Host, types: DomainTypeCache | None = None
             ) -> list[VmListItem]:
    """Every defined or running VM, by name (the one list of the CLI, the API and the
    web UI). The figures come from each VM's ``virDomainGetInfo``: the bulk statistics
    call waits on every running VM's QEMU (on this kind of host ~12 ms per running VM
    against ~0.2 ms for its info)."""
    types = types or DomainTypeCache()
    items = (_list_item(domain, types) for domain in host.all_domains())
    return sorted((item for item in items if item is not None), key=lambda vm: vm.name)


class VmListCache:
    """Single-flight, short-lived cache of the list (for the server).

    A list costs libvirtd a few calls per domain; concurrent requests
    share one call, and a result younger than ``max_age`` seconds is reused
    unless a life cycle event (define, start, stop ...) invalidated it, so states
    are never stale; only CPU time figures may be up to ``max_age`` old.
    """

    def __init__(self, types: DomainTypeCache, max_age: float = 1.0) -> None:
        self.types = types
        self.max_age = max_age
        self._lock = threading.Lock()
        self._generation = 0
        self._cached: tuple[int, float, list[VmListItem]] | None = None

    def invalidate(self) -> None:
        self._generation += 1

    def get(self, host: Host, caller: Caller | None = None) -> list[VmListItem]:
        with self._lock:
            cached = self._cached
            if (cached is not None and cached[0] == self._generation
                    and time.monotonic() - cached[1] < self.max_age):
                return cached[2]
            generation = self._generation
            items = list_vms(caller or Caller(name="server"), host, self.types)
            self._cached = (generation, time.monotonic(), items)
            return items


# Life cycle -------------------------------------------------------------------------


def info(caller: Caller, host: Host, name: str) -> VmInfo:
    return lifecycle.info(host, name)


def dumpxml(caller: Caller, host: Host, name: str, *, inactive: bool = False) -> str:
    return lifecycle.dumpxml(host, name, inactive=inactive)


@audited("vm.start", target="name")
def start(caller: Caller, host: Host, name: str, *, paused: bool = False,
          discard_managed_save: bool = False, wait_agent: float | None = None) -> None:
    """Start a VM; with ``wait_agent`` wait that many seconds for its guest agent."""
    lifecycle.start(host, name, paused=paused, discard_managed_save=discard_managed_save)
    if wait_agent:
        lifecycle.wait_for_agent(host, name, wait_agent)


@audited("vm.shutdown", target="name")
def shutdown(caller: Caller, host: Host, name: str, *, mode: ShutdownMode = "acpi",
             timeout: float = 60.0, wait: bool = True) -> None:
    lifecycle.shutdown(host, name, mode=mode, timeout=timeout, wait=wait)


@audited("vm.destroy", target="name")
def destroy(caller: Caller, host: Host, name: str) -> None:
    lifecycle.destroy(host, name)


@audited("vm.suspend", target="name")
def suspend(caller: Caller, host: Host, name: str) -> None:
    lifecycle.suspend(host, name)


@audited("vm.resume", target="name")
def resume(caller: Caller, host: Host, name: str) -> None:
    lifecycle.resume(host, name)


@audited("vm.reboot", target="name")
def reboot(caller: Caller, host: Host, name: str, *, mode: ShutdownMode = "acpi") -> None:
    lifecycle.reboot(host, name, mode=mode)


@audited("vm.autostart", target="name")
def set_autostart(caller: Caller, host: Host, name: str, enabled: bool) -> None:
    lifecycle.set_autostart(host, name, enabled)
