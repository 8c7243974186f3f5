"""Jobs and the event stream."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query
from fastapi.responses import StreamingResponse

from kvmops.api.deps import Ctx, Operator, Viewer
from kvmops.services import jobs as job_service
from kvmops.services.jobs import JobState, JobView

router = APIRouter(tags=["jobs"])


@router.get("/jobs", response_model=list[JobView])
def list_jobs(_: Viewer, ctx: Ctx, state: JobState | None = None,
              target: str | None = Query(None, max_length=255),
              limit: int = Query(100, ge=1, le=1000)) -> list[JobView]:
    """Every job, whoever started it: the server's, and ``kvmops`` commands' (a CLI
    backup shows here while it runs)."""
    return job_service.list_jobs(ctx.store, state=state, target=target, limit=limit)


@router.get("/jobs/{job_id}", response_model=JobView)
def get_job(_: Viewer, job_id: str, ctx: Ctx) -> JobView:
    return job_service.get(ctx.store, job_id)


@router.post("/jobs/{job_id}/cancel", response_model=JobView)
def cancel_job(_: Operator, job_id: str, ctx: Ctx) -> JobView:
    return ctx.runner.cancel(job_id)


@router.get("/events", response_class=StreamingResponse,
            responses={200: {"content": {"text/event-stream": {}}}})
async def events(_: Viewer, ctx: Ctx, job: str | None = Query(None, max_length=64),
                 vm: str | None = Query(None, max_length=64)) -> StreamingResponse:
    """Server-Sent Events: ``event: job`` (state/progress) and ``event: domain``
    (libvirt life cycle: defined, started, stopped, ...). Filter with ``job`` or ``vm``."""

    def accept(kind: str, data: dict[str, Any]) -> bool:
        if job is not None and (kind != "job" or data.get("id") != job):
            return False
        return vm is None or data.get("vm", data.get("target")) == vm

    return StreamingResponse(ctx.hub.stream(accept if (job or vm) else None),
                             media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
