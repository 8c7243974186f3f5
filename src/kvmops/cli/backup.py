"""``kvmops backup``: online backups, restore, verify, retention, jobs."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import typer
from typer.core import TyperCommand

from kvmops.cli.common import HostFilesOption, HostOption, JsonOption, UriOption, from_cwd, on_host
from kvmops.cli.output import (
    LazyBar,
    info,
    percent_progress,
    print_json,
    print_table,
    warn,
)
from kvmops.errors import ValidationError
from kvmops.services import backups
from kvmops.services.backups import BackupType, Manifest, RetentionPolicy, require_sound
from kvmops.services.caller import Caller
from kvmops.sizes import format_size, parse_rate

app = typer.Typer(help="Online backups, restore, verify and retention.", no_args_is_help=True)


def repo_location(value: str | None) -> str | None:
    """``--repo``: a remote repository's URL as given, a directory made absolute."""
    if value is None or backups.is_remote_url(value):
        return value
    return str(from_cwd(Path(value)))


RepoOption = typer.Option(..., "--repo", callback=repo_location,
                          help="Backup repository: a directory, or an sftp:// or s3:// URL.")
KeyFileOption = typer.Option(
    None, "--key-file", metavar="FILE", callback=from_cwd,
    help="The key file of an encrypted repository (kept away from the repository).")
PassphraseOption = typer.Option(
    False, "--passphrase-stdin",
    help="Read an encrypted repository's passphrase from standard input (its first line).")


def read_passphrase(wanted: bool) -> str | None:
    """The passphrase on standard input's first line, when asked for."""
    if not wanted:
        return None
    line = sys.stdin.readline().rstrip("\r\n")
    if not line:
        raise ValidationError("--passphrase-stdin: standard input holds no passphrase")
    return line


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="backup")


class _BareCompress(TyperCommand):
    """``--compress`` with an optional value: bare, it keeps its old meaning (qcow2's
    compressed clusters); ``--compress zstd[:LEVEL]`` makes a zstd repository. (Typer
    passes no flag value for a text option; click's parser takes it from here.)"""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for param in self.params:
            if param.name == "compress":
                param._flag_needs_value = True  # type: ignore[attr-defined]
                param.flag_value = "qcow2"  # type: ignore[attr-defined]


