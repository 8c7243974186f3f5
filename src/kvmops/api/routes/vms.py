"""VMs: list, info, create, power actions, undefine, clone, XML, autostart."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Literal

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import PlainTextResponse
from pydantic import Field, model_validator

from kvmops.api.deps import (
    Ctx,
    HostDep,
    HostName,
    HostUri,
    LongRequest,
    OperatorCaller,
    ViewerCaller,
    VmNameDep,
)
from kvmops.api.routes.common import Body, JobAccepted, Message, accepted
from kvmops.api.runner import JobContext
from kvmops.api.validators import AbsolutePath, ImageSize, MacAddress, MemorySize, VmName
from kvmops.services import fleet, placement, vms
from kvmops.services.nics import Vlan
from kvmops.services.placement import Placement
from kvmops.services.session import Connection, open_connection
from kvmops.services.vms import (
    Accelerator,
    CreateRequest,
    DiskRequest,
    NicSpec,
    UndefineResult,
    VmInfo,
    VmListItem,
)

router = APIRouter(prefix="/vms", tags=["vms"])
_NET_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$")


class DiskBody(Body):
    size: ImageSize | None = Field(default=None, description="new image of this size, e.g. 10G")
    path: AbsolutePath | None = Field(default=None, description="existing image")
    format: Literal["qcow2", "raw"] | None = None
    bus: Literal["virtio", "sata", "scsi", "ide"] = "virtio"
    pool: str | None = Field(default=None, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.+-]{0,63}$",
                             description="storage pool: a new volume of size, or volume")
    volume: str | None = Field(default=None,
                               pattern=r"^[A-Za-z0-9][A-Za-z0-9_.+:-]{0,127}$",
                               description="with pool: an existing volume (or the new "
                                           "one's name)")

    @model_validator(mode="after")
    def one_source(self) -> DiskBody:
        if self.pool is not None:
            if self.path is not None or (self.size is None and self.volume is None):
                raise ValueError("a pool disk takes size (a new volume) or volume, not path")
            return self
        if self.volume is not None:
            raise ValueError("volume needs pool")
        if (self.size is None) == (self.path is None):
            raise ValueError("give exactly one of size and path")
        return self  # what a disk may be: services.vms.check_request, as for the CLI


class NicBody(Body):
    network: str | None = Field(default=None, pattern=_NET_RE.pattern)
    bridge: str | None = Field(default=None, pattern=_NET_RE.pattern)
    model: Literal["virtio", "e1000", "rtl8139"] = "virtio"
    mac: MacAddress | None = None
    queues: int | None = Field(default=None, ge=1, le=256,
                               description="virtio multiqueue: queue pairs")
    boot: int | None = Field(default=None, ge=1, le=99,
                             description="network boot position; disks boot after it")
    vlan: int | None = Field(default=None, ge=1, le=4094,
                             description="access VLAN tag (Open vSwitch network or bridge)")

    @model_validator(mode="after")
    def one_source(self) -> NicBody:
        if (self.network is None) == (self.bridge is None):
            raise ValueError("give exactly one of network and bridge")
        return self  # MACs unique in the request and on the host: services, as --nic

    def spec(self) -> NicSpec:
        return NicSpec(kind="network" if self.network is not None else "bridge",
                       source=self.network or self.bridge or "", model=self.model,
                       mac=self.mac, queues=self.queues, boot_order=self.boot,
                       vlan=Vlan((self.vlan,)) if self.vlan is not None else None
                       ).check_queues_and_boot()


class CreateVmBody(Body):
    name: VmName
    memory: MemorySize = Field(description="e.g. 256M or 2G; a bare number is MiB")
    vcpus: int = Field(default=1, ge=1, le=256)
    sockets: int | None = Field(default=None, ge=1, le=64)
    cores: int | None = Field(default=None, ge=1, le=256)
    threads: int | None = Field(default=None, ge=1, le=8)
    disks: list[DiskBody] = Field(default_factory=list, max_length=26)
    kernel: AbsolutePath | None = None
    initrd: AbsolutePath | None = None
    cmdline: str | None = Field(default=None, max_length=4096)
    cdrom: AbsolutePath | None = None
    network: str | None = Field(default=None, pattern=_NET_RE.pattern)
    bridge: str | None = Field(default=None, pattern=_NET_RE.pattern)
    mac: MacAddress | None = None
    nics: list[NicBody] = Field(default_factory=list, max_length=16,
                                description="more NICs, after network/bridge's")
    agent: bool = True
    images_dir: AbsolutePath | None = None
    accelerator: Literal["kvm", "tcg"] | None = None
    start: bool = False
    force: bool = Field(default=False, description="create it although memory or disk "
                                                   "space would be overcommitted")

    def request(self) -> CreateRequest:
        return CreateRequest(
            name=self.name, memory=self.memory, vcpus=self.vcpus, sockets=self.sockets,
            cores=self.cores, threads=self.threads,
            disks=[DiskRequest(size=d.size, path=d.path, fmt=d.format, bus=d.bus,
                               pool=d.pool, volume=d.volume) for d in self.disks],
            kernel=self.kernel, initrd=self.initrd, cmdline=self.cmdline, cdrom=self.cdrom,
            network=self.network, bridge=self.bridge, mac=self.mac,
            nics=[n.spec() for n in self.nics], agent=self.agent,
            images_dir=self.images_dir,
            accelerator=Accelerator(self.accelerator) if self.accelerator else None,
            start=self.start, force=self.force)


class StartBody(Body):
    paused: bool = False
    discard_managed_save: bool = False


class ShutdownBody(Body):
    mode: Literal["acpi", "agent"] = "acpi"
    timeout: float = Field(default=60.0, gt=0, le=3600)
    wait: bool = True


class RebootBody(Body):
    mode: Literal["acpi", "agent"] = "acpi"


class CloneBody(Body):
    new_name: VmName
    images_dir: AbsolutePath | None = None


class AutostartBody(Body):
    enabled: bool


def _own_host(uri: str | None) -> Connection:
    """Jobs get their own connection: they may outlive a reconnect of the shared one."""
    return open_connection(uri)


#: ``?host=all``: the hosts that did not answer in time, ``NAME: reason; ...``.
UNREACHABLE_HEADER = "X-Kvmops-Unreachable"
ALL_HOSTS = "all"


def _header_text(text: str) -> str:
    return "".join(c if " " <= c <= "~" and c != ";" else " " for c in text)[:300]


@router.get("", response_model=list[VmListItem], responses={200: {"headers": {
    UNREACHABLE_HEADER: {"description": "with host=all: the hosts that did not answer "
                                        "within the deadline, 'NAME: reason; ...'",
                         "schema": {"type": "string"}}}}})
def list_all(caller: ViewerCaller, ctx: Ctx, response: Response, name: HostName
             ) -> list[VmListItem]:
    """Every VM of the local host, of ``?host=NAME``, or with ``?host=all`` of every
    host (asked at once, each within a deadline; one that does not answer is named in
    the X-Kvmops-Unreachable header and the others are listed). Each VM has its
    ``host``."""

    def local() -> list[VmListItem]:
        return ctx.vm_list.get(ctx.host(), caller)

    if name == ALL_HOSTS:
        found = fleet.list_all_vms(caller, db=ctx.store, local=local)
        if found.unreachable:
            response.headers[UNREACHABLE_HEADER] = "; ".join(
                f"{gone.host}: {_header_text(gone.error)}" for gone in found.unreachable)
        return found.vms
    if fleet.is_local(name):
        return [dataclasses.replace(vm, host=fleet.LOCAL) for vm in local()]
    return fleet.host_vms(caller, name, ctx.store)


@router.get("/{name}", response_model=VmInfo)
def get_vm(caller: ViewerCaller, name: VmNameDep, host: HostDep) -> VmInfo:
    return vms.info(caller, host, name)


@dataclass
class CreatedVm(VmInfo):
    """The new VM, the host it was created on, and -- with ``host=auto`` -- where
    placement put it and why (every host's verdict, as ``vm create --host auto``
    prints)."""

    host: str | None = None
    placement: Placement | None = None


def _placement_note(placed: Placement) -> str:
    return f"placed on {placed.host}: {placed.reason}"


@router.post("", status_code=201, response_model=CreatedVm | JobAccepted,
             responses={202: {"model": JobAccepted, "description": "a disk is created: job "
                                                                   "(its result: the VM)"},
                        409: {"description": "host=auto: no host can take the VM (every "
                                             "host's reason in the message)"}})
def create_vm(caller: OperatorCaller, body: CreateVmBody, ctx: Ctx, name: HostName,
              request: Request, response: Response) -> CreatedVm | JobAccepted:
    """Define a new VM on the local host, on ``?host=NAME``, or with ``?host=auto`` on
    the host placement picks (memory, vCPUs, pool space, the VM's networks): the
    answer's ``placement`` says which and why; none fits: 409 naming every host's
    reason. A new disk makes it a job."""
    request.state.target = body.name  # the audit row names the new VM
    req, _notes = vms.check_create(caller, body.request())
    placed: Placement | None = None
    if name == placement.AUTO:  # a refusal: StateError (409) naming every host's reason
        placed, _uri = placement.place_request(caller, req, ctx.store)
        name = placed.host
    where = name or fleet.LOCAL
    uri = ctx.settings.uri if fleet.is_local(name) else fleet.uri_of(caller, name, ctx.store)

    def created(vm: VmInfo) -> CreatedVm:
        return CreatedVm(**vars(vm), host=where, placement=placed)

    if not any(d.size is not None for d in req.disks):
        host = fleet.connection(caller, name, ctx.store, local=ctx.host)
        vm = vms.create(caller, host, req)
        ctx.domain_types.invalidate()
        ctx.vm_list.invalidate()
        return created(vm)

    def run(job: JobContext) -> CreatedVm:
        if placed is not None:
            job.note(_placement_note(placed))
        with _own_host(uri) as own:
            return created(vms.create(caller, own, req, progress=job.note))

    return accepted(ctx.runner.submit("vm.create", req.name, caller.name, run), response)


@router.post("/{name}/start", response_model=Message)
def start(caller: OperatorCaller, name: VmNameDep, host: HostDep, ctx: Ctx,
          body: StartBody | None = None) -> Message:
    body = body or StartBody()
    vms.start(caller, host, name, paused=body.paused,
              discard_managed_save=body.discard_managed_save)
    ctx.vm_list.invalidate()
    return Message(message=f"VM '{name}' started" + (" (paused)" if body.paused else ""))


@router.post("/{name}/shutdown", response_model=Message, dependencies=[LongRequest])
def shutdown(caller: OperatorCaller, name: VmNameDep, host: HostDep, ctx: Ctx,
             body: ShutdownBody | None = None) -> Message:
    body = body or ShutdownBody()
    vms.shutdown(caller, host, name, mode=body.mode, timeout=body.timeout, wait=body.wait)
    ctx.vm_list.invalidate()
    return Message(message=f"VM '{name}' " + ("shut off" if body.wait else "shutting down"))


@router.post("/{name}/destroy", response_model=Message)
def destroy(caller: OperatorCaller, name: VmNameDep, host: HostDep, ctx: Ctx) -> Message:
    vms.destroy(caller, host, name)
    ctx.vm_list.invalidate()
    return Message(message=f"VM '{name}' forced off")


@router.post("/{name}/reboot", response_model=Message)
def reboot(caller: OperatorCaller, name: VmNameDep, host: HostDep, ctx: Ctx,
           body: RebootBody | None = None) -> Message:
    vms.reboot(caller, host, name, mode=(body or RebootBody()).mode)
    ctx.vm_list.invalidate()
    return Message(message=f"VM '{name}' rebooting")


@router.post("/{name}/suspend", response_model=Message)
def suspend(caller: OperatorCaller, name: VmNameDep, host: HostDep, ctx: Ctx) -> Message:
    vms.suspend(caller, host, name)
    ctx.vm_list.invalidate()
    return Message(message=f"VM '{name}' paused")


@router.post("/{name}/resume", response_model=Message)
def resume(caller: OperatorCaller, name: VmNameDep, host: HostDep, ctx: Ctx) -> Message:
    vms.resume(caller, host, name)
    ctx.vm_list.invalidate()
    return Message(message=f"VM '{name}' resumed")


@router.delete("/{name}", response_model=Message)
def undefine(caller: OperatorCaller, name: VmNameDep, ctx: Ctx, host: HostDep,
             remove_storage: bool = Query(False)) -> Message:
    result: UndefineResult = vms.undefine(caller, host, name, remove_storage=remove_storage)
    ctx.domain_types.invalidate()
    ctx.vm_list.invalidate()
    return Message(message=f"VM '{name}' undefined",
                   details={"removed": result.removed, "kept": result.kept})


@router.post("/{name}/clone", status_code=202, response_model=JobAccepted)
def clone(caller: OperatorCaller, name: VmNameDep, body: CloneBody, ctx: Ctx,
          uri: HostUri, response: Response) -> JobAccepted:
    vms.check_clone(caller, body.images_dir)

    def run(job: JobContext) -> VmInfo:
        with _own_host(uri) as own:
            return vms.clone(caller, own, name, body.new_name, images_dir=body.images_dir,
                             progress=lambda label, pct: job.percent(pct, label))

    return accepted(ctx.runner.submit("vm.clone", name, caller.name, run), response)


@router.get("/{name}/xml", response_class=PlainTextResponse,
            responses={200: {"content": {"application/xml": {}}}})
def xml(caller: ViewerCaller, name: VmNameDep, host: HostDep, inactive: bool = Query(False)
        ) -> PlainTextResponse:
    return PlainTextResponse(vms.dumpxml(caller, host, name, inactive=inactive),
                             media_type="application/xml")


@router.put("/{name}/autostart", response_model=Message)
def autostart(caller: OperatorCaller, name: VmNameDep, body: AutostartBody, host: HostDep
              ) -> Message:
    vms.set_autostart(caller, host, name, body.enabled)
    return Message(message=f"autostart of VM '{name}' "
                           f"{'enabled' if body.enabled else 'disabled'}")



