"""``kvmops job``: every long operation, whoever started it -- the server (API, web UI)
or a ``kvmops`` command (a CLI backup) -- from the state database: the CLI's view of
``GET /api/v1/jobs`` and the web UI's jobs page."""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import TYPE_CHECKING

import typer

from kvmops.cli.common import JsonOption
from kvmops.cli.output import info, print_fields, print_json, print_table
from kvmops.cli.serve import DbOption

if TYPE_CHECKING:
    from kvmops.services.database import Store

app = typer.Typer(help="Jobs of every long operation, whoever started it.",
                  no_args_is_help=True)


def _store(db: str | None) -> AbstractContextManager[Store]:
    from kvmops.services.database import migrated

    return migrated(db)


def _progress(progress: dict[str, object] | None) -> str:
    if not progress or progress.get("percent") is None:
        return "-"
    return f"{progress['percent']}%"


@app.command("list")
def list_cmd(
    state: str | None = typer.Option(None, "--state",
                                     help="queued, running, succeeded, failed, cancelled "
                                          "or interrupted."),
    target: str | None = typer.Option(None, "--target", help="Only jobs on this VM/path."),
    limit: int = typer.Option(50, "--limit", min=1, max=1000, help="How many, newest first."),
    json_out: bool = JsonOption,
    db: str | None = DbOption,
) -> None:
    """Jobs, newest first (as GET /api/v1/jobs)."""
    from kvmops.errors import ValidationError
    from kvmops.services import jobs

    if state is not None and state not in {s.value for s in jobs.JobState}:
        raise ValidationError(f"unknown job state '{state}'",
                              hint=f"use one of {', '.join(s.value for s in jobs.JobState)}")
    with _store(db) as store:
        found = jobs.list_jobs(store, state=state, target=target, limit=limit)
    if json_out:
        print_json(found)
        return
    print_table(["ID", "Kind", "Target", "State", "Progress", "By", "Created", "Message"],
                [(j.id, j.kind, j.target or "-", j.state.value, _progress(j.progress),
                  j.created_by or "-", j.created_at.isoformat(timespec="seconds"),
                  j.error or j.message or "") for j in found])


@app.command("show")
def show_cmd(job_id: str = typer.Argument(..., help="Job id."), json_out: bool = JsonOption,
             db: str | None = DbOption) -> None:
    """One job with its progress, result or error."""
    from kvmops.services import jobs

    with _store(db) as store:
        job = jobs.get(store, job_id)
    if json_out:
        print_json(job)
        return
    print_fields([("ID", job.id), ("Kind", job.kind), ("Target", job.target),
                  ("State", job.state.value), ("Progress", _progress(job.progress)),
                  ("Created by", job.created_by), ("Created", job.created_at.isoformat()),
                  ("Started", job.started_at.isoformat() if job.started_at else None),
                  ("Finished", job.finished_at.isoformat() if job.finished_at else None),
                  ("Message", job.message), ("Error", job.error),
                  ("Cancel requested", "yes" if job.cancel_requested else None)])


@app.command("cancel")
def cancel_cmd(job_id: str = typer.Argument(..., help="Job id."),
               db: str | None = DbOption) -> None:
    """Ask a running job to stop (the server's or a command's: each hears it at its next
    progress report and cleans up)."""
    from kvmops.services import jobs
    from kvmops.services.caller import Caller

    with _store(db) as store:
        job = jobs.cancel(Caller.local(), store, job_id)
    if job.state.final:
        info(f"job {job.id} already ended: {job.state.value}")
    else:
        info(f"cancel of job {job.id} ({job.kind} {job.target or ''}) requested")
