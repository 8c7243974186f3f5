"""Hosts: the libvirt hosts this server manages (viewers list and read; admins add and
remove). The list asks every host at once, each under a deadline: a host that does not
answer in time is listed ``reachable: false`` with the reason, without delaying the
others. ``local`` (the server's own libvirt URI) is always there."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

from fastapi import APIRouter, Query, Request, Response
from fastapi import Path as PathParam
from pydantic import Field

from kvmops.api.deps import AdminCaller, Ctx, OperatorCaller, ViewerCaller
from kvmops.api.routes.common import Body, JobAccepted, Message, accepted
from kvmops.api.runner import JobContext
from kvmops.errors import CancelledError
from kvmops.services import host as host_service
from kvmops.services import hosts as service
from kvmops.services.host import DoctorReport
from kvmops.services.hosts import HostEntry, HostHealth

router = APIRouter(prefix="/hosts", tags=["hosts"])
_EVENTS = ("this server's libvirt life cycle subscription to the host: 'subscribed' or "
           "'down: REASON' (retried with a backoff); null when the server watches no events")


@dataclass
class HostListed(HostEntry):
    events: str | None = None  # see _EVENTS


@dataclass
class HostInfo(HostHealth):
    events: str | None = None  # see _EVENTS
_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
NamePath = PathParam(pattern=_NAME, description="host name ('local': this server's)")


class HostBody(Body):
    name: str = Field(pattern=_NAME)
    uri: str = Field(min_length=1, max_length=1024,
                     description="qemu+ssh://[USER@]HOST/system, qemu+tls://HOST/system, "
                                 "qemu+tcp://HOST/system, qemu+unix:///system")
    check: bool = Field(True, description="connect to it once before adding it")
    labels: dict[str, str] = Field(default_factory=dict, max_length=32)


@router.get("", response_model=list[HostListed])
def list_hosts(caller: ViewerCaller, ctx: Ctx,
               timeout: float = Query(service.DEFAULT_DEADLINE_S, gt=0, le=30,
                                      description="seconds to wait for each host")
               ) -> list[HostListed]:
    """Every host (``events``: this server's life cycle subscription to it,
    ``subscribed`` or ``down: REASON``)."""
    return [HostListed(**vars(entry), events=ctx.host_events_state(entry.name))
            for entry in service.list_hosts(caller, ctx.store, deadline=timeout)]


@router.post("", status_code=201, response_model=HostEntry)
def add_host(caller: AdminCaller, ctx: Ctx, body: HostBody, request: Request) -> HostEntry:
    """Add a host (connected to once first unless ``check`` is false)."""
    request.state.target = body.name
    entry = service.add_host(caller, body.name, body.uri, ctx.store, check=body.check,
                             labels=body.labels)
    ctx.hosts_changed()  # its life cycle events from now on
    return entry


@router.get("/{name}", response_model=HostInfo)
def host_info(caller: ViewerCaller, ctx: Ctx, name: str = NamePath) -> HostInfo:
    """The host's health: reachable, versions, accelerator, CPU model, memory, pool
    space, VM counts, when it last answered; ``events``: the server's subscription."""
    health = service.host_info(caller, name, ctx.store)
    return HostInfo(**vars(health), events=ctx.host_events_state(health.name))


@router.delete("/{name}", response_model=Message)
def remove_host(caller: AdminCaller, ctx: Ctx, name: str = NamePath) -> Message:
    service.remove_host(caller, name, ctx.store)
    ctx.hosts_changed()  # its life cycle watch stops
    return Message(message=f"host '{name}' removed")


@router.get("/{name}/doctor", response_model=DoctorReport)
def last_doctor(caller: ViewerCaller, ctx: Ctx, name: str = NamePath) -> DoctorReport:
    """The host's last doctor report (``kvmops host doctor``, or POST here); 404 when the
    doctor never ran there."""
    return host_service.last_doctor(caller, name, ctx.store)


@router.post("/{name}/doctor", response_model=DoctorReport)
def run_doctor(caller: OperatorCaller, ctx: Ctx, name: str = NamePath,
               probes: bool = Query(True, description="start the probe guests (this "
                                                      "machine only; 10-40 s)")
               ) -> DoctorReport:
    """Run the doctor on the host now (operators and admins: it starts probe guests) and
    keep the report as its last; 200 also when checks fail (see ``ok``). ``local``: every
    check; another host: its libvirt-side checks."""
    return host_service.doctor_of(caller, name, ctx.store, probes=probes)


class EvacuateBody(Body):
    dry_run: bool = Field(False, description="the plan only (VM -> host, why; blockers)")
    parallel: int = Field(2, ge=1, le=16, description="migrations at once")
    copy_storage: bool = Field(False, description="copy the VMs' local disks")
    bandwidth_mib: int | None = Field(default=None, ge=1, le=1_000_000,
                                      description="MiB/s cap for each migration")
    auto_converge: bool = False


@router.post("/{name}/evacuate", status_code=202, response_model=JobAccepted)
def evacuate(caller: OperatorCaller, ctx: Ctx, body: EvacuateBody, response: Response,
             name: str = NamePath) -> JobAccepted:
    """Migrate every running VM of the host to the others, placed by room (a job; its
    result is the report: per VM the target and why, moved or why not). ``dry_run``:
    the plan only, nothing changes."""
    from kvmops.services import evacuate as evacuation
    from kvmops.services import migration

    service.uri_of(caller, service.validate_name(name), ctx.store)  # 404 before a job

    def run(job: JobContext) -> evacuation.EvacuationReport:
        moving: list[int] = [0, 0]  # VMs to move, VMs done

        def planned(plan: evacuation.EvacuationReport) -> None:
            moving[0] = sum(1 for item in plan.vms if item.status == "planned")
            for item in plan.vms:
                job.note(f"plan: {item.line()}")

        def progress(vm: str, update: migration.MigrationProgress) -> None:
            with contextlib.suppress(CancelledError):  # seen through ``cancelled``
                job.note(f"{vm}: {migration.describe(update)}")

        def noted(line: str) -> None:
            if ": migrating to " not in line:
                moving[1] += 1
            with contextlib.suppress(CancelledError):
                if moving[0]:
                    job.percent(100.0 * moving[1] / moving[0], line)
                else:
                    job.note(line)

        return evacuation.evacuate(caller, name, ctx.store, parallel=body.parallel,
                                   dry_run=body.dry_run, copy_storage=body.copy_storage,
                                   bandwidth_mib=body.bandwidth_mib,
                                   auto_converge=body.auto_converge,
                                   on_plan=planned, progress=progress, note=noted,
                                   cancelled=job.cancelled.is_set)

    return accepted(ctx.runner.submit("host.evacuate", name, caller.name, run), response)
