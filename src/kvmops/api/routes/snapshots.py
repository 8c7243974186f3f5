"""Snapshots (mounted when kvmops.snapshot is present): list, create (job), revert,
delete (job)."""

from __future__ import annotations

from fastapi import APIRouter, Query, Response
from fastapi import Path as PathParam
from pydantic import Field

from kvmops.api.deps import (
    Ctx,
    HostDep,
    HostUri,
    LongRequest,
    OperatorCaller,
    ViewerCaller,
    VmNameDep,
)
from kvmops.api.routes.common import Body, JobAccepted, accepted
from kvmops.api.runner import JobContext
from kvmops.services import snapshots as service
from kvmops.services.session import open_connection
from kvmops.services.snapshots import DeleteResult, RevertResult, SnapshotInfo

router = APIRouter(prefix="/vms/{name}/snapshots", tags=["snapshots"])
_SNAP = r"^[A-Za-z0-9][A-Za-z0-9_.+-]{0,63}$"


class SnapshotBody(Body):
    name: str = Field(pattern=_SNAP)
    memory: bool = False
    disk_only: bool = False
    quiesce: bool = False
    description: str | None = Field(default=None, max_length=1024)


class RevertBody(Body):
    running: bool = False
    paused: bool = False
    force: bool = False


@router.get("", response_model=list[SnapshotInfo])
def list_snapshots(caller: ViewerCaller, name: VmNameDep, host: HostDep
                   ) -> list[SnapshotInfo]:
    return service.list_snapshots(caller, host, name)


@router.get("/{snapshot}", response_model=SnapshotInfo)
def snapshot_info(caller: ViewerCaller, name: VmNameDep, host: HostDep,
                  snapshot: str = PathParam(pattern=_SNAP)) -> SnapshotInfo:
    return service.info(caller, host, name, snapshot)


@router.post("", status_code=202, response_model=JobAccepted)
def create_snapshot(caller: OperatorCaller, name: VmNameDep, body: SnapshotBody, ctx: Ctx,
                    uri: HostUri, response: Response) -> JobAccepted:
    req = service.CreateRequest(vm=name, name=body.name, memory=body.memory,
                                disk_only=body.disk_only, quiesce=body.quiesce,
                                description=body.description)

    def run(job: JobContext) -> SnapshotInfo:
        with open_connection(uri) as host:
            return service.create(caller, host, name, req, note=job.note)

    return accepted(ctx.runner.submit("snapshot.create", name, caller.name, run), response)


@router.post("/{snapshot}/revert", response_model=RevertResult, dependencies=[LongRequest])
def revert(caller: OperatorCaller, name: VmNameDep, host: HostDep,
           snapshot: str = PathParam(pattern=_SNAP), body: RevertBody | None = None
           ) -> RevertResult:
    body = body or RevertBody()
    return service.revert(caller, host, name, snapshot, running=body.running, paused=body.paused,
                          force=body.force)


@router.delete("/{snapshot}", status_code=202, response_model=JobAccepted)
def delete_snapshot(caller: OperatorCaller, name: VmNameDep, ctx: Ctx, uri: HostUri,
                    response: Response,
                    snapshot: str = PathParam(pattern=_SNAP),
                    children: bool = Query(False)) -> JobAccepted:
    def run(job: JobContext) -> DeleteResult:
        with open_connection(uri) as host:
            return service.delete(caller, host, name, snapshot, children=children,
                                  note=job.note)

    return accepted(ctx.runner.submit("snapshot.delete", name, caller.name, run), response)
