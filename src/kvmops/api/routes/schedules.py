"""Backup schedules: viewers list them and their runs; operators add, remove and run
them now. A repository goes through the path policy (a directory inside a backup
directory) or, for a remote URL, the ``remote_repositories`` allow-list; a key file must
lie in the state directory's ``keys`` directory (kvmops.services.schedules)."""

from __future__ import annotations

from fastapi import APIRouter, Query, Request, Response
from pydantic import Field

from kvmops.api.deps import Ctx, HostUri, OperatorCaller, ViewerCaller
from kvmops.api.routes.common import Body, Message
from kvmops.services import schedules as service
from kvmops.services.schedules import RunView, ScheduleSpec, ScheduleView

router = APIRouter(prefix="/backup-schedules", tags=["backup schedules"])
_VM = r"^[A-Za-z0-9][A-Za-z0-9_.+-]{0,254}$"
_KEEP = Field(None, ge=1, le=100000)


class ScheduleBody(Body):
    vm: str | None = Field(None, pattern=_VM)
    tag: str | None = Field(None, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
    repo: str = Field(min_length=1, max_length=1024,
                      description="a directory inside a backup directory, or an allowed "
                                  "remote URL (sftp://, s3://)")
    cron: str = Field(min_length=1, max_length=128, description="e.g. '0 2 * * *', @daily")
    timezone: str | None = Field(None, max_length=64)
    keep_last: int | None = _KEEP
    keep_hourly: int | None = _KEEP
    keep_daily: int | None = _KEEP
    keep_weekly: int | None = _KEEP
    keep_monthly: int | None = _KEEP
    keep_yearly: int | None = _KEEP
    full_every: int | None = Field(None, ge=1, le=100000)
    compress: str | None = Field(None, max_length=16, description="zstd or zstd:LEVEL")
    key_file: str | None = Field(None, max_length=1024,
                                 description="path of the repository's key file (in the "
                                             "state directory's keys/); never the key")
    host: str = Field("local", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$",
                      description="the host the VM runs on ('local': this server's)")
    enabled: bool = True


@router.get("", response_model=list[ScheduleView])
def list_schedules(caller: ViewerCaller, ctx: Ctx, uri: HostUri,
                   vm: str | None = Query(None, pattern=_VM, description="only this VM's"),
                   covering: str | None = Query(
                       None, pattern=_VM, description="the schedules that back this VM up: "
                                                      "its own and its tags'"),
                   ) -> list[ScheduleView]:
    """The schedules with their next due time (UTC) and last run."""
    if covering is not None:
        return service.schedules_covering(ctx.store, covering, uri)
    return service.list_schedules(ctx.store, vm)


@router.post("", status_code=201, response_model=ScheduleView)
def add_schedule(caller: OperatorCaller, ctx: Ctx, body: ScheduleBody, request: Request
                 ) -> ScheduleView:
    """Add a schedule (a VM or a tag; at least one keep_* rule)."""
    request.state.target = body.vm or f"tag:{body.tag}"
    return service.add(ctx.store, caller, ScheduleSpec(**body.model_dump()))


@router.get("/runs", response_model=list[RunView])
def all_runs(caller: ViewerCaller, ctx: Ctx,
             vm: str | None = Query(None, pattern=_VM),
             limit: int = Query(200, ge=1, le=5000)) -> list[RunView]:
    """Runs of every schedule (or one VM's), newest slot first."""
    return service.runs(ctx.store, vm=vm, limit=limit)


@router.get("/{schedule_id}", response_model=ScheduleView)
def get_schedule(caller: ViewerCaller, ctx: Ctx, schedule_id: int) -> ScheduleView:
    return service.get(ctx.store, schedule_id)


@router.delete("/{schedule_id}", response_model=Message)
def remove_schedule(caller: OperatorCaller, ctx: Ctx, schedule_id: int, request: Request
                    ) -> Message:
    """Remove a schedule and its run history (its backups stay)."""
    request.state.target = str(schedule_id)
    gone = service.remove(ctx.store, caller, schedule_id)
    return Message(message=f"schedule {gone.id} removed; its backups stay in {gone.repo}")


@router.post("/{schedule_id}/run-now", status_code=202, response_model=list[RunView])
def run_now(caller: OperatorCaller, ctx: Ctx, schedule_id: int, request: Request,
            response: Response) -> list[RunView]:
    """Start the schedule now for each VM it covers (a run over a concurrency limit
    stays queued for the scheduler); follow it in ``GET .../runs``."""
    request.state.target = str(schedule_id)
    runs = service.run_now_background(ctx.store, caller, schedule_id)
    response.headers["Location"] = f"/api/v1/backup-schedules/{schedule_id}/runs"
    return runs


@router.get("/{schedule_id}/runs", response_model=list[RunView])
def schedule_runs(caller: ViewerCaller, ctx: Ctx, schedule_id: int,
                  limit: int = Query(200, ge=1, le=5000)) -> list[RunView]:
    """One schedule's runs, newest slot first."""
    return service.runs(ctx.store, schedule_id, limit=limit)
