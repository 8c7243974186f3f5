"""Instant recovery (:mod:`kvmops.services.instant`): start one as a job that follows the
background copy, list them with their progress, resume, cancel; and the server's
start-up re-attaching to the recoveries an earlier kvmops left running."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import APIRouter, Response
from pydantic import Field

from kvmops.api.context import ApiContext
from kvmops.api.deps import Ctx, HostUri, OperatorCaller, ViewerCaller, VmNameDep
from kvmops.api.routes.backups import Repo, RepoKey
from kvmops.api.routes.common import Body, JobAccepted, Message, accepted
from kvmops.api.runner import JobCancelled, JobContext
from kvmops.api.validators import AbsolutePath, Rate, VmName
from kvmops.errors import KvmopsError
from kvmops.services import instant
from kvmops.services.backups import open_existing
from kvmops.services.caller import Caller
from kvmops.services.instant import InstantStatus

router = APIRouter(tags=["backups"])
log = logging.getLogger(__name__)


class InstantBody(RepoKey):
    repo: Repo
    at: str | None = Field(default=None, max_length=64,
                           description="backup id; default the newest")
    new_vm: VmName
    images_dir: AbsolutePath | None = None
    bandwidth: Rate | None = Field(default=None, description="copy rate limit per second, "
                                   "e.g. 50M; a bare number is MiB/s; none: unlimited")


class ResumeBody(Body):
    bandwidth: Rate | None = Field(default=None, description="new copy rate limit; 0: none")


class InstantView(InstantStatus):
    percent_done: float = Field(description="bytes pulled, percent of every disk")


def _view(current: InstantStatus) -> InstantView:
    return InstantView(**current.model_dump(), percent_done=current.percent)


def _follow(job: JobContext, uri: str | None, vm: str, start: Any) -> dict[str, Any]:
    """Run ``start(progress)``; a cancel of the job stops the pulls (the VM keeps
    running on its overlays), as ``kvmops backup instant cancel`` would."""
    def progress(current: InstantStatus) -> None:
        job.bytes(current.done, max(current.total, 1))

    try:
        result: InstantStatus = start(progress)
    except JobCancelled:
        try:
            instant.stop_copy(uri, vm)
        except KvmopsError as err:
            log.warning("instant recovery of VM '%s' not cancelled: %s", vm, err)
        raise
    return _view(result).model_dump(mode="json")


@router.post("/vms/{name}/backups/instant", status_code=202, response_model=JobAccepted)
def start(caller: OperatorCaller, name: VmNameDep, body: InstantBody, ctx: Ctx,
          uri: HostUri, response: Response) -> JobAccepted:
    """Start ``new_vm`` at once on overlays of a backup point of VM ``name``; the job
    follows the background copy to its end (its progress in bytes)."""
    open_existing(caller, body.repo, **body.secret())  # refused here, before the job

    def run(job: JobContext) -> dict[str, Any]:
        return _follow(job, uri, body.new_vm, lambda progress: instant.start(
            caller, uri, body.repo, name, body.at, body.new_vm, images_dir=body.images_dir,
            bandwidth=body.bandwidth, progress=progress, note=job.note, **body.secret()))

    return accepted(ctx.runner.submit("backup.instant", body.new_vm, caller.name, run),
                    response)


@router.get("/backups/instant", response_model=list[InstantView])
def list_recoveries(caller: ViewerCaller, uri: HostUri) -> list[InstantView]:
    """Instant recoveries and the progress of their copy (libvirt's block job info)."""
    return [_view(s) for s in instant.list_recoveries(uri)]


@router.post("/backups/instant/{name}/resume", status_code=202, response_model=JobAccepted)
def resume(caller: OperatorCaller, name: VmNameDep, body: ResumeBody, ctx: Ctx,
           uri: HostUri, response: Response) -> JobAccepted:
    instant.require_record(name)  # 404 before a job is made

    def run(job: JobContext) -> dict[str, Any]:
        return _follow(job, uri, name, lambda progress: instant.resume(
            caller, uri, name, bandwidth=body.bandwidth, progress=progress, note=job.note))

    return accepted(ctx.runner.submit("backup.instant", name, caller.name, run), response)


@router.post("/backups/instant/{name}/cancel", response_model=Message)
def cancel(caller: OperatorCaller, name: VmNameDep, uri: HostUri) -> Message:
    record = instant.cancel(caller, uri, name)
    return Message(message=f"the copy of VM '{name}' is stopped",
                   details={"state": record.state.value, "note": record.message})


def resume_at_startup(ctx: ApiContext) -> list[str]:
    """Server start-up: a job per recovery an earlier kvmops left pulling (QEMU's pull
    goes on, or is started again when the VM was restarted); each follows to the end."""
    system = Caller(name="kvmops-serve", role="admin", via="api")
    uri = ctx.settings.uri
    started: list[str] = []
    try:
        records = instant.left_pulling()
    except OSError as err:  # the server starts anyway; 'backup instant resume' remains
        log.warning("instant recoveries not resumed: %s", err)
        return started
    for record in records:
        vm = record.vm

        def run(job: JobContext, vm: str = vm) -> dict[str, Any]:
            return _follow(job, uri, vm, lambda progress: instant.resume(
                system, uri, vm, progress=progress, note=job.note))

        ctx.runner.submit("backup.instant", vm, system.name, run)
        started.append(vm)
    return started
