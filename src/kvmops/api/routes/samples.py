"""Live samples for charts: the last hour of a VM's or a host's CPU %, memory, disk and
network rates, kept by the server's in-process sampler (:mod:`kvmops.services.sampler`,
one point every ``KVMOPS_SAMPLE_INTERVAL`` seconds, default 10)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi import Path as PathParam
from pydantic import BaseModel, Field

from kvmops.api.deps import HOST_PATTERN, HostName, ViewerCaller, VmNameDep
from kvmops.services import sampler

router = APIRouter(tags=["samples"])


class SamplesOut(BaseModel):
    name: str = Field(description="the VM's or the host's name")
    host: str
    interval_s: float = Field(description="seconds between two points")
    window_s: float = Field(description="how far back the points go at most (seconds)")
    times: list[float] = Field(description="seconds since the epoch, oldest first")
    series: dict[str, list[float | None]] = Field(
        description="one list per quantity, aligned with times (null: not known then). "
                    "VM: " + ", ".join(sampler.VM_KEYS) + ". Host: "
                    + ", ".join(sampler.HOST_KEYS) + ". Rates are per second, CPU % "
                    "is of the whole host (virt-top's), memory in bytes.")


@router.get("/vms/{name}/samples", response_model=SamplesOut)
def vm_samples(caller: ViewerCaller, name: VmNameDep, host: HostName) -> SamplesOut:
    """The VM's last hour: CPU %, memory, disk read/write and network rx/tx rates."""
    return SamplesOut(**sampler.as_dict(sampler.vm_samples(caller, name, host)))


@router.get("/hosts/{name}/samples", response_model=SamplesOut)
def host_samples(caller: ViewerCaller,
                 name: str = PathParam(pattern=HOST_PATTERN,
                                       description="host name ('local': this server's)")
                 ) -> SamplesOut:
    """The host's last hour: its CPU %, memory in use and total, its VMs' summed disk
    and network rates, running VMs."""
    return SamplesOut(**sampler.as_dict(sampler.host_samples(caller, name)))
