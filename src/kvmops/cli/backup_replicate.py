"""``kvmops backup replicate``: ship new points to a second repository, verified there."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from kvmops.cli.common import JsonOption, from_cwd
from kvmops.cli.output import LazyBar, info, print_json, warn
from kvmops.services import replication
from kvmops.services.caller import Caller
from kvmops.sizes import format_size


def _location(value: str | None) -> str | None:
    """A directory made absolute; a remote URL (sftp://, s3://) as given."""
    if value is None or "://" in value:
        return value
    return str(from_cwd(Path(value)))


def register(app: typer.Typer) -> None:
    """Add ``replicate`` to ``kvmops backup``."""
    app.command("replicate")(replicate_cmd)


def replicate_cmd(
    vm: str | None = typer.Argument(None, help="VM whose points to ship (or --all)."),
    all_vms: bool = typer.Option(False, "--all", help="Every VM of the source repository."),
    source: str = typer.Option(..., "--from", callback=_location,
                               help="Source repository: a directory or an sftp:// / s3:// URL."),
    target: str = typer.Option(..., "--to", callback=_location,
                               help="Replica: a directory or an sftp:// / s3:// URL (made on "
                                    "first use, with the source's identity)."),
    key_file: Path | None = typer.Option(None, "--key-file", metavar="FILE",
                                         callback=from_cwd,
                                         help="Key file of an encrypted source (it opens the "
                                              "replica too)."),
    passphrase_stdin: bool = typer.Option(False, "--passphrase-stdin",
                                          help="Read the passphrase from standard input."),
    json_out: bool = JsonOption,
) -> None:
    """Ship the points the replica lacks, oldest first (a point only after its parents),
    and verify each one read back from the replica; a cut-off run goes on where it
    stopped when run again."""
    passphrase = sys.stdin.readline().rstrip("\n") if passphrase_stdin else None
    with LazyBar(f"replicate {vm or 'all VMs'}") as bar:
        result = replication.replicate(Caller.local(), source, target, vm, all_vms=all_vms,
                                       key_file=key_file, passphrase=passphrase,
                                       progress=bar.update, note=warn if json_out else info)
        bar.update(max(result.bytes, 1), max(result.bytes, 1))
    if json_out:
        print_json(result)
        return
    for name in result.up_to_date:
        info(f"VM '{name}': the replica is up to date")
    info(f"shipped and verified {len(result.shipped)} point(s), "
         f"{format_size(result.bytes)}, to {result.target}")
