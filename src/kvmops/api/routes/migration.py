"""Migration: ``POST /vms/{name}/migrate`` (a job: live or cold, its progress streamed
as every job's; cancel through ``POST /jobs/{id}/cancel``) and
``POST /vms/{name}/migrate/preflight`` (the dry run: every blocker, nothing changed)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query, Response
from pydantic import Field

from kvmops.api.deps import Ctx, OperatorCaller, VmNameDep
from kvmops.api.routes.common import Body, JobAccepted, accepted
from kvmops.api.runner import JobContext
from kvmops.errors import CancelledError
from kvmops.migration.model import MigrationOptions, MigrationProgress, MigrationResult, Preflight
from kvmops.services import migration

router = APIRouter(tags=["migration"])

HostQuery = Query(default=None, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$",
                  description="the VM's host now (default: the local host)")


class MigrateBody(Body):
    to: str = Field(max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$",
                    description="the target host (GET /api/v1/hosts)")
    copy_storage: bool = False
    target_pool: str | None = Field(default=None, max_length=128)
    bandwidth_mib: int | None = Field(default=None, ge=1, le=1_000_000,
                                      description="MiB/s")
    auto_converge: bool = False
    postcopy: bool = False
    max_downtime_ms: int | None = Field(default=None, ge=1, le=600_000)

    def options(self, *, dry_run: bool = False) -> MigrationOptions:
        return MigrationOptions(target=self.to, copy_storage=self.copy_storage,
                                target_pool=self.target_pool,
                                bandwidth_mib=self.bandwidth_mib,
                                auto_converge=self.auto_converge, postcopy=self.postcopy,
                                max_downtime_ms=self.max_downtime_ms, dry_run=dry_run)


def _reporter(job: JobContext) -> Any:
    def report(update: MigrationProgress) -> None:
        try:
            if update.data_total:
                job.bytes(update.data_processed or 0, update.data_total)
            job.note(migration.describe(update))
        except CancelledError:
            pass  # seen by ``cancelled`` below: the migration aborts its job itself

    return report


@router.post("/vms/{name}/migrate", status_code=202, response_model=JobAccepted)
def migrate(caller: OperatorCaller, name: VmNameDep, body: MigrateBody, ctx: Ctx,
            response: Response, host: str | None = HostQuery) -> JobAccepted:
    """Migrate the VM to ``to`` (live when it runs, cold when shut off): a job."""
    options = body.options()
    migration.validate(options)

    def run(job: JobContext) -> MigrationResult:
        return migration.migrate(caller, name, options, source=host,
                                 progress=_reporter(job), cancelled=job.cancelled.is_set,
                                 db=ctx.store)

    return accepted(ctx.runner.submit("vm.migrate", name, caller.name, run), response)


@router.post("/vms/{name}/migrate/preflight", response_model=Preflight)
def preflight(caller: OperatorCaller, name: VmNameDep, body: MigrateBody, ctx: Ctx,
              host: str | None = HostQuery) -> Preflight:
    """Every blocker the migration would meet, each with its remedy; nothing changes."""
    return migration.check(caller, name, body.options(dry_run=True), source=host,
                           db=ctx.store)
