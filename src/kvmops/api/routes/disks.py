"""Disk hot-plug (mounted when kvmops.vm.disks is present)."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Query
from fastapi import Path as PathParam
from pydantic import Field, model_validator

from kvmops.api.deps import HostDep, LongRequest, OperatorCaller, ViewerCaller, VmNameDep
from kvmops.api.routes.common import Body
from kvmops.api.validators import AbsolutePath, ImageSize
from kvmops.services import disks as disk_service
from kvmops.services.disks import DetachResult, DiskInfo

router = APIRouter(prefix="/vms/{name}/disks", tags=["disks"])
# Attach and detach wait for libvirt and the guest: they hold a long-request slot.
_LONG = [LongRequest]
_TARGET = r"^(vd|sd|hd)[a-z]{1,2}$"


class AttachBody(Body):
    image: AbsolutePath | None = None
    size: ImageSize | None = None
    bus: Literal["virtio", "sata", "scsi", "ide"] = "virtio"
    format: Literal["qcow2", "raw"] | None = None
    images_dir: AbsolutePath | None = None
    target: str | None = Field(default=None, pattern=_TARGET)
    live: bool = True
    persistent: bool = True
    readonly: bool = False  # the guest cannot write it; read-only users may share it

    @model_validator(mode="after")
    def one_source(self) -> AttachBody:
        if (self.image is None) == (self.size is None):
            raise ValueError("give exactly one of image and size")
        return self


@router.get("", response_model=list[DiskInfo])
def list_disks(caller: ViewerCaller, name: VmNameDep, host: HostDep,
               inactive: bool = Query(False)) -> list[DiskInfo]:
    return disk_service.list_disks(caller, host, name, inactive=inactive)


@router.post("", status_code=201, response_model=DiskInfo, dependencies=_LONG)
def attach(caller: OperatorCaller, name: VmNameDep, body: AttachBody, host: HostDep
           ) -> DiskInfo:
    return disk_service.attach(caller, host, name, image=body.image, size=body.size,
                               bus=body.bus, fmt=body.format, images_dir=body.images_dir,
                               target=body.target, live=body.live, persistent=body.persistent,
                               readonly=body.readonly)


@router.delete("/{target}", response_model=DetachResult, dependencies=_LONG)
def detach(caller: OperatorCaller, name: VmNameDep, host: HostDep,
           target: str = PathParam(pattern=_TARGET),
           remove_storage: bool = Query(False), live: bool = Query(True),
           persistent: bool = Query(True)) -> DetachResult:
    return disk_service.detach(caller, host, name, target, remove_storage=remove_storage,
                               live=live, persistent=persistent)
