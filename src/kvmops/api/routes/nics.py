"""vNICs: list, add (hot-plug), remove and link up/down, over kvmops.services.nics.

A NIC is named by its MAC (the one name the running VM, its definition and the guest
share). ``live``/``persistent`` choose the running VM and/or the definition, as for the
disks; a shut-off VM's definition is changed either way.
"""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query
from fastapi import Path as PathParam
from pydantic import Field, model_validator

from kvmops.api.deps import HostDep, LongRequest, OperatorCaller, ViewerCaller, VmNameDep
from kvmops.api.routes.common import Body
from kvmops.api.validators import MacAddress
from kvmops.services import nics as nic_service
from kvmops.services.nics import BANDWIDTH_HINT, KEEP, NicEntry, NicRemoval, Rate, Vlan

router = APIRouter(prefix="/vms/{name}/nics", tags=["nics"])
# Hot-plug and unplug wait for libvirt and the guest: they hold a long-request slot.
_LONG = [LongRequest]
_SOURCE = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$"
# The MAC in a path: checked before the VM is looked up; a bad one is a 422 naming it.
MacPath = Annotated[MacAddress, PathParam(description="the NIC's MAC address")]


_RATE = r"^[0-9]+[A-Za-z]*(,[0-9]*[A-Za-z]*){0,2}$"


class QosFields(Body):
    """Bandwidth and VLAN, in the CLI's words (``--inbound``, ``--vlan``, ``--trunk``)."""

    inbound: str | None = Field(default=None, pattern=_RATE, max_length=64,
                                description="traffic to the guest: " + BANDWIDTH_HINT)
    outbound: str | None = Field(default=None, pattern=_RATE, max_length=64,
                                 description="traffic from the guest, same form")
    vlan: int | None = Field(default=None, ge=1, le=4094, description="access VLAN tag "
                             "(Open vSwitch network/bridge or SR-IOV VF only)")
    trunk: list[int] | None = Field(default=None, min_length=1, max_length=4094,
                                    description="trunk VLAN tags")
    native: int | None = Field(default=None, ge=1, le=4094,
                               description="the trunk's untagged tag")

    def rates(self) -> tuple[Rate | None, Rate | None]:
        return (Rate.parse(self.inbound, "inbound") if self.inbound else None,
                Rate.parse(self.outbound, "outbound") if self.outbound else None)

    def vlan_tags(self) -> Vlan | None:
        trunk = ",".join(str(t) for t in self.trunk) if self.trunk else None
        return Vlan.parse(str(self.vlan) if self.vlan is not None else None, trunk,
                          self.native)


class AddNicBody(QosFields):
    network: str | None = Field(default=None, pattern=_SOURCE, description="libvirt network")
    bridge: str | None = Field(default=None, pattern=_SOURCE, description="host bridge")
    model: Literal["virtio", "e1000", "rtl8139"] = "virtio"
    mac: MacAddress | None = Field(default=None, description="default: a free 52:54:00:…")
    vf_pool: str | None = Field(default=None, pattern=_SOURCE,
                                description="SR-IOV: one free VF of this pool (vlan: its "
                                            "port VLAN)")
    rate: int | None = Field(default=None, ge=1, le=400000,
                             description="with vf_pool: the VF's max_tx_rate in Mbit/s, "
                                         "checked against the PF driver's range")
    spoofchk: bool = Field(default=True, description="with vf_pool: MAC spoof check")
    trust: bool = Field(default=False, description="with vf_pool: a trusted VF")
    queues: int | None = Field(default=None, ge=1, le=256,
                               description="virtio multiqueue: queue pairs")
    boot_order: int | None = Field(default=None, ge=1, le=99,
                                   description="network boot position (per-device boot)")
    live: bool = True
    persistent: bool = True

    @model_validator(mode="after")
    def one_source(self) -> AddNicBody:
        if sum(v is not None for v in (self.network, self.bridge, self.vf_pool)) != 1:
            raise ValueError("give exactly one of network and bridge (or vf_pool)")
        if self.vf_pool is not None and any(
                v is not None for v in (self.inbound, self.outbound, self.trunk, self.native)):
            raise ValueError("a vf_pool NIC takes vlan and rate, not inbound, outbound, "
                             "trunk or native")
        if self.vf_pool is None and self.rate is not None:
            raise ValueError("rate is the max_tx_rate of an SR-IOV VF: it needs vf_pool")
        return self


class UpdateNicBody(QosFields):
    """Only the fields given change; ``null`` removes a limit or the VLAN."""

    live: bool = True
    persistent: bool = True


class LinkBody(Body):
    state: Literal["up", "down"]
    live: bool = True
    persistent: bool = True


@router.get("", response_model=list[NicEntry])
def list_nics(caller: ViewerCaller, name: VmNameDep, host: HostDep) -> list[NicEntry]:
    return nic_service.list_nics(caller, host, name)


@router.post("", status_code=201, response_model=NicEntry, dependencies=_LONG)
def add_nic(caller: OperatorCaller, name: VmNameDep, body: AddNicBody, host: HostDep
            ) -> NicEntry:
    if body.vf_pool is not None:
        from kvmops.services import sriov

        return sriov.allocate(caller, host, name, body.vf_pool, mac=body.mac, vlan=body.vlan,
                              rate=body.rate, spoofchk=body.spoofchk, trust=body.trust,
                              live=body.live, persistent=body.persistent)
    inbound, outbound = body.rates()
    return nic_service.add(caller, host, name, network=body.network, bridge=body.bridge,
                           model=body.model, mac=body.mac, live=body.live,
                           persistent=body.persistent, inbound=inbound, outbound=outbound,
                           vlan=body.vlan_tags(), queues=body.queues,
                           boot_order=body.boot_order)


@router.patch("/{mac}", response_model=NicEntry, dependencies=_LONG)
def update_nic(caller: OperatorCaller, name: VmNameDep, body: UpdateNicBody, host: HostDep,
               mac: MacPath) -> NicEntry:
    """Change a NIC's bandwidth limits and/or VLAN, live and in the definition."""
    given = body.model_fields_set
    inbound, outbound = body.rates()
    vlan_given = bool(given & {"vlan", "trunk", "native"})
    return nic_service.update(
        caller, host, name, mac,
        inbound=inbound if "inbound" in given else KEEP,
        outbound=outbound if "outbound" in given else KEEP,
        vlan=body.vlan_tags() if vlan_given else KEEP,
        live=body.live, persistent=body.persistent)


@router.delete("/{mac}", response_model=NicRemoval, dependencies=_LONG)
def remove_nic(caller: OperatorCaller, name: VmNameDep, host: HostDep,
               mac: MacPath, live: bool = Query(True),
               persistent: bool = Query(True)) -> NicRemoval:
    return nic_service.remove(caller, host, name, mac, live=live, persistent=persistent)


@router.post("/{mac}/link", response_model=NicEntry)
def set_nic_link(caller: OperatorCaller, name: VmNameDep, body: LinkBody, host: HostDep,
                 mac: MacPath) -> NicEntry:
    return nic_service.set_link(caller, host, name, mac, body.state, live=body.live,
                                persistent=body.persistent)
