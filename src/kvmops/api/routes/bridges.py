"""Host bridges over an uplink (``kvmops net create BR --mode bridge --uplink DEV``,
``net unbridge``, ``net rollback``) through the API: admin only, since they change the
host's own networking.

The caller's session is the HTTP client's address (``request.client``: uvicorn replaces
it by X-Forwarded-For only for the proxies of ``--forwarded-allow-ips``). Its route must
still work after the change, exactly as the CLI checks the SSH client's. A change runs
as a job (each line of the plan and of the check is a job message); it runs in a worker
thread, so the server's own signal handling stays, and the guard process that
:mod:`kvmops.services.bridges` starts restores the uplink if the server dies mid-change.
Requests are checked by a dry run first, so a bad uplink or name is a one-line 4xx at
once rather than a failed job.
"""

from __future__ import annotations

import contextlib
import ipaddress
from dataclasses import asdict
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi import Path as PathParam
from pydantic import BaseModel, Field

from kvmops.api.deps import AdminCaller, Ctx
from kvmops.api.routes.common import Body, JobAccepted, accepted
from kvmops.api.runner import JobCancelled, JobContext
from kvmops.api.throttle import client_address
from kvmops.services import bridges as service

router = APIRouter(prefix="/host", tags=["host bridges"])
_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.+-]{0,63}$"
_IFNAME = r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,14}$"
BridgePath = PathParam(pattern=_IFNAME, description="the bridge (at most 15 characters)")


class UplinkBridgeBody(Body):
    """A host bridge over an uplink; the checks of ``kvmops net create --uplink``."""

    name: str = Field(pattern=_NAME, description="the bridge, and the libvirt network "
                                                 "defined on it")
    uplink: str = Field(pattern=_IFNAME, description="the interface whose addresses and "
                                                     "routes move onto the bridge")
    bridge: str | None = Field(default=None, pattern=_IFNAME,
                               description="the bridge's name when it is not 'name'")
    verify: str | None = Field(default=None, max_length=64,
                               description="an IP address that must answer after the change "
                                           "(default: this client's address when it is "
                                           "reached through the uplink, else the gateway)")
    verify_timeout: float = Field(default=service.DEFAULT_VERIFY_TIMEOUT, gt=0, le=300)
    define: bool = Field(default=True, description="define libvirt network 'name' on the "
                                                   "bridge after the check passed")
    autostart: bool = False
    dry_run: bool = Field(default=False, description="only the plan (200), nothing changes")


class UnbridgeBody(Body):
    verify: str | None = Field(default=None, max_length=64)
    verify_timeout: float = Field(default=service.DEFAULT_VERIFY_TIMEOUT, gt=0, le=300)
    dry_run: bool = False


class BridgeJobAccepted(JobAccepted):
    """The 202 of a change: the job, and the plan it runs (as the dry run shows it)."""

    plan: list[str]
    verify_target: str | None
    verify_source: str
    notes: list[str]


_CHANGE_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": "dry_run: the plan, the host checked and nothing changed"},
    202: {"model": BridgeJobAccepted, "description": "the change runs as this job"}}


class HostInterface(BaseModel):
    name: str
    kind: str | None
    mac: str
    mtu: int
    up: bool
    master: str | None
    addresses: list[str]
    uplink_ok: bool
    why_not: str | None = None


class RollbackRecord(BaseModel):
    bridge: str
    uplink: str | None
    kind: str
    created: float | None
    pid: int | None