@app.command("create", cls=_BareCompress)
def create_cmd(
    vm: str = typer.Argument(..., help="VM name."),
    repo: str = RepoOption,
    full: bool = typer.Option(False, "--full", help="A new full backup (starts a chain)."),
    incremental: bool = typer.Option(False, "--incremental",
                                     help="Changes since the last backup."),
    differential: bool = typer.Option(False, "--differential",
                                      help="Changes since the last full backup."),
    disk: list[str] = typer.Option([], "--disk", help="Only this disk target; repeatable."),
    exclude: list[str] = typer.Option([], "--exclude", help="Skip this disk; repeatable."),
    no_freeze: bool = typer.Option(False, "--no-freeze",
                                   help="Do not freeze guest file systems (crash-consistent)."),
    compress: str | None = typer.Option(
        None, "--compress", flag_value="qcow2", metavar="[zstd[:LEVEL]]",
        help="zstd[:LEVEL] (1-19, default 3): a zstd-compressed repository, chosen at its "
             "first backup; bare --compress: qcow2's own compressed clusters."),
    encrypt: bool = typer.Option(
        False, "--encrypt", help="Encrypt the repository (AES-256-GCM) from its first "
                                 "backup on; with --key-file FILE (made when missing) or "
                                 "--passphrase-stdin, which every later command needs."),
    key_file: Path | None = KeyFileOption,
    passphrase_stdin: bool = PassphraseOption,
    speed: str | None = typer.Option(None, "--speed",
                                     help="Copy rate limit in MiB/s (e.g. 50) or with a unit."),
    fleecing: bool | None = typer.Option(
        None, "--fleecing/--no-fleecing",
        help="Copy-before-write into a local scratch image (pull mode), so a slow "
             "repository does not slow the guest's writes; neither: auto (see "
             "docs/concepts/backup-fleecing.md)."),
    scratch_dir: Path | None = typer.Option(
        None, "--scratch-dir", metavar="DIR", callback=from_cwd,
        help="Where the fleecing images go (local, with room for the disks' data)."),
    json_out: bool = JsonOption,
    uri: str | None = UriOption,
    host_name: str | None = HostFilesOption,
    socket: Path | None = typer.Option(
        None, "--socket", metavar="PATH",
        help="QMP unix socket of a QEMU started by hand (no libvirt); VM is then only the "
             "name in the repository. --disk also takes NODE=TARGET there."),
    agent_socket: Path | None = typer.Option(
        None, "--agent-socket", metavar="PATH",
        help="With --socket: qemu-ga socket, to freeze the guest's file systems."),
) -> None:
    """Back up a VM; without a type: incremental when a valid chain exists, else full."""
    uri = on_host(uri, host_name, socket=socket)
    chosen = [t for t, on in ((BackupType.FULL, full), (BackupType.INCREMENTAL, incremental),
                              (BackupType.DIFFERENTIAL, differential)) if on]
    if len(chosen) > 1:
        raise ValidationError("give at most one of --full, --incremental, --differential")
    caller = Caller.local()
    mode = chosen[0] if chosen else None
    passphrase = read_passphrase(passphrase_stdin)
    rate = _speed(speed) if speed else None
    if agent_socket is not None and socket is None:
        raise ValidationError("--agent-socket goes with --socket",
                              hint="a libvirt VM's agent is found through libvirt")
    if socket is not None and (fleecing or scratch_dir is not None):
        raise ValidationError("--fleecing and --scratch-dir are for libvirt VMs",
                              hint="a QEMU started by hand is backed up in push mode")
    fleece = "auto" if fleecing is None else ("on" if fleecing else "off")
    with LazyBar(f"backup {vm}") as bar:
        if socket is not None:  # a hand-started QEMU, through its QMP socket
            manifest = backups.create_over_qmp(
                caller, vm, repo, socket, agent_socket=agent_socket, mode=mode, disks=disk,
                exclude=exclude, freeze=not no_freeze, speed=rate, compress=compress or False,
                encrypt=encrypt, key_file=key_file, passphrase=passphrase,
                progress=bar.update, note=warn)
            label = f"VM '{vm}' (QMP {socket})"
        else:
            manifest = backups.create(
                caller, uri, vm, repo, mode=mode, disks=disk, exclude=exclude,
                freeze=not no_freeze, speed=rate, compress=compress or False,
                encrypt=encrypt, key_file=key_file, passphrase=passphrase, progress=bar.update,
                note=warn, fleecing=fleece, scratch_dir=scratch_dir)
            label = f"VM '{vm}'"
        _report_backup(manifest, bar, json_out, label)


def _report_backup(manifest: Manifest, bar: LazyBar, json_out: bool, label: str) -> None:
    """Finish the bar, then the summary; the id is the last line (scripts read it)."""
    written = sum(d.bytes_written for d in manifest.disks)
    bar.update(max(written, 1), max(written, 1))
    bar.__exit__()
    if json_out:
        print_json(manifest.model_dump(mode="json", exclude={"domain_xml"}))
        return
    info(f"{manifest.type.value} backup of {label} complete: "
         f"{len(manifest.disks)} disk(s), {format_size(written)} written, "
         f"{manifest.consistency.value}-consistent, {manifest.duration_s:.1f}s")
    info(manifest.id)


def _speed(text: str) -> int:
    """``50`` means 50 MiB/s; ``512K``/``2G`` are taken as given per second."""
    value = parse_rate(text, what="--speed")
    if value <= 0:
        raise ValidationError(f"invalid --speed '{text}': must be positive")
    return value


@app.command("list")
def list_cmd(vm: str = typer.Argument(..., help="VM name."), repo: str = RepoOption,
             json_out: bool = JsonOption, key_file: Path | None = KeyFileOption,
             passphrase_stdin: bool = PassphraseOption) -> None:
    """Backups of a VM in a repository, oldest first (authenticated ones only)."""
    manifests, rejected = backups.list_backups(
        Caller.local(), repo, vm, key_file=key_file,
        passphrase=read_passphrase(passphrase_stdin))
    for item in rejected:
        warn(f"backup {item.backup_id} is not listed: {item.reason}")
    if json_out:
        print_json([m.model_dump(mode="json", exclude={"domain_xml"}) for m in manifests])
        return
    print_table(
        ["ID", "Type", "Parent", "Time", "Disks", "Written", "Consistency", "Notes"],
        [(m.id, m.type.value, m.parent or "-", m.time.strftime("%Y-%m-%d %H:%M:%S"),
          ",".join(d.target for d in m.disks),
          format_size(sum(d.bytes_written for d in m.disks)), m.consistency.value,
          "; ".join(m.notes)) for m in manifests])


