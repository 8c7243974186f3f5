"""Hung-guest diagnostics: ``POST /vms/{name}/nmi`` and ``/reset`` (operator),
``POST /vms/{name}/dump`` (a job with byte progress, the file in an allowed image
directory) and ``GET /vms/{name}/screenshot`` (PNG, viewer)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from fastapi import APIRouter, Query, Response
from pydantic import Field

from kvmops.api.deps import Ctx, HostDep, HostUri, OperatorCaller, ViewerCaller, VmNameDep
from kvmops.api.routes.common import Body, JobAccepted, Message, accepted
from kvmops.api.runner import JobContext
from kvmops.api.validators import AbsolutePath
from kvmops.services import diagnostics
from kvmops.services.diagnostics import DumpResult
from kvmops.services.session import open_connection

router = APIRouter(prefix="/vms", tags=["diagnostics"])


class DumpBody(Body):
    file: AbsolutePath | None = Field(
        default=None, description="the dump file, inside an allowed image directory "
                                  "(default: NAME-TIMESTAMP.core in the default images "
                                  "directory)")
    memory_only: bool = Field(default=False, description="guest memory only (what crash(8) "
                                                         "and gdb read)")
    format: Literal["elf", "kdump-zlib", "kdump-lzo", "kdump-snappy", "win-dmp"] = "elf"
    live: bool = Field(default=False, description="do not pause the guest while dumping")
    force: bool = Field(default=False, description="replace an existing file")


@router.post("/{name}/nmi", response_model=Message)
def nmi(caller: OperatorCaller, name: VmNameDep, host: HostDep) -> Message:
    """Inject a non-maskable interrupt (the guest's kernel logs it, or panics)."""
    diagnostics.nmi(caller, host, name)
    return Message(message=f"NMI injected into VM '{name}'")


@router.post("/{name}/reset", response_model=Message)
def reset(caller: OperatorCaller, name: VmNameDep, host: HostDep, ctx: Ctx) -> Message:
    """Hard reset (the reset button): the guest reboots without shutting down."""
    diagnostics.reset(caller, host, name)
    ctx.vm_list.invalidate()
    return Message(message=f"VM '{name}' reset")


@router.get("/{name}/screenshot", response_class=Response,
            responses={200: {"content": {"image/png": {}}, "description": "the screen"}})
def screenshot(caller: ViewerCaller, name: VmNameDep, host: HostDep,
               screen: int = Query(0, ge=0, le=15, description="head of the video device")
               ) -> Response:
    """The VM's screen now, as PNG (never cached)."""
    png, width, height = diagnostics.screenshot(caller, host, name, screen)
    return Response(content=png, media_type="image/png",
                    headers={"Cache-Control": "no-store", "X-Screen-Size": f"{width}x{height}"})


@router.post("/{name}/dump", status_code=202, response_model=JobAccepted)
def dump(caller: OperatorCaller, name: VmNameDep, ctx: Ctx, host: HostDep, uri: HostUri,
         response: Response, body: DumpBody | None = None) -> JobAccepted:
    """Dump the VM's memory to a file on its host: a job (``vm.dump``) with byte
    progress; its result names the file and its size."""
    body = body or DumpBody()
    path = Path(body.file) if body.file is not None else diagnostics.default_dump_path(
        name, body.format)
    diagnostics.check_dump(caller, path, fmt=body.format, memory_only=body.memory_only,
                           force=body.force)  # a bad request fails now, not in the job
    diagnostics.check_dumpable(caller, host, name)  # so does a VM that is off or missing

    def run(job: JobContext) -> DumpResult:
        with open_connection(uri) as own:
            return diagnostics.dump(caller, own, name, path, fmt=body.format,
                                    memory_only=body.memory_only, live=body.live,
                                    force=body.force, progress=job.bytes,
                                    cancelled=job.cancelled.is_set)

    return accepted(ctx.runner.submit("vm.dump", name, caller.name, run), response)