def session_address(request: Request) -> str | None:
    """The client's IP (an IPv4-mapped IPv6 one as IPv4), or None when it is not an IP."""
    try:
        address = ipaddress.ip_address(client_address(request).split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return str(address)


def _job_result(result: Any, log: list[str]) -> dict[str, Any]:
    return {**asdict(result), "log": log}


@router.get("/interfaces", response_model=list[HostInterface])
def host_interfaces(caller: AdminCaller) -> list[HostInterface]:
    """The host's links, and whether each can be the uplink of a new bridge."""
    return [HostInterface(**asdict(i)) for i in service.host_interfaces(caller)]


@router.post("/bridges", response_model=None, responses=_CHANGE_RESPONSES)
def create_uplink_bridge(caller: AdminCaller, body: UplinkBridgeBody, request: Request,
                         ctx: Ctx, response: Response) -> Any:
    """Create the bridge over the uplink as a job (202); ``dry_run``: the plan (200)."""
    client = session_address(request)
    request.state.target = body.bridge or body.name
    plan = service.create_over_uplink(
        caller, body.name, body.uplink, bridge=body.bridge, verify=body.verify,
        verify_timeout=body.verify_timeout, dry_run=True, autostart=body.autostart, env={},
        client=client, host=ctx.host() if body.define else None)
    if body.dry_run:
        return asdict(plan)

    def run(job: JobContext) -> dict[str, Any]:
        log: list[str] = []

        def report(line: str) -> None:
            log.append(line)
            job.note(line)

        result = service.create_over_uplink(
            caller, body.name, body.uplink, bridge=body.bridge, verify=body.verify,
            verify_timeout=body.verify_timeout, autostart=body.autostart, env={},
            client=client, host=ctx.host() if body.define else None, report=report)
        with contextlib.suppress(JobCancelled):  # too late to cancel: it is kept
            job.note(f"bridge '{result.bridge}' over '{result.uplink}' kept"
                     + (" (checked)" if result.verified else ""))
        return _job_result(result, log)

    job = ctx.runner.submit("net.bridge", plan.bridge, caller.name, run)
    base = accepted(job, response)
    return BridgeJobAccepted(**base.model_dump(), plan=plan.plan,
                             verify_target=plan.verify_target,
                             verify_source=plan.verify_source, notes=plan.notes)


@router.post("/bridges/{name}/unbridge", response_model=None, responses=_CHANGE_RESPONSES)
def remove_uplink_bridge(caller: AdminCaller, body: UnbridgeBody, request: Request,
                         ctx: Ctx, response: Response, name: str = BridgePath) -> Any:
    """Move the bridge's addresses and routes back onto its port and remove it (a job,
    202); refused while a libvirt network names the bridge. ``dry_run``: the plan."""
    bridge = name
    client = session_address(request)
    plan = service.remove_bridge(caller, bridge, verify=body.verify,
                                 verify_timeout=body.verify_timeout, dry_run=True,
                                 host=ctx.host(), env={}, client=client)
    if body.dry_run:
        return asdict(plan)

    def run(job: JobContext) -> dict[str, Any]:
        log: list[str] = []

        def report(line: str) -> None:
            log.append(line)
            job.note(line)

        result = service.remove_bridge(caller, bridge, verify=body.verify,
                                       verify_timeout=body.verify_timeout, host=ctx.host(),
                                       env={}, client=client, report=report)
        with contextlib.suppress(JobCancelled):
            job.note(f"bridge '{bridge}' removed, '{result.port}' carries its addresses "
                     "again")
        return _job_result(result, log)

    job = ctx.runner.submit("net.unbridge", bridge, caller.name, run)
    base = accepted(job, response)
    return BridgeJobAccepted(**base.model_dump(), plan=plan.plan,
                             verify_target=plan.verify_target,
                             verify_source=plan.verify_source, notes=plan.notes)


@router.get("/bridges/rollbacks", response_model=list[RollbackRecord])
def list_bridge_rollbacks(caller: AdminCaller) -> list[RollbackRecord]:
    """Rollback records left by changes that did not finish (restore with POST
    /host/bridges/{name}/rollback)."""
    return [RollbackRecord(**asdict(r)) for r in service.pending_records(caller)]


@router.post("/bridges/{name}/rollback", response_model=dict[str, Any])
def rollback_uplink_bridge(caller: AdminCaller, name: str = BridgePath) -> dict[str, Any]:
    """Undo an unfinished change from its record, as ``kvmops net rollback``."""
    return asdict(service.rollback(caller, name))