@app.command("restore")
def restore_cmd(
    vm: str = typer.Argument(..., help="VM whose backup to restore."),
    repo: str = RepoOption,
    at: str | None = typer.Option(None, "--at", help="Backup id (or prefix) or ISO time."),
    key_file: Path | None = KeyFileOption,
    passphrase_stdin: bool = PassphraseOption,
    to: Path | None = typer.Option(None, "--to", help="Write flattened images into DIR.",
                                      callback=from_cwd),
    new_vm: str | None = typer.Option(None, "--new-vm", help="Define a new VM from the backup."),
    in_place: bool = typer.Option(False, "--in-place",
                                  help="Overwrite the (shut-off) VM's own disks."),
    images_dir: Path | None = typer.Option(None, help="Where --new-vm disks go.",
                                           callback=from_cwd),
    instant: bool = typer.Option(False, "--instant", help="With --new-vm: start the VM at "
                                 "once on overlays of the backup; the data moves in the "
                                 "background (see 'backup instant')."),
    bandwidth: str | None = typer.Option(None, "--bandwidth", help="With --instant: copy "
                                         "rate limit in MiB/s (or with a unit)."),
    detach: bool = typer.Option(False, "--detach",
                                help="With --instant: do not follow the copy."),
    json_out: bool = JsonOption,
    uri: str | None = UriOption,
    host_name: str | None = HostFilesOption,
) -> None:
    """Restore one point of a VM's backups (each disk flattened into one qcow2)."""
    uri = on_host(uri, host_name)
    caller = Caller.local()
    if instant:  # kvmops.cli.backup_instant
        from kvmops.cli.backup_instant import instant_restore

        if to is not None or in_place:
            raise ValidationError("--instant restores as a new VM: give --new-vm, not "
                                  "--to or --in-place")
        return instant_restore(vm, repo, at, new_vm, images_dir, bandwidth, detach,
                               key_file, json_out, uri,
                               passphrase=read_passphrase(passphrase_stdin))
    if bandwidth is not None or detach:
        raise ValidationError("--bandwidth and --detach go with --instant")
    if sum(x is not None and x is not False for x in (to, new_vm, in_place)) != 1:
        raise ValidationError("give exactly one of --to DIR, --new-vm NAME, --in-place")
    passphrase = read_passphrase(passphrase_stdin)
    backups.check_restore(caller, repo, to=to, images_dir=images_dir, key_file=key_file,
                          passphrase=passphrase)
    with percent_progress() as progress:
        tasks: dict[str, object] = {}

        def report(target: str, pct: float) -> None:
            if target not in tasks:
                tasks[target] = progress.add_task(f"restoring {target}", total=100)
            progress.update(tasks[target], completed=pct)  # type: ignore[arg-type]

        result = backups.restore(caller, uri, repo, vm, at, to=to,
                                 new_vm=new_vm, in_place=in_place, images_dir=images_dir,
                                 progress=report, key_file=key_file, passphrase=passphrase)
    if json_out:
        print_json(result)
        return
    for disk in result.disks:
        info(f"{disk.target}: {disk.path} (chain {' <- '.join(disk.chain)})")
    for note in result.notes:
        warn(note)
    info(f"restored backup {result.backup_id} of VM '{vm}'"
         + (f" as new VM '{result.new_vm}'" if result.new_vm else ""))


@app.command("verify")
def verify_cmd(
    vm: str | None = typer.Argument(None, help="Only this VM."),
    repo: str = RepoOption,
    at: str | None = typer.Option(None, "--at", help="Only the chain of this point."),
    quick: bool = typer.Option(False, "--quick", help="Skip the checksums (a sealed "
                               "repository's files are still authenticated)."),
    json_out: bool = JsonOption,
    key_file: Path | None = KeyFileOption,
    passphrase_stdin: bool = PassphraseOption,
) -> None:
    """Check every file of every chain; exit 0 only when all are sound."""
    report = backups.verify(Caller.local(), repo, vm, at, checksums=not quick,
                            key_file=key_file, passphrase=read_passphrase(passphrase_stdin))
    if json_out:
        print_json({**report.model_dump(mode="json"), "sound": report.sound})
    elif report.sound:
        info(f"{report.checked_backups} backup(s), {report.checked_files} file(s): all sound")
    require_sound(report)


