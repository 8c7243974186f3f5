"""Storage pools and their volumes (viewer reads; operator starts, stops, refreshes and
manages volumes; admin creates and deletes pools: a pool names host directories,
devices and remote storage)."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter
from fastapi import Path as PathParam
from pydantic import Field

from kvmops.api.deps import AdminCaller, HostDep, OperatorCaller, ViewerCaller
from kvmops.api.routes.common import Body, Message
from kvmops.services import pools as service
from kvmops.services.pools import PoolInfo, VolumeInfo
from kvmops.sizes import parse_size

router = APIRouter(prefix="/pools", tags=["storage pools"])
_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.+-]{0,63}$"
_VOLUME = r"^[A-Za-z0-9][A-Za-z0-9_.+:-]{0,127}$"
_PATH = r"^/[^\x00\n]*$"


class PoolBody(Body):
    """A pool to create; the same checks as ``kvmops pool create`` (one-line 422s)."""

    name: str = Field(pattern=_NAME)
    type: Literal["dir", "fs", "iscsi-direct", "netfs", "logical", "rbd"]
    target: str | None = Field(default=None, max_length=4096, pattern=_PATH,
                               description="dir/fs/netfs: inside an allowed image directory")
    device: str | None = Field(default=None, max_length=4096, pattern=_PATH,
                               description="fs: the block device")
    devices: list[str] = Field(default_factory=list, max_length=16,
                               description="logical: physical volumes")
    fs_format: Literal["ext4", "ext3", "ext2", "xfs"] | None = None
    host: str | None = Field(default=None, max_length=253)
    port: int | None = Field(default=None, ge=1, le=65535)
    target_iqn: str | None = Field(default=None, max_length=223)
    initiator_iqn: str | None = Field(default=None, max_length=223)
    source_dir: str | None = Field(default=None, max_length=4096)
    netfs_format: Literal["nfs", "cifs", "glusterfs"] | None = None
    source_name: str | None = Field(default=None, max_length=64)
    auth_user: str | None = Field(default=None, max_length=64)
    secret_uuid: str | None = Field(default=None, max_length=36)
    build: bool = False
    autostart: bool = False
    start: bool = True


class VolumeBody(Body):
    name: str = Field(pattern=_VOLUME)
    size: str = Field(max_length=32, examples=["64M"])
    format: Literal["raw", "qcow2"]


class CloneBody(Body):
    name: str = Field(pattern=_VOLUME)
    format: Literal["raw", "qcow2"] | None = None


class ResizeBody(Body):
    size: str = Field(max_length=32, examples=["128M"])
    shrink: bool = False


NamePath = PathParam(pattern=_NAME, description="pool name")
VolumePath = PathParam(pattern=_VOLUME, description="volume name")


@router.get("", response_model=list[PoolInfo])
def list_pools(caller: ViewerCaller, host: HostDep) -> list[PoolInfo]:
    return service.list_pools(caller, host)


@router.post("", status_code=201, response_model=PoolInfo)
def create_pool(caller: AdminCaller, host: HostDep, body: PoolBody) -> PoolInfo:
    spec = service.PoolSpec(
        name=body.name, type=body.type, target=body.target, device=body.device,
        devices=tuple(body.devices), fs_format=body.fs_format, host=body.host,
        port=body.port, target_iqn=body.target_iqn, initiator_iqn=body.initiator_iqn,
        source_dir=body.source_dir, netfs_format=body.netfs_format,
        source_name=body.source_name, auth_user=body.auth_user,
        secret_uuid=body.secret_uuid, autostart=body.autostart)
    return service.create(caller, host, spec, build=body.build, start=body.start)


@router.get("/{name}", response_model=PoolInfo)
def pool_info(caller: ViewerCaller, host: HostDep, name: str = NamePath) -> PoolInfo:
    return service.info(caller, host, name)


@router.delete("/{name}", response_model=Message)
def delete_pool(caller: AdminCaller, host: HostDep, name: str = NamePath) -> Message:
    service.delete(caller, host, name)
    return Message(message=f"storage pool '{name}' deleted (its data was left in place)")


@router.post("/{name}/start", response_model=PoolInfo)
def start_pool(caller: OperatorCaller, host: HostDep, name: str = NamePath) -> PoolInfo:
    return service.start(caller, host, name)


@router.post("/{name}/stop", response_model=PoolInfo)
def stop_pool(caller: OperatorCaller, host: HostDep, name: str = NamePath) -> PoolInfo:
    return service.stop(caller, host, name)


@router.post("/{name}/refresh", response_model=PoolInfo)
def refresh_pool(caller: OperatorCaller, host: HostDep, name: str = NamePath) -> PoolInfo:
    return service.refresh(caller, host, name)


@router.get("/{name}/volumes", response_model=list[VolumeInfo])
def list_volumes(caller: ViewerCaller, host: HostDep, name: str = NamePath
                 ) -> list[VolumeInfo]:
    return service.list_volumes(caller, host, name)


@router.post("/{name}/volumes", status_code=201, response_model=VolumeInfo)
def create_volume(caller: OperatorCaller, host: HostDep, body: VolumeBody,
                  name: str = NamePath) -> VolumeInfo:
    spec = service.VolumeSpec(name=body.name, capacity=parse_size(body.size,
                                                                   what="volume size"),
                              format=body.format)
    return service.create_volume(caller, host, name, spec)


@router.get("/{name}/volumes/{volume}", response_model=VolumeInfo)
def volume_info(caller: ViewerCaller, host: HostDep, name: str = NamePath,
                volume: str = VolumePath) -> VolumeInfo:
    return service.volume_info(caller, host, name, volume)


@router.post("/{name}/volumes/{volume}/clone", status_code=201, response_model=VolumeInfo)
def clone_volume(caller: OperatorCaller, host: HostDep, body: CloneBody,
                 name: str = NamePath, volume: str = VolumePath) -> VolumeInfo:
    return service.clone_volume(caller, host, name, volume, body.name, body.format)


@router.post("/{name}/volumes/{volume}/resize", response_model=VolumeInfo)
def resize_volume(caller: OperatorCaller, host: HostDep, body: ResizeBody,
                  name: str = NamePath, volume: str = VolumePath) -> VolumeInfo:
    return service.resize_volume(caller, host, name, volume,
                                 parse_size(body.size, what="volume size"),
                                 shrink=body.shrink)


@router.delete("/{name}/volumes/{volume}", response_model=Message)
def delete_volume(caller: OperatorCaller, host: HostDep, name: str = NamePath,
                  volume: str = VolumePath) -> Message:
    service.delete_volume(caller, host, name, volume)
    return Message(message=f"volume '{volume}' deleted from storage pool '{name}'")
