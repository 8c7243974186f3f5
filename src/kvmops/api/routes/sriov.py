"""SR-IOV: PFs and their VF counts, VF pools, reconcile (viewers read; admins change
pools, VF counts and reconcile). A VF is given to a VM by ``POST /vms/{name}/nics`` with
``vf_pool`` (an operator's NIC change). PFs and VFs are read from ``KVMOPS_SYSFS_ROOT``
(a simulated tree) when the server was started with it, else ``/sys``."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query
from fastapi import Path as PathParam
from pydantic import BaseModel, Field

from kvmops.api.deps import AdminCaller, Ctx, HostDep, ViewerCaller
from kvmops.api.routes.common import Body, Message
from kvmops.services import sriov as service
from kvmops.services.sriov import PfInfo, PoolInfo, ReconcileReport

router = APIRouter(prefix="/sriov", tags=["sriov"])
_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.+-]{0,63}$"
_IFNAME = r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,14}$"
PoolPath = PathParam(pattern=_NAME, description="VF pool name")
PfPath = PathParam(pattern=_IFNAME, description="PF (network interface) name")


class PoolBody(Body):
    name: str = Field(pattern=_NAME)
    pfs: list[Annotated[str, Field(pattern=_IFNAME)]] = Field(
        min_length=1, max_length=16,
        description="the PFs whose VFs the pool hands out; each must have VFs now")


class VfCountBody(Body):
    count: int = Field(ge=0, le=4096, description="VFs to make, 0..sriov_totalvfs")


class PoolXml(BaseModel):
    method: str
    xml: str


@router.get("/pfs", response_model=list[PfInfo])
def list_pfs(caller: ViewerCaller, ctx: Ctx) -> list[PfInfo]:
    return service.list_pfs(caller, ctx.store)


@router.put("/pfs/{pf}/vfs", response_model=PfInfo)
def set_vfs(caller: AdminCaller, ctx: Ctx, body: VfCountBody, pf: str = PfPath) -> PfInfo:
    """Make ``count`` VFs on the PF (refused while a VF that would go is allocated)."""
    return service.set_vfs(caller, pf, body.count, ctx.store)


@router.get("/pools", response_model=list[PoolInfo])
def list_pools(caller: ViewerCaller, ctx: Ctx) -> list[PoolInfo]:
    return service.list_pools(caller, ctx.store)


@router.post("/pools", status_code=201, response_model=PoolInfo)
def create_pool(caller: AdminCaller, ctx: Ctx, body: PoolBody) -> PoolInfo:
    return service.create_pool(caller, body.name, body.pfs, ctx.store)


@router.get("/pools/{name}", response_model=PoolInfo)
def pool_info(caller: ViewerCaller, ctx: Ctx, name: str = PoolPath) -> PoolInfo:
    """The pool with its VM <-> VF mapping."""
    return service.pool_info(caller, name, ctx.store)


@router.get("/pools/{name}/xml", response_model=PoolXml)
def pool_xml(caller: ViewerCaller, ctx: Ctx, name: str = PoolPath,
             method: Literal["interface", "hostdev", "network"] = Query("interface")
             ) -> PoolXml:
    return PoolXml(method=method, xml=service.pool_xml(caller, name, method, ctx.store))


@router.delete("/pools/{name}", response_model=Message)
def delete_pool(caller: AdminCaller, ctx: Ctx, name: str = PoolPath) -> Message:
    service.delete_pool(caller, name, ctx.store)
    return Message(message=f"SR-IOV pool '{name}' deleted")


@router.post("/reconcile", response_model=ReconcileReport)
def reconcile(caller: AdminCaller, ctx: Ctx, host: HostDep) -> ReconcileReport:
    """Release allocations whose VM is gone, reset stray VFs, set lost settings again."""
    return service.reconcile(caller, host, ctx.store)
