"""VM configuration: vCPUs, memory, and a preview of an undefine with storage."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import Field

from kvmops.api.deps import Ctx, HostDep, OperatorCaller, ViewerCaller, VmNameDep
from kvmops.api.routes.common import Body
from kvmops.api.validators import MemorySize
from kvmops.services import vm_config
from kvmops.services.vm_config import ConfigChange, RemovalPreview

router = APIRouter(prefix="/vms/{name}", tags=["vms"])


class VcpusBody(Body):
    vcpus: int = Field(ge=1, le=1024)


class MemoryBody(Body):
    memory: MemorySize = Field(description="e.g. 512M or 2G; a bare number is MiB")
    force: bool = Field(default=False, description="more than the host has (overcommit)")


@router.put("/vcpus", response_model=ConfigChange)
def set_vcpus(caller: OperatorCaller, name: VmNameDep, body: VcpusBody, host: HostDep,
              ctx: Ctx) -> ConfigChange:
    """The VM's vCPU count in its configuration (a running VM gets it at its next start)."""
    result = vm_config.set_vcpus(caller, host, name, body.vcpus)
    ctx.vm_list.invalidate()
    return result


@router.put("/memory", response_model=ConfigChange)
def set_memory(caller: OperatorCaller, name: VmNameDep, body: MemoryBody, host: HostDep,
               ctx: Ctx) -> ConfigChange:
    """The VM's memory in its configuration (a running VM gets it at its next start)."""
    result = vm_config.set_memory(caller, host, name, body.memory, force=body.force)
    ctx.vm_list.invalidate()
    return result


@router.get("/storage", response_model=RemovalPreview)
def storage(caller: ViewerCaller, name: VmNameDep, host: HostDep) -> RemovalPreview:
    """The files ``DELETE /vms/{name}?remove_storage=true`` would delete, and those it
    would keep with the reason."""
    return vm_config.removal_preview(caller, host, name)
