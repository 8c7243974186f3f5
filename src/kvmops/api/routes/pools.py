"""Storage pools and their volumes (viewer reads; operator starts, stops, refreshes and
manages volumes, and uploads and downloads their data: a download hands out a disk's
contents; admin creates and deletes pools: a pool names host directories, devices and
remote storage).

Volume data (``PUT``/``GET .../volumes/{volume}/data``) goes through libvirt streams
in a job (``volume.upload``/``volume.download``: byte progress in ``GET /jobs/{id}``
and the ``job`` events; the ``X-Job-Id`` header names it): the request body is passed
to libvirt as it arrives and the volume's bytes to the response as libvirt sends
them, never held whole in memory.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import AsyncIterator, Callable
from typing import Any, Literal, TypeVar

import anyio
from anyio.lowlevel import current_token
from fastapi import APIRouter, HTTPException, Query, Request, Response
from fastapi import Path as PathParam
from fastapi.responses import StreamingResponse
from pydantic import Field
from starlette.requests import ClientDisconnect

from kvmops.api.context import ApiContext
from kvmops.api.deps import AdminCaller, Ctx, HostDep, LongRequest, OperatorCaller, ViewerCaller
from kvmops.api.routes.common import Body, Message
from kvmops.api.runner import JobContext
from kvmops.errors import CancelledError, KvmopsError, StorageError
from kvmops.services import pools as service
from kvmops.services.pools import PoolInfo, VolumeInfo
from kvmops.services.session import open_connection
from kvmops.sizes import parse_size

T = TypeVar("T")

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


# ------------------------------------------------------------------ volume data
DataFormat = Query(..., pattern="^(raw|qcow2)$",
                   description="the data's format, which must be the volume's (raw or "
                               "qcow2; always named, never probed)")
_DISCONNECTED = "the client closed the connection before the transfer ended"
_RESPONSE_PART = 1024 * 1024


class _RequestBody:
    """The request body as a blocking reader for the job's thread. :meth:`pump` runs in
    the event loop and receives the body ahead into a small queue (PREFETCH parts, each
    at most uvicorn's 64 KiB) while the job sends the previous parts to libvirt: the
    socket and libvirt work at once, and at most about a MiB is held."""

    PREFETCH = 16

    def __init__(self, request: Request, token: Any) -> None:
        self._request = request
        self._token = token
        self._send, self._receive = anyio.create_memory_object_stream[bytes](self.PREFETCH)
        self._held: list[bytes] = []  # parts received and not yet read
        self._count = 0  # their bytes
        self._ended = False
        self._disconnected = False

    async def pump(self) -> None:
        async with self._send:
            try:
                async for part in self._request.stream():
                    if part:
                        await self._send.send(part)
            except ClientDisconnect:
                self._disconnected = True

    async def _fill(self, want: int) -> None:
        """In the event loop (the reading thread waits meanwhile): queued parts until
        ``want`` bytes are held or the body ends. One hop per read, not per part."""
        while self._count < want:
            try:
                part = await self._receive.receive()
            except anyio.EndOfStream:
                self._ended = True
                if self._disconnected:
                    raise StorageError(_DISCONNECTED, hint="upload again") from None
                return
            self._held.append(part)
            self._count += len(part)

    def read(self, size: int = -1, /) -> bytes:
        want = size if size >= 0 else 1 << 62
        if self._count < want and not self._ended:
            anyio.from_thread.run(self._fill, want, token=self._token)
        data = b"".join(self._held)  # one part: no copy
        self._held.clear()
        if len(data) > want:
            self._held.append(data[want:])
            data = data[:want]
        self._count = len(self._held[0]) if self._held else 0
        return data


class _Slot:
    """One long-request slot, released once (by the job or the response, whichever
    ends last)."""

    def __init__(self, ctx: ApiContext, user: str) -> None:
        self._stack = contextlib.ExitStack()
        self._stack.enter_context(ctx.long_requests.hold(user))
        self._lock = threading.Lock()

    def release(self) -> None:
        with self._lock:
            self._stack.close()


async def _job(ctx: ApiContext, kind: str, target: str, user: str,
               work: Callable[[JobContext], T], response: Response) -> T:
    """Run ``work`` as a job (its progress in the job row and events) and wait for it:
    the request that carries the data stays open while the job runs."""
    token = current_token()
    done = anyio.Event()
    outcome: dict[str, Any] = {}

    def run(job: JobContext) -> T:
        try:
            outcome["value"] = work(job)
            return outcome["value"]  # type: ignore[no-any-return]
        except BaseException as err:
            outcome["error"] = err
            raise
        finally:
            anyio.from_thread.run_sync(done.set, token=token)

    view = ctx.runner.submit(kind, target, user, run)
    response.headers["X-Job-Id"] = view.id
    while not done.is_set():
        with anyio.move_on_after(1.0):
            await done.wait()
        if not done.is_set() and not any(c.id == view.id for c in ctx.runner.active()):
            raise CancelledError(f"job {view.id} ({kind}) ended before it started",
                                 hint="it was cancelled, or the server is stopping")
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]  # type: ignore[no-any-return]


@router.put("/{name}/volumes/{volume}/data", response_model=VolumeInfo,
            dependencies=[LongRequest],
            openapi_extra={"requestBody": {"required": True, "content": {
                "application/octet-stream": {"schema": {"type": "string",
                                                        "format": "binary"}}}}})
async def upload_volume_data(caller: OperatorCaller, ctx: Ctx, host: HostDep,
                             request: Request, response: Response,
                             format: str = DataFormat, name: str = NamePath,
                             volume: str = VolumePath) -> VolumeInfo:
    """Write the request body (``Content-Length`` bytes of ``format``) into the volume
    from its start: the checks of ``kvmops volume upload`` (the volume's format, no VM
    using it, a qcow2 naming no backing or data file and not larger than the volume);
    a body longer than the volume is refused (413) before a byte is read."""
    request.state.target = f"{name}/{volume}"
    declared = request.headers.get("content-length")
    if declared is None or not declared.isdigit():
        raise HTTPException(411, "send the data with a Content-Length header (the volume "
                                 "data is not accepted chunked)")
    length = int(declared)
    vol = await anyio.to_thread.run_sync(service.check_upload, caller, host, name, volume,
                                         format, 0)
    limit = service.upload_limit(vol, format)
    if length > limit:
        raise HTTPException(413, f"the upload is {length} bytes; volume '{volume}' of pool "
                                 f"'{name}' holds {vol.capacity}"
                                 + (f" (a qcow2 file up to {limit})" if format == "qcow2"
                                    else "") + ": resize the volume first or upload less")
    body = _RequestBody(request, current_token())

    def work(job: JobContext) -> VolumeInfo:
        with open_connection(host.uri) as own:
            return service.upload_data(caller, own, name, volume, body, length, format,
                                       progress=job.bytes)

    failed: Exception | None = None
    async with anyio.create_task_group() as group:
        group.start_soon(body.pump)
        try:
            result = await _job(ctx, "volume.upload", f"{name}/{volume}", caller.name, work,
                                response)
        except Exception as err:  # raised below, once the pump is stopped
            failed = err
        group.cancel_scope.cancel()  # a refused upload: the rest of the body is not read
    if failed is not None:
        raise failed
    return result


@router.get("/{name}/volumes/{volume}/data", response_class=StreamingResponse,
            responses={200: {"content": {"application/octet-stream": {}},
                             "description": "the volume's bytes (a qcow2 volume as its "
                                            "qcow2 file)"}})
async def download_volume_data(caller: OperatorCaller, ctx: Ctx, host: HostDep,
                               request: Request, name: str = NamePath,
                               volume: str = VolumePath) -> StreamingResponse:
    """The volume's bytes as an attachment (``Content-Length``: a file volume's file
    size, a block volume's capacity), read through a libvirt stream as they are sent."""
    request.state.target = f"{name}/{volume}"
    _vol, length = await anyio.to_thread.run_sync(service.download_size, caller, host,
                                                  name, volume)
    slot = _Slot(ctx, caller.name)
    token = current_token()
    send, receive = anyio.create_memory_object_stream[bytes](2)

    class Sink:
        """Bytes to the response in parts of about 1 MiB (one hop to the event loop
        each, not one per libvirt packet)."""

        def __init__(self) -> None:
            self.parts: list[bytes] = []
            self.held = 0

        def write(self, data: bytes, /) -> int:
            self.parts.append(data)
            self.held += len(data)
            if self.held >= _RESPONSE_PART:
                self.flush()
            return len(data)

        def flush(self) -> None:
            if not self.parts:
                return
            data = b"".join(self.parts)
            self.parts, self.held = [], 0
            try:
                anyio.from_thread.run(send.send, data, token=token)
            except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                raise StorageError(_DISCONNECTED, hint="download again") from None

    failed: list[BaseException] = []

    def work(job: JobContext) -> int:
        try:
            sink = Sink()
            with open_connection(host.uri) as own:
                got = service.download_data(caller, own, name, volume, sink, length,
                                            progress=job.bytes)
            sink.flush()
            return got
        except BaseException as err:
            failed.append(err)
            raise
        finally:
            with contextlib.suppress(KvmopsError, RuntimeError):
                anyio.from_thread.run_sync(send.close, token=token)
            slot.release()

    try:
        view = ctx.runner.submit("volume.download", f"{name}/{volume}", caller.name, work)
    except BaseException:
        slot.release()
        raise

    # The first bytes (or the job's end) before the answer starts: a refusal that comes
    # before any data (libvirt's, a lost connection) is a one-line error, not a 200 cut
    # short.
    first: bytes | None = None
    try:
        while True:
            with anyio.move_on_after(1.0) as waited:
                try:
                    first = await receive.receive()
                except anyio.EndOfStream:
                    first = None
            if not waited.cancelled_caught:
                break
            if not any(c.id == view.id for c in ctx.runner.active()):
                raise CancelledError(f"job {view.id} (volume.download) ended before it "
                                     "started", hint="it was cancelled, or the server is "
                                                     "stopping")
        if first is None and failed:
            raise failed[0]
    except BaseException:
        slot.release()
        receive.close()
        raise

    async def chunks() -> AsyncIterator[bytes]:
        try:
            async with receive:
                if first:
                    yield first
                async for chunk in receive:
                    yield chunk
        finally:
            slot.release()

    return StreamingResponse(chunks(), media_type="application/octet-stream", headers={
        "Content-Length": str(length), "X-Job-Id": view.id,
        "Content-Disposition": f'attachment; filename="{volume}"'})
