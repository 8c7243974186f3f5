"""libvirt networks: list, info, create, start, stop, delete, autostart, DHCP leases (viewer reads,
operator changes)."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Query
from fastapi import Path as PathParam
from pydantic import Field

from kvmops.api.deps import HostDep, OperatorCaller, ViewerCaller
from kvmops.api.routes.common import Body, Message
from kvmops.services import networks as service
from kvmops.services.networks import Lease, NetworkInfo

router = APIRouter(prefix="/networks", tags=["networks"])
_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.+-]{0,63}$"
_IFNAME = r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$"


class NetworkBody(Body):
    """A network to create; the same checks as ``kvmops net create`` (one-line 422s)."""

    name: str = Field(pattern=_NAME)
    mode: Literal["nat", "route", "isolated", "bridge", "ovs"] = "isolated"
    bridge: str | None = Field(default=None, max_length=64, pattern=_IFNAME,
                               description="at most 15 characters; nat/route/isolated: "
                                           "default a free virbrN")
    ipv4: str | None = Field(default=None, max_length=64, examples=["192.168.251.1/24"])
    dhcp: str | None = Field(default=None, max_length=128,
                             examples=["192.168.251.10-192.168.251.50"])
    ipv6: str | None = Field(default=None, max_length=64, examples=["fd00:251::1/64"])
    ipv6_mode: Literal["slaac", "dhcpv6-stateful", "dhcpv6-stateless"] | None = None
    dhcp6: str | None = Field(default=None, max_length=128)
    forward_dev: str | None = Field(default=None, max_length=64, pattern=_IFNAME)
    autostart: bool = False
    start: bool = True
    create_bridge: bool = Field(default=False, description="ovs: create the Open vSwitch "
                                "bridge too (removed with the network)")
    datapath: Literal["system", "netdev"] | None = Field(
        default=None, description="ovs with create_bridge: default system where the kernel "
                                  "has it, else netdev (user space)")


NamePath = PathParam(pattern=_NAME, description="network name")


@router.get("", response_model=list[NetworkInfo])
def list_networks(caller: ViewerCaller, host: HostDep) -> list[NetworkInfo]:
    return service.list_networks(caller, host)


@router.post("", status_code=201, response_model=NetworkInfo)
def create_network(caller: OperatorCaller, host: HostDep, body: NetworkBody) -> NetworkInfo:
    spec = service.NetworkSpec(
        name=body.name, mode=body.mode, bridge=body.bridge, ipv4=body.ipv4, dhcp=body.dhcp,
        ipv6=body.ipv6, ipv6_mode=body.ipv6_mode, dhcp6=body.dhcp6,
        forward_dev=body.forward_dev, autostart=body.autostart)
    return service.create(caller, host, spec, start=body.start,
                          create_bridge=body.create_bridge, datapath=body.datapath)


@router.get("/{name}", response_model=NetworkInfo)
def network_info(caller: ViewerCaller, host: HostDep, name: str = NamePath) -> NetworkInfo:
    return service.info(caller, host, name)


@router.delete("/{name}", response_model=Message)
def delete_network(caller: OperatorCaller, host: HostDep, name: str = NamePath) -> Message:
    service.delete(caller, host, name)
    return Message(message=f"network '{name}' deleted")


@router.post("/{name}/start", response_model=NetworkInfo)
def start_network(caller: OperatorCaller, host: HostDep, name: str = NamePath
                  ) -> NetworkInfo:
    return service.start(caller, host, name)


@router.post("/{name}/stop", response_model=NetworkInfo)
def stop_network(caller: OperatorCaller, host: HostDep, name: str = NamePath
                 ) -> NetworkInfo:
    return service.stop(caller, host, name)


@router.post("/{name}/autostart", response_model=NetworkInfo)
def autostart_network(caller: OperatorCaller, host: HostDep, name: str = NamePath,
                      enabled: bool = Query(True, description="false: not with libvirtd")
                      ) -> NetworkInfo:
    return service.set_autostart(caller, host, name, enabled)


@router.get("/{name}/leases", response_model=list[Lease])
def network_leases(caller: ViewerCaller, host: HostDep, name: str = NamePath
                   ) -> list[Lease]:
    return service.leases(caller, host, name)
