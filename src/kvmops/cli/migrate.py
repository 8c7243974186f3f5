"""``kvmops vm migrate VM --to HOST``: live (a running VM) or cold (a shut-off one)
migration, the preflight first; a progress bar with libvirt's job stats; Ctrl-C
cancels (the VM keeps running on its source)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import typer

from kvmops.cli.common import JsonOption

if TYPE_CHECKING:
    from kvmops.migration.model import MigrationProgress


class _Bar:
    """A byte bar (processed/total) described by the latest job stats; appears on the
    first report, so a refusal prints only its one error line."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self._progress: Any = None
        self._task: Any = None

    def __call__(self, report: MigrationProgress) -> None:
        if not self.enabled or report.data_total is None:
            return
        from kvmops.services.migration import describe

        if self._progress is None:
            from kvmops.cli.output import byte_progress

            self._progress = byte_progress()
            self._progress.start()
            self._task = self._progress.add_task("migrating", total=report.data_total)
        self._progress.update(self._task, completed=report.data_processed or 0,
                              total=report.data_total or None,
                              description=describe(report))

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None


def register(app: typer.Typer) -> None:
    """Add ``migrate`` to the ``vm`` group."""

    @app.command("migrate")
    def migrate_cmd(
        name: str = typer.Argument(..., help="The VM."),
        to: str = typer.Option(..., "--to", metavar="HOST",
                               help="The target host (see 'kvmops host list')."),
        copy_storage: bool = typer.Option(False, "--copy-storage",
                                          help="Copy the VM's local disks to the target."),
        target_pool: str | None = typer.Option(
            None, "--target-pool", metavar="POOL",
            help="The target's directory pool for the copied disks (default: the pool "
                 "holding the same directory there)."),
        bandwidth: int | None = typer.Option(None, "--bandwidth", metavar="MiB/s", min=1,
                                             help="Cap the migration stream."),
        auto_converge: bool = typer.Option(
            False, "--auto-converge",
            help="Throttle the guest's vCPUs when its memory stays dirty."),
        postcopy: bool = typer.Option(
            False, "--postcopy",
            help="Switch to post-copy when pre-copy does not converge (3 passes)."),
        max_downtime: int | None = typer.Option(None, "--max-downtime", metavar="ms",
                                                min=1,
                                                help="The longest pause at switch-over."),
        dry_run: bool = typer.Option(False, "--dry-run",
                                     help="Run the preflight and show the plan only."),
        json_out: bool = JsonOption,
        host: str | None = typer.Option(None, "--host", metavar="NAME",
                                        help="The VM's host now (default: the local "
                                             "host)."),
    ) -> None:
        """Migrate a VM to another host: live when it runs, cold when shut off."""
        from kvmops.cli.output import info, print_json, warn
        from kvmops.migration.model import MigrationOptions
        from kvmops.services import migration
        from kvmops.services.caller import Caller

        options = MigrationOptions(target=to, copy_storage=copy_storage,
                                   target_pool=target_pool, bandwidth_mib=bandwidth,
                                   auto_converge=auto_converge, postcopy=postcopy,
                                   max_downtime_ms=max_downtime, dry_run=dry_run)
        bar = _Bar(enabled=not json_out)
        try:
            result = migration.migrate(Caller.local(), name, options, source=host,
                                       progress=bar)
        finally:
            bar.close()
        if json_out:
            print_json(result)
            return
        if dry_run:
            for line in result.notes:
                info(line)
            return
        downtime = f", downtime {result.downtime_ms} ms" if result.downtime_ms is not None \
            else ""
        info(f"migrated '{result.vm}' ({result.kind}) from '{result.source}' to "
             f"'{result.target}' in {result.seconds:.1f} s{downtime}")
        for note in result.notes:
            warn(note) if note.startswith("kept") else info(note)
