"""``kvmops backup drill`` and ``backup drills``: restore drills and their signed log."""

from __future__ import annotations

from pathlib import Path

import typer

from kvmops.cli.backup import repo_location
from kvmops.cli.common import HostFilesOption, JsonOption, UriOption, from_cwd, on_host
from kvmops.cli.output import info, print_json, print_table
from kvmops.services import drills
from kvmops.services.caller import Caller


def register(app: typer.Typer) -> None:
    app.command("drill")(drill_cmd)
    app.command("drills")(drills_cmd)


def drill_cmd(
    vm: str = typer.Argument(..., help="VM whose backup to drill."),
    repo: str = typer.Option(..., "--repo", callback=repo_location,
                             help="Backup repository: a directory, or an sftp:// or s3:// URL."),
    at: str | None = typer.Option(None, "--at", help="Backup id (or prefix) or ISO time; "
                                  "default the newest."),
    boot: bool = typer.Option(True, "--boot/--no-boot",
                              help="Boot the restored VM and wait for its guest agent."),
    check: str | None = typer.Option(None, "--check", help="A command to run in the "
                                     "restored guest (through its agent); it must exit 0."),
    timeout: float = typer.Option(180.0, "--timeout", help="Seconds to wait for the agent "
                                  "and for the check."),
    images_dir: Path | None = typer.Option(None, help="Where the drill's disks go (removed "
                                           "after).", callback=from_cwd),
    key_file: Path | None = typer.Option(None, "--key-file", metavar="FILE", help="The "
                                         "encrypted repository's key file.",
                                         callback=from_cwd),
    passphrase_stdin: bool = typer.Option(False, "--passphrase-stdin", help="Read the "
                                          "encrypted repository's passphrase from stdin."),
    json_out: bool = JsonOption,
    uri: str | None = UriOption,
    host_name: str | None = HostFilesOption,
) -> None:
    """Prove a point restores: verify its chain, restore it as an isolated VM (no network
    interfaces), boot it to its guest agent, run --check, remove it; the record is kept
    (signed) in 'backup drills'."""
    from kvmops.cli.backup import read_passphrase

    uri = on_host(uri, host_name)
    argv = drills.parse_check(check)
    record = drills.drill(Caller.local(), uri, repo, vm, at, boot=boot, timeout=timeout,
                          check=argv, images_dir=images_dir,
                          note=None if json_out else info, key_file=key_file,
                          passphrase=read_passphrase(passphrase_stdin))
    if json_out:
        print_json(record.model_dump(mode="json"))
    elif record.ok:
        agent = f", guest agent after {record.agent_s:.1f} s" if record.agent_s else ""
        info(f"restore drill of VM '{vm}' at {record.backup_id}: passed (verified, "
             f"restored in {record.restore_s or 0:.1f} s{agent}"
             + (", check exited 0" if record.check_command else "") + ")")
    drills.require_ok(record)


def drills_cmd(
    vm: str | None = typer.Argument(None, help="Only this VM."),
    limit: int = typer.Option(50, "--limit", min=1, help="At most this many, newest first."),
    json_out: bool = JsonOption,
) -> None:
    """Past restore drills (newest first); a record changed since is marked not authentic."""
    records = drills.history(vm, limit)
    if json_out:
        print_json([r.model_dump(mode="json") for r in records])
        return
    print_table(["when", "vm", "point", "result", "agent s", "check", "authentic"],
                [(r.started.strftime("%Y-%m-%d %H:%M:%S"), r.vm, r.backup_id or "-",
                  "passed" if r.ok else f"FAILED: {r.failure()}",
                  f"{r.agent_s:.1f}" if r.agent_s is not None else "-",
                  " ".join(r.check_command) or "-",
                  "yes" if r.authentic else "NO") for r in records])
