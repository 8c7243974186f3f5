"""Restore drills: run one (a job) and read the signed log."""

from __future__ import annotations

from fastapi import APIRouter, Query, Response
from pydantic import Field

from kvmops.api.deps import Ctx, HostUri, OperatorCaller, ViewerCaller, VmNameDep
from kvmops.api.routes.backups import Repo, RepoKey
from kvmops.api.routes.common import JobAccepted, accepted
from kvmops.api.runner import JobContext
from kvmops.api.validators import AbsolutePath
from kvmops.services import backups, drills
from kvmops.services.drills import DrillRecord

router = APIRouter(tags=["backups"])


class DrillBody(RepoKey):
    repo: Repo
    at: str | None = Field(default=None, max_length=64, description="backup id; default the newest")
    boot: bool = True
    check: list[str] = Field(default_factory=list, max_length=64,
                             description="argv run in the restored guest; must exit 0")
    timeout: float = Field(default=180.0, ge=10, le=3600)
    images_dir: AbsolutePath | None = None


@router.post("/vms/{name}/backups/drill", status_code=202, response_model=JobAccepted)
def start_drill(caller: OperatorCaller, name: VmNameDep, body: DrillBody, ctx: Ctx,
                uri: HostUri, response: Response) -> JobAccepted:
    """Verify a point, restore it as an isolated VM, boot it, run ``check``, remove it;
    the job fails when the drill does (its record is kept either way)."""
    backups.location(caller, body.repo)  # refused here, before the job
    backups.key_path(caller, body.key_file)

    def run(job: JobContext) -> DrillRecord:
        record = drills.drill(caller, uri, body.repo, name, body.at, boot=body.boot,
                              timeout=body.timeout, check=body.check,
                              images_dir=body.images_dir, note=job.note, **body.secret())
        drills.require_ok(record)
        return record

    return accepted(ctx.runner.submit("backup.drill", name, caller.name, run), response)


@router.get("/vms/{name}/backups/drills", response_model=list[DrillRecord])
def vm_drills(caller: ViewerCaller, name: VmNameDep,
              limit: int = Query(50, ge=1, le=1000)) -> list[DrillRecord]:
    return drills.history(name, limit)


@router.get("/backups/drills", response_model=list[DrillRecord])
def all_drills(caller: ViewerCaller, limit: int = Query(100, ge=1, le=1000)
               ) -> list[DrillRecord]:
    return drills.history(None, limit)
