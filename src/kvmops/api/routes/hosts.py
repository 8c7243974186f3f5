"""Hosts: the libvirt hosts this server manages (viewers list and read; admins add and
remove). The list asks every host at once, each under a deadline: a host that does not
answer in time is listed ``reachable: false`` with the reason, without delaying the
others. ``local`` (the server's own libvirt URI) is always there."""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import APIRouter, Query, Request
from fastapi import Path as PathParam
from pydantic import Field

from kvmops.api.deps import AdminCaller, Ctx, ViewerCaller
from kvmops.api.routes.common import Body, Message
from kvmops.services import hosts as service
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
