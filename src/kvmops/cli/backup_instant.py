"""``kvmops backup restore --instant`` and ``kvmops backup instant``: a VM started at once
on overlays of a backup point, its data moved into them in the background."""

from __future__ import annotations

from pathlib import Path

import typer

from kvmops.cli.common import HostOption, JsonOption, UriOption, on_host
from kvmops.cli.output import byte_progress, info, print_json, print_table, warn
from kvmops.errors import ValidationError
from kvmops.services import instant
from kvmops.services.caller import Caller
from kvmops.services.instant import InstantStatus
from kvmops.sizes import format_size, parse_rate

app = typer.Typer(help="Instant recoveries: list, resume, cancel.", no_args_is_help=True)


def bandwidth_rate(text: str | None) -> int | None:
    """``--bandwidth``: a bare number is MiB/s, ``512K``/``2G`` per second; 0 unlimited."""
    if text is None:
        return None
    value = parse_rate(text, what="--bandwidth")
    if value < 0:
        raise ValidationError(f"invalid --bandwidth '{text}': must not be negative")
    return value


class _Bar:
    """One Rich bar for the bytes of every disk, shown from the first report."""

    def __init__(self, vm: str) -> None:
        self.vm = vm
        self.progress = byte_progress()
        self.task: object | None = None

    def __call__(self, current: InstantStatus) -> None:
        if self.task is None:
            self.progress.start()
            self.task = self.progress.add_task(f"pulling {self.vm}", total=current.total)
        self.progress.update(self.task, completed=current.done,  # type: ignore[arg-type]
                             total=current.total)

    def close(self) -> None:
        if self.task is not None:
            self.progress.stop()


def _report(result: InstantStatus, json_out: bool) -> None:
    if json_out:
        print_json({**result.model_dump(mode="json"), "percent": result.percent})
        return
    record = result.record
    for disk in record.disks:
        info(f"{disk.target}: {disk.overlay} (backup chain {' <- '.join(disk.backups)})")
    state = record.state.value
    info(f"VM '{record.vm}' (backup {record.backup_id} of VM '{record.source_vm}'): "
         f"{state}, {result.percent:.0f}% of {format_size(result.total)}")


def _follow_hint(vm: str) -> None:
    warn(f"the copy goes on in QEMU; 'kvmops backup instant resume {vm}' follows it again")


def instant_restore(vm: str, repo: str | Path, at: str | None, new_vm: str | None,
                    images_dir: Path | None, bandwidth: str | None, detach: bool,
                    key_file: Path | None, json_out: bool, uri: str | None, *,
                    passphrase: str | None = None) -> None:
    """``backup restore --instant`` (called from :mod:`kvmops.cli.backup`)."""
    name = new_vm or vm
    if new_vm is None:
        raise ValidationError("--instant restores as a new VM: give --new-vm NAME",
                              hint="the backed-up VM keeps its own disks")
    rate = bandwidth_rate(bandwidth)
    bar = _Bar(name)
    try:
        result = instant.start(Caller.local(), uri, repo, vm, at, name,
                               images_dir=images_dir, bandwidth=rate, detach=detach,
                               key_file=key_file, passphrase=passphrase,
                               progress=None if json_out else bar,
                               note=None if json_out else info)
    except KeyboardInterrupt:
        bar.close()
        _follow_hint(name)
        raise
    finally:
        bar.close()
    _report(result, json_out)


@app.command("list")
def list_cmd(json_out: bool = JsonOption, uri: str | None = UriOption,
             host_name: str | None = HostOption) -> None:
    """Instant recoveries and the progress of their background copy."""
    uri = on_host(uri, host_name)
    found = instant.list_recoveries(uri)
    if json_out:
        print_json([{**s.model_dump(mode="json"), "percent": s.percent} for s in found])
        return
    print_table(
        ["VM", "From", "Backup", "State", "Progress", "Size", "Running", "Started"],
        [(s.record.vm, s.record.source_vm, s.record.backup_id, s.record.state.value,
          f"{s.percent:.0f}%", format_size(s.total), "yes" if s.vm_running else "no",
          s.record.started.strftime("%Y-%m-%d %H:%M:%S")) for s in found])


@app.command("resume")
def resume_cmd(
    vm: str | None = typer.Argument(None, help="Recovered VM (default: every unfinished one)."),
    bandwidth: str | None = typer.Option(
        None, "--bandwidth", help="New copy rate limit in MiB/s (or with a unit); 0: none."),
    detach: bool = typer.Option(False, "--detach", help="Do not follow the copy."),
    json_out: bool = JsonOption,
    uri: str | None = UriOption,
    host_name: str | None = HostOption,
) -> None:
    """Re-attach to recoveries whose kvmops stopped; restart a pull QEMU lost."""
    uri = on_host(uri, host_name)
    caller = Caller.local()
    rate = bandwidth_rate(bandwidth)
    if vm is None:
        resumed = instant.resume_all(caller, uri, detach=detach, note=warn)
        if json_out:
            print_json(resumed)
        else:
            info(f"resumed {len(resumed)} instant recover{'y' if len(resumed) == 1 else 'ies'}"
                 + (f": {', '.join(resumed)}" if resumed else ""))
        return
    bar = _Bar(vm)
    try:
        result = instant.resume(caller, uri, vm, bandwidth=rate, detach=detach,
                                progress=None if json_out else bar, note=warn)
    except KeyboardInterrupt:
        bar.close()
        _follow_hint(vm)
        raise
    finally:
        bar.close()
    _report(result, json_out)


@app.command("cancel")
def cancel_cmd(vm: str = typer.Argument(..., help="Recovered VM."),
               uri: str | None = UriOption, host_name: str | None = HostOption) -> None:
    """Stop the background copy; the VM keeps running, still reading the repository."""
    uri = on_host(uri, host_name)
    record = instant.cancel(Caller.local(), uri, vm)
    info(f"the copy of VM '{vm}' is stopped; {record.message}")


@app.command("forget")
def forget_cmd(vm: str = typer.Argument(..., help="Recovered VM.")) -> None:
    """Drop the record of a completed recovery."""
    instant.forget(Caller.local(), vm)
    info(f"forgot the instant recovery of VM '{vm}'")
