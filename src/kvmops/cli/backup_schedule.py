"""``kvmops backup schedule``: scheduled backups with retention, stored in the database
and run by ``kvmops serve`` (or ``run-due`` from a systemd timer)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from kvmops.cli.common import JsonOption
from kvmops.cli.output import info, print_json, print_table, warn
from kvmops.cli.serve import DbOption
from kvmops.errors import BackupError, ValidationError
from kvmops.services.caller import Caller

if TYPE_CHECKING:  # loaded by the commands themselves: 'kvmops backup' starts quickly
    from kvmops.services.schedules import RunView, ScheduleView

app = typer.Typer(help="Backup schedules: cron, retention, catch-up, retries.",
                  no_args_is_help=True)


def _keep(flag: str, what: str) -> Any:
    return typer.Option(None, flag, min=1, help=f"Keep the newest backup of N {what}.")


def _repo(value: str) -> str:
    """A repository directory relative to the current directory, or a remote URL."""
    if "://" in value or Path(value).is_absolute():
        return value
    return str(Path.cwd() / value)


def _when(value: object) -> str:
    return f"{value:%Y-%m-%d %H:%M}" if value is not None else "-"


def _run_rows(runs: list[RunView]) -> list[tuple[object, ...]]:
    return [(r.id, r.schedule_id, r.vm, _when(r.due_at), r.trigger, r.result, r.attempt,
             r.kind or "", r.backup_id or "", r.error or "") for r in runs]


RUN_COLUMNS = ["Run", "Schedule", "VM", "Due (UTC)", "Trigger", "Result", "Attempt", "Type",
               "Backup", "Error"]


@app.command("add")
def add_cmd(
    vm: str | None = typer.Argument(None, help="VM name (or --tag)."),
    tag: str | None = typer.Option(None, "--tag", help="Every VM carrying this tag."),
    repo: str = typer.Option(..., "--repo", help="Repository directory or remote URL."),
    every: str = typer.Option(..., "--every", metavar="CRON",
                              help="Cron expression, e.g. '0 2 * * *' or @daily (UTC "
                                   "unless --timezone)."),
    keep_last: int | None = typer.Option(None, "--keep-last", min=1,
                                         help="Keep the N newest backups."),
    keep_hourly: int | None = _keep("--keep-hourly", "hours"),
    keep_daily: int | None = _keep("--keep-daily", "days"),
    keep_weekly: int | None = _keep("--keep-weekly", "ISO weeks"),
    keep_monthly: int | None = _keep("--keep-monthly", "months"),
    keep_yearly: int | None = _keep("--keep-yearly", "years"),
    full_every: int | None = typer.Option(None, "--full-every", min=1, metavar="N",
                                          help="Every Nth backup is a full."),
    compress: str | None = typer.Option(None, "--compress", metavar="zstd[:LEVEL]",
                                        help="Repository compression."),
    key_file: Path | None = typer.Option(None, "--key-file", metavar="FILE",
                                         help="Key file of an encrypted repository (the "
                                              "path is stored, never the key)."),
    timezone: str | None = typer.Option(None, "--timezone", metavar="ZONE",
                                        help="Evaluate the cron expression in this IANA "
                                             "time zone."),
    host: str = typer.Option("local", "--host", help="The host the VM runs on."),
    json_out: bool = JsonOption,
    db: str | None = DbOption,
) -> None:
    """Add a schedule (a VM or --tag TAG; at least one --keep-* rule)."""
    from kvmops.services import schedules
    from kvmops.services.database import migrated

    spec = schedules.ScheduleSpec(
        vm=vm, tag=tag, repo=_repo(repo), cron=every, timezone=timezone,
        keep_last=keep_last, keep_hourly=keep_hourly, keep_daily=keep_daily,
        keep_weekly=keep_weekly, keep_monthly=keep_monthly, keep_yearly=keep_yearly,
        full_every=full_every, compress=compress,
        key_file=str(key_file.absolute()) if key_file else None, host=host)
    with migrated(db) as store:
        view = schedules.add(store, Caller.local(), spec)
    if json_out:
        print_json(view.model_dump(mode="json"))
        return
    info(f"schedule {view.id} added: {view.vm or 'tag ' + str(view.tag)} into {view.repo} "
         f"at '{view.cron}', next {_when(view.next_due)} UTC")


@app.command("list")
def list_cmd(vm: str | None = typer.Option(None, "--vm", help="Only this VM's schedules."),
             covering: str | None = typer.Option(
                 None, "--covering", metavar="VM",
                 help="The schedules that back VM up: its own and its tags'."),
             json_out: bool = JsonOption, db: str | None = DbOption) -> None:
    """The schedules, their next due time and last run."""
    from kvmops.services import schedules
    from kvmops.services.database import migrated

    with migrated(db) as store:
        views = (schedules.schedules_covering(store, covering) if covering is not None
                 else schedules.list_schedules(store, vm))
    if json_out:
        print_json([v.model_dump(mode="json") for v in views])
        return
    print_table(["ID", "VM/tag", "Repository", "Cron", "Keep", "Full every", "Next (UTC)",
                 "Last run"],
                [(v.id, v.vm or f"tag:{v.tag}", v.repo, v.cron, _keep_text(v),
                  v.full_every or "", _when(v.next_due),
                  f"{v.last_run.result} {_when(v.last_run.due_at)}" if v.last_run else "")
                 for v in views])


def _keep_text(view: ScheduleView) -> str:
    from kvmops.services.schedules import KEEP_FIELDS

    return " ".join(f"{k.removeprefix('keep_')}={getattr(view, k)}"
                    for k in KEEP_FIELDS if getattr(view, k))


@app.command("remove")
def remove_cmd(schedule_id: int = typer.Argument(..., help="Schedule id."),
               db: str | None = DbOption) -> None:
    """Remove a schedule and its run history (the backups stay)."""
    from kvmops.services import schedules
    from kvmops.services.database import migrated

    with migrated(db) as store:
        gone = schedules.remove(store, Caller.local(), schedule_id)
    info(f"schedule {gone.id} removed ({gone.vm or 'tag ' + str(gone.tag)}); its backups "
         f"stay in {gone.repo}")


@app.command("run-now")
def run_now_cmd(schedule_id: int = typer.Argument(..., help="Schedule id."),
                json_out: bool = JsonOption, db: str | None = DbOption) -> None:
    """Run a schedule now (its retention follows a success); waits for the end."""
    from kvmops.services import schedules
    from kvmops.services.database import migrated

    with migrated(db) as store:
        runs = schedules.run_now(store, Caller.local(), schedule_id)
    if json_out:
        print_json([r.model_dump(mode="json") for r in runs])
    else:
        print_table(RUN_COLUMNS, _run_rows(runs))
    bad = [r for r in runs if r.result != "ok"]
    if bad:
        raise BackupError(f"run {bad[0].id} of schedule {schedule_id} ({bad[0].vm}) is "
                          f"{bad[0].result}: {bad[0].error or 'waiting for a limit'}",
                          hint="'kvmops backup schedule runs ID' shows its attempts")


@app.command("runs")
def runs_cmd(schedule_id: int | None = typer.Argument(None, help="Schedule id (all)."),
             vm: str | None = typer.Option(None, "--vm", help="Only this VM."),
             limit: int = typer.Option(100, "--limit", min=1, max=10000),
             json_out: bool = JsonOption, db: str | None = DbOption) -> None:
    """Past and pending runs, newest first."""
    from kvmops.services import schedules
    from kvmops.services.database import migrated

    with migrated(db) as store:
        runs = schedules.runs(store, schedule_id, vm=vm, limit=limit)
    if json_out:
        print_json([r.model_dump(mode="json") for r in runs])
        return
    print_table(RUN_COLUMNS, _run_rows(runs))


@app.command("run-due")
def run_due_cmd(now: str | None = typer.Option(None, "--now", metavar="ISO",
                                               help="Take this as the current time (tests, "
                                                    "replays); default: the clock."),
                json_out: bool = JsonOption, db: str | None = DbOption) -> None:
    """Run what is due (the systemd timer calls this every minute); waits for the runs."""
    from kvmops.services import schedules
    from kvmops.services.database import migrated

    at = schedules.parse_now(now)
    with migrated(db) as store:
        runs = schedules.run_due(store, Caller.local(), now=at)
    if json_out:
        print_json([r.model_dump(mode="json") for r in runs])
        return
    if not runs:
        info("nothing due")
        return
    print_table(RUN_COLUMNS, _run_rows(runs))
    for run in runs:
        if run.result == "failed":
            warn(f"run {run.id} ({run.vm}) failed after {run.attempt} attempts: {run.error}")


@app.command("systemd-units")
def units_cmd(install: Path | None = typer.Option(
        None, "--install", metavar="DIR",
        help="Write them into DIR (e.g. /etc/systemd/system) instead of printing.")) -> None:
    """The service + timer pair that runs 'run-due' every minute (no kvmops serve)."""
    from kvmops.services import schedules

    if install is not None:
        if not install.is_dir():
            raise ValidationError(f"{install} is not a directory")
        for path in schedules.install_units(install):
            info(f"wrote {path}")
        info("now: systemctl daemon-reload && "
             "systemctl enable --now kvmops-backup-schedules.timer")
        return
    for name, text in schedules.systemd_units().items():
        typer.echo(f"# ---- {name}")
        typer.echo(text.rstrip("\n"))
