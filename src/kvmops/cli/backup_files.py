"""``kvmops backup mount/umount/mounts/files/restore-file``: file-level restore."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from kvmops.cli.common import HostFilesOption, JsonOption, UriOption, from_cwd, on_host
from kvmops.cli.output import LazyBar, info, print_json, print_table, warn
from kvmops.errors import StateError, ValidationError
from kvmops.services import filerestore
from kvmops.services.caller import Caller
from kvmops.sizes import format_size

RepoOption = typer.Option(..., "--repo", help="Backup repository directory.",
                          callback=from_cwd)
AtOption = typer.Option(..., "--at", help="Backup id (or prefix) or ISO time.")
DiskOption = typer.Option(None, "--disk", help="Disk target (default vda, or the only one).")
PartOption = typer.Option(None, "--partition", help="Partition number, when the disk holds "
                                                    "several file systems.")
KeyFileOption = typer.Option(None, "--key-file", help="Key of an encrypted repository.",
                             callback=from_cwd)
PassOption = typer.Option(False, "--passphrase-stdin",
                          help="Read the encrypted repository's passphrase from stdin.")


def _passphrase(flag: bool) -> str | None:
    return sys.stdin.readline().rstrip("\n") if flag else None


def register(app: typer.Typer) -> None:
    """Add the file-level restore commands to ``kvmops backup``."""
    app.command("mount")(mount_cmd)
    app.command("umount")(umount_cmd)
    app.command("mounts")(mounts_cmd)
    app.command("files")(files_cmd)
    app.command("restore-file")(restore_file_cmd)


def mount_cmd(
    vm: str = typer.Argument(..., help="VM name."),
    mountpoint: Path = typer.Argument(..., help="Empty directory to mount the point under."),
    repo: Path = RepoOption,
    at: str = AtOption,
    disk: str | None = DiskOption,
    key_file: Path | None = KeyFileOption,
    passphrase_stdin: bool = PassOption,
    json_out: bool = JsonOption,
) -> None:
    """Expose a backup point read-only (one directory per partition: MOUNTPOINT/p1, ...;
    the mount point itself when the disk is one file system) until 'backup umount'."""
    record = filerestore.mount_point(Caller.local(), repo, vm, at, from_cwd(mountpoint) or
                                     mountpoint, disk=disk, key_file=key_file,
                                     passphrase=_passphrase(passphrase_stdin))
    if json_out:
        print_json(record)
        return
    for note in record.notes:
        warn(note)
    for fs in record.filesystems:
        if fs.mounted:
            where = f"partition {fs.partition}" if fs.partition else "the disk"
            info(f"{fs.path}: {where} ({fs.fstype}, read-only)")
    info(f"backup {record.backup_id} of VM '{vm}' disk {record.disk} mounted at "
         f"{record.mountpoint}; 'kvmops backup umount {record.mountpoint}' when done")


def umount_cmd(
    mountpoint: Path | None = typer.Argument(None, help="Where a point is mounted."),
    all_: bool = typer.Option(False, "--all", help="Every recorded mount (after a crash too)."),
) -> None:
    """Unmount a backup point: file systems, loop device and export daemon."""
    caller = Caller.local()
    if all_ == (mountpoint is not None):
        raise ValidationError("give a MOUNTPOINT or --all")
    if mountpoint is not None:
        record, done = filerestore.unmount_point(caller, from_cwd(mountpoint) or mountpoint)
        info(f"unmounted backup {record.backup_id} of VM '{record.vm}' from "
             f"{record.mountpoint} ({len(done)} step(s))")
        return
    results = filerestore.unmount_all(caller)
    failed = [(r, d) for r, d in results if isinstance(d, str)]
    for record, outcome in results:
        if isinstance(outcome, str):
            warn(f"{record.mountpoint}: {outcome}")
        else:
            info(f"unmounted backup {record.backup_id} of VM '{record.vm}' from "
                 f"{record.mountpoint}")
    if failed:
        raise StateError(f"{len(failed)} of {len(results)} mount(s) could not be taken down",
                         hint="close what uses them and run 'kvmops backup umount --all' "
                              "again")
    if not results:
        info("no backup points are mounted")


def mounts_cmd(json_out: bool = JsonOption) -> None:
    """Backup points mounted on this host (also those a crash left behind: alive no)."""
    rows = filerestore.list_mounts()
    if json_out:
        print_json(rows)
        return
    print_table(["Mount point", "VM", "Backup", "Disk", "File systems", "Alive", "Kind",
                 "Repository"],
                [(r["mountpoint"], r["vm"], r["backup_id"], r["disk"],
                  ", ".join(f"{f['path']} ({f['fstype']})" for f in r["filesystems"]
                            if f["mounted"]) or "-",
                  "yes" if r["alive"] else "no",
                  "temporary" if r["temporary"] else "mount", r["repo"]) for r in rows])


def files_cmd(
    vm: str = typer.Argument(..., help="VM name."),
    path: str = typer.Argument("/", help="Directory (or file) in the guest's file system."),
    repo: Path = RepoOption,
    at: str = AtOption,
    disk: str | None = DiskOption,
    partition: int | None = PartOption,
    key_file: Path | None = KeyFileOption,
    passphrase_stdin: bool = PassOption,
    json_out: bool = JsonOption,
) -> None:
    """List a directory at a backup point (mounted for the command, unmounted after)."""
    result = filerestore.list_files(Caller.local(), repo, vm, at, path, disk=disk,
                                    partition=partition, key_file=key_file,
                                    passphrase=_passphrase(passphrase_stdin))
    if json_out:
        print_json(result)
        return
    print_table(["Name", "Type", "Size", "Mode", "Modified"],
                [(e.name + (f" -> {e.target}" if e.target else ""), e.type,
                  format_size(e.size) if e.type == "file" else "-", e.mode,
                  e.mtime.strftime("%Y-%m-%d %H:%M:%S")) for e in result.entries])


def restore_file_cmd(
    vm: str = typer.Argument(..., help="VM name."),
    repo: Path = RepoOption,
    at: str = AtOption,
    path: str = typer.Option(..., "--path", help="File or directory in the guest, e.g. /etc/x."),
    to: Path | None = typer.Option(None, "--to", help="Write DIR/<basename of PATH>.",
                                   callback=from_cwd),
    into_guest: bool = typer.Option(False, "--into-guest",
                                    help="Copy into the running guest through its agent."),
    guest_path: str | None = typer.Option(None, "--guest-path",
                                          help="With --into-guest: where (default PATH)."),
    force: bool = typer.Option(False, "--force", help="Replace an existing file."),
    disk: str | None = DiskOption,
    partition: int | None = PartOption,
    key_file: Path | None = KeyFileOption,
    passphrase_stdin: bool = PassOption,
    json_out: bool = JsonOption,
    uri: str | None = UriOption,
    host_name: str | None = HostFilesOption,
) -> None:
    """Copy one file (or a directory, recursively) out of a backup point."""
    uri = on_host(uri, host_name)
    with LazyBar(f"restoring {path}") as bar:
        result = filerestore.restore_file(
            Caller.local(), uri, repo, vm, at, path, to=to, into_guest=into_guest,
            guest_path=guest_path, disk=disk, partition=partition, force=force,
            key_file=key_file, passphrase=_passphrase(passphrase_stdin),
            progress=bar.update, note=warn)
    if json_out:
        print_json(result)
        return
    where = f"the guest of VM '{vm}' at {result.written}" if into_guest else result.written
    what = (f"directory {path} ({result.files} files, {format_size(result.bytes)})"
            if result.kind == "dir" else f"{path} ({format_size(result.bytes)})")
    info(f"restored {what} from backup {result.backup_id} to {where}")
    if result.sha256:
        info(f"sha256 {result.sha256}")

