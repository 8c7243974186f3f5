"""Backup replication: ``POST /backups/replicate`` (a job) ships the points a replica
lacks and verifies them there (kvmops.services.replication). Both locations go through
the same checks as every repository (path policy; remote URLs only inside the settings'
``remote_repositories``, refused and audited otherwise)."""

from __future__ import annotations

from fastapi import APIRouter, Response
from pydantic import Field, model_validator

from kvmops.api.deps import Ctx, OperatorCaller
from kvmops.api.routes.backups import Repo, RepoKey
from kvmops.api.routes.common import JobAccepted, accepted
from kvmops.api.runner import JobContext
from kvmops.api.validators import VmName
from kvmops.services import replication
from kvmops.services.replication import ReplicateResult

router = APIRouter(tags=["backups"])


class ReplicateBody(RepoKey):
    source: Repo = Field(description="the repository to ship from (directory or URL)")
    target: Repo = Field(description="the replica (directory or URL; made on first use)")
    vm: VmName | None = None
    all: bool = Field(default=False, description="every VM of the source")

    @model_validator(mode="after")
    def one_scope(self) -> ReplicateBody:
        if (self.vm is None) == (not self.all):
            raise ValueError("give vm or all=true")
        return self


@router.post("/backups/replicate", status_code=202, response_model=JobAccepted)
def replicate(caller: OperatorCaller, body: ReplicateBody, ctx: Ctx, response: Response
              ) -> JobAccepted:
    """Ship the points the replica lacks, oldest first, each verified in the replica."""
    replication.check(caller, body.source, body.target)  # refused before any job
    secret = body.secret()

    def run(job: JobContext) -> ReplicateResult:
        return replication.replicate(caller, body.source, body.target, body.vm,
                                     all_vms=body.all, key_file=secret["key_file"],
                                     passphrase=secret["passphrase"], progress=job.bytes,
                                     note=job.note)

    return accepted(ctx.runner.submit("backup.replicate", body.vm or "all", caller.name,
                                      run), response)