@app.command("prune")
def prune_cmd(
    vm: str = typer.Argument(..., help="VM name."),
    repo: str = RepoOption,
    keep_last: int = typer.Option(0, "--keep-last", min=0, help="Keep the newest N backups."),
    keep_hourly: int = typer.Option(0, "--keep-hourly", min=0,
                                    help="Keep the newest of N hours."),
    keep_daily: int = typer.Option(0, "--keep-daily", min=0, help="Keep the newest of N days."),
    keep_weekly: int = typer.Option(0, "--keep-weekly", min=0,
                                    help="Keep the newest of N weeks."),
    keep_monthly: int = typer.Option(0, "--keep-monthly", min=0,
                                     help="Keep the newest of N months."),
    keep_yearly: int = typer.Option(0, "--keep-yearly", min=0,
                                    help="Keep the newest of N years."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Show what would go; change nothing."),
    json_out: bool = JsonOption,
    key_file: Path | None = KeyFileOption,
    passphrase_stdin: bool = PassphraseOption,
) -> None:
    """Apply a retention policy; expired incrementals are merged so kept points stay whole."""
    policy = RetentionPolicy(keep_last=keep_last, keep_hourly=keep_hourly,
                             keep_daily=keep_daily, keep_weekly=keep_weekly,
                             keep_monthly=keep_monthly, keep_yearly=keep_yearly)
    result = backups.prune_backups(Caller.local(), repo, vm, policy, dry_run=dry_run,
                                   note=warn, key_file=key_file,
                                   passphrase=read_passphrase(passphrase_stdin))
    if json_out:
        print_json(result)
        return
    plan = result.plan
    verb = "would remove" if dry_run else "removed"
    for backup_id in plan.remove:
        info(f"{verb} {backup_id}")
    for backup_id, parent in plan.rewrite.items():
        info(f"{'would merge' if dry_run else 'merged'} into {backup_id} "
             f"(now based on {parent or 'nothing: a full'})")
    info(f"kept {len(plan.keep)}, {verb} {len(plan.remove)} backup(s) of VM '{vm}'")


@app.command("jobs")
def jobs_cmd(json_out: bool = JsonOption) -> None:
    """Backups running on this host (with their job: see 'kvmops job show ID')."""
    running = backups.running()
    if json_out:
        print_json(running)
        return
    print_table(["VM", "PID", "Transport", "State", "Repository", "Started", "Job"],
                [(j.vm, j.pid, j.transport, j.state, j.repo,
                  j.started.isoformat(timespec="seconds"), j.job_id or "-") for j in running])


@app.command("cancel")
def cancel_cmd(vm: str = typer.Argument(..., help="VM name."),
               uri: str | None = UriOption,
               host_name: str | None = HostOption) -> None:
    """Cancel the running backup of a VM (nothing of it is published)."""
    uri = on_host(uri, host_name)
    info(backups.cancel(Caller.local(), uri, vm))


@app.command("pause")
def pause_cmd(vm: str = typer.Argument(..., help="VM name.")) -> None:
    """Pause a running backup (hand-started QEMU via --socket; libvirt cannot)."""
    info(backups.set_paused(Caller.local(), vm, True))


@app.command("resume")
def resume_cmd(vm: str = typer.Argument(..., help="VM name.")) -> None:
    """Resume a paused backup."""
    info(backups.set_paused(Caller.local(), vm, False))


@app.command("events")
def events_cmd(vm: str | None = typer.Argument(None, help="Only this VM."),
               limit: int = typer.Option(50, help="How many of the newest events."),
               json_out: bool = JsonOption) -> None:
    """The backup event log (started, completed, failed, cancelled)."""
    events = backups.events(vm, limit)
    if json_out:
        print_json(events)
        return
    print_table(["Time", "VM", "Event", "Backup", "Detail"],
                [(e.get("time"), e.get("vm"), e.get("event"), e.get("backup_id"),
                  e.get("error") or e.get("type") or "") for e in events])


from kvmops.cli.backup_schedule import app as schedule_app  # noqa: E402

app.add_typer(schedule_app, name="schedule")

from kvmops.cli.backup_instant import app as instant_app  # noqa: E402

app.add_typer(instant_app, name="instant")

repo_app = typer.Typer(help="A repository's format, compression and encryption key.",
                       no_args_is_help=True)
app.add_typer(repo_app, name="repo")


@repo_app.command("info")
def repo_info_cmd(repo: str = RepoOption, json_out: bool = JsonOption) -> None:
    """Format, compression, encryption and key id of a repository (never the key)."""
    found = backups.repo_info(Caller.local(), repo)
    if json_out:
        print_json(found)
        return
    for label, key in (("repository", "repo"), ("id", "id"), ("format", "format"),
                       ("store", "store"), ("compression", "compression"),
                       ("encrypted", "encrypted"), ("cipher", "cipher"), ("kdf", "kdf"),
                       ("key id", "key_id")):
        value = found.get(key)
        if key == "encrypted":
            value = "yes" if value else "no"
        if value is not None:
            info(f"{label + ':':13} {value}")
    info(f"{'VMs:':13} {', '.join(found.get('vms') or []) or '-'}")


@repo_app.command("rekey")
def repo_rekey_cmd(
    repo: str = RepoOption,
    key_file: Path | None = typer.Option(None, "--key-file", metavar="OLD",
                                         callback=from_cwd, help="The current key file."),
    new_key_file: Path | None = typer.Option(
        None, "--new-key-file", metavar="NEW", callback=from_cwd,
        help="The new key file (made when missing)."),
    passphrase_stdin: bool = typer.Option(
        False, "--passphrase-stdin", help="Read the passphrases from standard input: the "
        "current one first (unless --key-file), then the new one (unless --new-key-file)."),
    json_out: bool = JsonOption,
) -> None:
    """Change an encrypted repository's key: the old key no longer opens it (no data is
    rewritten; keep the new key file safe before you destroy the old one)."""
    old = read_passphrase(passphrase_stdin and key_file is None)
    new = read_passphrase(passphrase_stdin and new_key_file is None)
    if (key_file is None and old is None) or (new_key_file is None and new is None):
        raise ValidationError("give the current key (--key-file OLD) and the new one "
                              "(--new-key-file NEW), or --passphrase-stdin")
    found = backups.rekey(Caller.local(), repo, key_file=key_file, passphrase=old,
                          new_key_file=new_key_file, new_passphrase=new)
    if json_out:
        print_json(found)
        return
    info(f"repository {found['repo']} now opens with the new key only "
         f"(key id {found.get('key_id')})")


key_app = typer.Typer(help="The manifest key that authenticates repositories.",
                      no_args_is_help=True)
app.add_typer(key_app, name="key")


@key_app.command("list")
def key_list_cmd(json_out: bool = JsonOption) -> None:
    """The manifest keys of this host (the current one signs)."""
    rows = backups.keys()
    if json_out:
        print_json(rows)
        return
    print_table(["ID", "Current"], [(r["id"], "yes" if r["current"] else "") for r in rows])


@key_app.command("rotate")
def key_rotate_cmd() -> None:
    """Make a new key the signing key (older keys still verify until retired)."""
    key_id = backups.key_rotate(Caller.local())
    info(f"new manifest key {key_id} signs from now on; re-sign repositories with "
         f"'kvmops backup key resign --repo DIR', then retire the old key")


@key_app.command("resign")
def key_resign_cmd(
    repo: str = RepoOption,
    adopt_unsigned: bool = typer.Option(
        False, "--adopt-unsigned",
        help="Also sign manifests that carry no signature (written by an older kvmops): "
             "only if you know nobody else could write into the repository."),
) -> None:
    """Re-sign a repository's authentic manifests with the current key."""
    path, count, problems = backups.key_resign(Caller.local(), repo,
                                               adopt_unsigned=adopt_unsigned)
    for problem in problems:
        warn(f"not signed: {problem}")
    info(f"signed {count} file(s) in {path} with the current key")
    if problems:
        raise ValidationError(f"{len(problems)} file(s) failed authentication and were not "
                              "signed", hint="run 'kvmops backup verify'")


@key_app.command("retire")
def key_retire_cmd(key_id: str = typer.Argument(..., help="Key id.")) -> None:
    """Remove an old key (what it alone signed is then rejected)."""
    backups.key_retire(Caller.local(), key_id)
    info(f"manifest key {key_id} retired")


@key_app.command("export")
def key_export_cmd(key_id: str | None = typer.Argument(None, help="Key id (default current).")
                   ) -> None:
    """Print a key as ID:HEX, to import on another host that restores these backups."""
    typer.echo(backups.key_export(key_id))


@key_app.command("import")
def key_import_cmd(
    file: Path = typer.Argument(..., help="File holding ID:HEX ('-' for stdin)."),
) -> None:
    """Add a key exported on another host (it verifies; it signs only if none does)."""
    import sys

    text = sys.stdin.read() if str(file) == "-" else file.read_text()
    info(f"manifest key {backups.key_import(Caller.local(), text)} imported")


from kvmops.cli import backup_files  # noqa: E402  (mount, umount, mounts, files, restore-file)

backup_files.register(app)

from kvmops.cli import backup_drill  # noqa: E402  (drill, drills)

backup_drill.register(app)

from kvmops.cli import backup_replicate  # noqa: E402  (replicate)

backup_replicate.register(app)
