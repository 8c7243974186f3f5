"""Backup use cases: create (through libvirt or a hand-started QEMU's QMP socket),
restore, verify, prune, cancel -- every path through the path policy, every long one a
job of the one job model (:mod:`kvmops.services.jobs`), every change audited."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kvmops.backup import restore as restore_ops
from kvmops.backup.jobs import JobRecord
from kvmops.backup.model import BackupType, Manifest
from kvmops.backup.repository import Rejected, Repository
from kvmops.backup.restore import RestoreResult, VerifyReport, require_sound
from kvmops.backup.retention import PruneResult, RetentionPolicy, prune
from kvmops.backup.store import is_remote_url
from kvmops.config import settings
from kvmops.errors import NotFoundError, PathRefusedError, ValidationError
from kvmops.host.connection import Host
from kvmops.paths import policy
from kvmops.services.audit import audited
from kvmops.services.caller import Caller
from kvmops.services.jobs import track

__all__ = ["BackupType", "JobRecord", "Manifest", "PruneResult", "RestoreResult",
           "RetentionPolicy", "VerifyReport", "is_remote_url",
           "require_sound"]  # the faces' models
ProgressFn = Callable[[str, float], None]
BytesFn = Callable[[int, int], None]
NoteFn = Callable[[str], None]


def _cancel_self() -> None:
    """A cancel requested through the API: the backup engine turns SIGTERM into its
    clean abort, exactly as ``kvmops backup cancel`` from another shell would."""
    os.kill(os.getpid(), signal.SIGTERM)


def _both(first: Callable[..., None] | None, second: Callable[..., None]
          ) -> Callable[..., None]:
    def call(*args: Any) -> None:
        second(*args)
        if first is not None:
            first(*args)

    return call


@audited("backup.create", target="vm")
def create(caller: Caller, uri: str | None, vm: str, repo: str | Path, *,
           mode: BackupType | None = None, disks: list[str] | None = None,
           exclude: list[str] | None = None, freeze: bool = True, speed: int | None = None,
           compress: bool | str = False, encrypt: bool = False,
           key_file: str | Path | None = None, passphrase: str | None = None,
           progress: BytesFn | None = None,
           note: NoteFn | None = None, fleecing: str | None = None,
           scratch_dir: str | Path | None = None) -> Manifest:
    """Back up a libvirt VM; ``speed`` in bytes per second (the faces parse MiB/s);
    ``fleecing`` auto (None), on or off; ``scratch_dir`` where fleecing images go."""
    from kvmops.backup.engine import BackupRequest, run_backup
    from kvmops.backup.fleecing import check_mode

    opened, qcow2 = prepare(caller, repo, compress=compress, encrypt=encrypt,
                            key_file=key_file, passphrase=passphrase, note=note)
    request = BackupRequest(vm=vm, repo=opened.root, repository=opened, mode=mode,
                            disks=list(disks or []), exclude=list(exclude or []),
                            freeze=freeze, speed=speed, compress=qcow2,
                            fleecing=check_mode(fleecing),
                            scratch_dir=None if scratch_dir is None else policy().image_path(
                                scratch_dir, trusted=caller.trusted_paths,
                                what="fleecing scratch directory"))
    with track(caller, "backup.create", vm, on_cancel=_cancel_self) as job, \
            Host(uri) as host:
        manifest = run_backup(host, request, progress=_both(progress, job.bytes),
                              note=_both(note, job.note))
        job.result = manifest
    return manifest


@audited("backup.create", target="vm")
def create_over_qmp(caller: Caller, vm: str, repo: str | Path, socket: Path, *,
                    agent_socket: Path | None = None, mode: BackupType | None = None,
                    disks: list[str] | None = None, exclude: list[str] | None = None,
                    freeze: bool = True, speed: int | None = None,
                    compress: bool | str = False, encrypt: bool = False,
                    key_file: str | Path | None = None, passphrase: str | None = None,
                    progress: BytesFn | None = None, note: NoteFn | None = None) -> Manifest:
    """Back up a hand-started QEMU through its QMP socket (``vm`` names it in ``repo``)."""
    from kvmops.backup.qmp_engine import QmpBackupRequest, run_qmp_backup

    opened, qcow2 = prepare(caller, repo, compress=compress, encrypt=encrypt,
                            key_file=key_file, passphrase=passphrase, note=note)
    request = QmpBackupRequest(vm=vm, repo=opened.root, repository=opened, socket=socket,
                               agent_socket=agent_socket, mode=mode, disks=list(disks or []),
                               exclude=list(exclude or []), freeze=freeze, speed=speed,
                               compress=qcow2)
    with track(caller, "backup.create", vm, on_cancel=_cancel_self) as job:
        manifest = run_qmp_backup(request, progress=_both(progress, job.bytes),
                                  note=_both(note, job.note))
        job.result = manifest
    return manifest


@audited("backup.cancel", target="vm")
def cancel(caller: Caller, uri: str | None, vm: str) -> str:
    """Cancel the running backup of ``vm`` (its process, or libvirt's job)."""
    from kvmops.backup.engine import cancel as cancel_backup

    with Host(uri) as host:
        return cancel_backup(host, vm)


@audited("backup.pause", target="vm")
def set_paused(caller: Caller, vm: str, paused: bool) -> str:
    from kvmops.backup.engine import set_paused as pause_backup

    return pause_backup(vm, paused)


def repository(caller: Caller, repo: str | Path) -> Path:
    """The repository directory, checked (it may not exist yet: a backup makes it)."""
    return policy().repository(repo, trusted=caller.trusted_paths)


def existing_repository(caller: Caller, repo: str | Path) -> Path:
    path = repository(caller, repo)
    if not path.is_dir():
        raise NotFoundError(f"backup repository {path} does not exist",
                            hint="check --repo (a backup creates it)")
    return path


# Store-backed repositories (compressed, encrypted, remote) ------------------------------
def location(caller: Caller, repo: str | Path) -> Path | str:
    """Where a repository is: a directory through the path policy, or a remote URL (an
    untrusted caller's only inside the settings' ``remote_repositories``)."""
    if is_remote_url(str(repo)):
        from kvmops.backup.remote import check_remote_url

        return check_remote_url(str(repo), trusted=caller.trusted_paths)
    return repository(caller, repo)


def key_path(caller: Caller, key_file: str | Path | None) -> Path | None:
    """A repository key file: any file for the command line; for an API caller only a
    file of the server's key directory (``STATE_DIR/keys/repository/NAME``), so that a
    caller can never make kvmops read a file of its choosing as a key."""
    if key_file is None:
        return None
    if caller.trusted_paths:
        return Path(key_file).absolute()
    base = settings().state_dir / "keys" / "repository"
    name = Path(key_file)
    path = name if name.is_absolute() else base / name
    real = Path(os.path.realpath(path))
    if real.parent != Path(os.path.realpath(base)):
        raise PathRefusedError(f"key file {key_file} is not in the server's key directory "
                               f"{base}", hint="an admin puts repository key files there; "
                                               "name one, or send a passphrase")
    return real


def prepare(caller: Caller, repo: str | Path, *, compress: bool | str = False,
            encrypt: bool = False, key_file: str | Path | None = None,
            passphrase: str | None = None, note: NoteFn | None = None
            ) -> tuple[Repository, bool]:
    """The repository a backup goes into (made compressed/encrypted on its first backup
    when asked) and whether its qcow2 files are compressed the old way."""
    from kvmops.backup.storerepo import StoreRepository, parse_compress, prepare_repository

    qcow2, zstd = parse_compress(compress)
    refused = ValidationError(
        f"repository {repo} is store-backed (encrypted, zstd or remote): qcow2's compressed "
        "clusters (bare --compress) are for plain repositories",
        hint="leave --compress out, or make a zstd repository with --compress zstd at its "
             "first backup")
    if qcow2 and (encrypt or is_remote_url(str(repo))):
        raise refused
    opened = prepare_repository(location(caller, repo), compress=zstd, encrypt=encrypt,
                                key_file=key_path(caller, key_file), passphrase=passphrase,
                                note=note)
    if qcow2 and isinstance(opened, StoreRepository):
        raise refused
    return opened, qcow2


def open_existing(caller: Caller, repo: str | Path, *, key_file: str | Path | None = None,
                  passphrase: str | None = None) -> Repository:
    """An existing repository, opened: plain, or store-backed and unlocked with its key
    (KeyRequiredError without it, before anything is written)."""
    from kvmops.backup.storerepo import open_repository

    where = location(caller, repo)
    if isinstance(where, Path) and not where.is_dir():
        raise NotFoundError(f"backup repository {where} does not exist",
                            hint="check --repo (a backup creates it)")
    return open_repository(where, key_file=key_path(caller, key_file), passphrase=passphrase)


def repo_info(caller: Caller, repo: str | Path) -> dict[str, Any]:
    """Format, compression, encryption and key id of a repository (never a key)."""
    from kvmops.backup.storerepo import repo_info as read_info

    return read_info(location(caller, repo))


@audited("backup.repo.rekey", target="repo")
def rekey(caller: Caller, repo: str | Path, *, key_file: str | Path | None = None,
          passphrase: str | None = None, new_key_file: str | Path | None = None,
          new_passphrase: str | None = None) -> dict[str, Any]:
    """Change the key of an encrypted repository (its data key is re-wrapped)."""
    from kvmops.backup.storerepo import rekey as rewrap

    where = location(caller, repo)
    rewrap(where, old_key_file=key_path(caller, key_file), old_passphrase=passphrase,
           new_key_file=key_path(caller, new_key_file), new_passphrase=new_passphrase)
    return repo_info(caller, repo)


def list_backups(caller: Caller, repo: str | Path, vm: str, *,
                 key_file: str | Path | None = None, passphrase: str | None = None
                 ) -> tuple[list[Manifest], list[Rejected]]:
    """Authenticated backups, oldest first, and the ones rejected (never used)."""
    return open_existing(caller, repo, key_file=key_file, passphrase=passphrase).scan(vm)


def restore_dir(caller: Caller, to: str | Path) -> Path:
    """A restore target: inside an image directory; a missing last component is
    created (never a whole path of directories for an API caller)."""
    path = policy().image_path(to, trusted=caller.trusted_paths, what="restore directory")
    if path.exists() and not path.is_dir():
        raise ValidationError(f"restore directory {path} is not a directory")
    if not path.exists():
        if caller.trusted_paths:
            path.mkdir(parents=True)
        elif path.parent.is_dir():
            path.mkdir()
        else:
            raise NotFoundError(f"the parent of restore directory {path} does not exist")
    return path


def check_restore(caller: Caller, repo: str | Path, *, to: str | Path | None = None,
                  images_dir: str | Path | None = None, key_file: str | Path | None = None,
                  passphrase: str | None = None) -> tuple[Path, Path | None, Path]:
    """Every path of a restore, checked before any work (an API job checks first); a
    store-backed repository is opened with its key before the target is made (its path
    is then the work directory: restore through :func:`open_existing`)."""
    checked_repo = open_existing(caller, repo, key_file=key_file, passphrase=passphrase).root
    target = restore_dir(caller, to) if to is not None else None
    directory = policy().new_images_dir(images_dir, trusted=caller.trusted_paths)
    return checked_repo, target, directory


@audited("backup.restore", target="vm")
def restore(caller: Caller, uri: str | None, repo: str | Path, vm: str,
            at: str | None, *, to: str | Path | None = None, new_vm: str | None = None,
            in_place: bool = False, images_dir: str | Path | None = None,
            progress: ProgressFn | None = None, key_file: str | Path | None = None,
            passphrase: str | None = None) -> RestoreResult:
    if sum(x is not None and x is not False for x in (to, new_vm, in_place)) != 1:
        raise ValidationError("give exactly one of --to DIR, --new-vm NAME, --in-place")
    # Opened (and unlocked) before the target is made: without the key nothing is written.
    checked_repo = open_existing(caller, repo, key_file=key_file, passphrase=passphrase)
    target = restore_dir(caller, to) if to is not None else None
    directory = policy().new_images_dir(images_dir, trusted=caller.trusted_paths)
    with track(caller, "backup.restore", vm) as job:
        def report(label: str, pct: float) -> None:
            job.percent(pct, f"restoring {label}")
            if progress is not None:
                progress(label, pct)

        if target is not None:
            result = restore_ops.restore_to_dir(checked_repo, vm, at, target, report)
        else:
            with Host(uri) as host:
                if new_vm is not None:
                    result = restore_ops.restore_new_vm(host, checked_repo, vm, at, new_vm,
                                                        directory, report)
                else:
                    result = restore_ops.restore_in_place(host, checked_repo, vm, at, report)
        job.result = result
    return result


def verify(caller: Caller, repo: str | Path, vm: str | None = None, at: str | None = None,
           *, checksums: bool = True, key_file: str | Path | None = None,
           passphrase: str | None = None) -> VerifyReport:
    opened = open_existing(caller, repo, key_file=key_file, passphrase=passphrase)
    return restore_ops.verify(opened, vm, at, checksums=checksums)


@audited("backup.prune", target="vm")
def prune_backups(caller: Caller, repo: str | Path, vm: str, rules: RetentionPolicy, *,
                  dry_run: bool = False, note: Callable[[str], None] | None = None,
                  key_file: str | Path | None = None, passphrase: str | None = None
                  ) -> PruneResult:
    checked = open_existing(caller, repo, key_file=key_file, passphrase=passphrase)
    if dry_run:  # changes nothing: no job
        return prune(checked, vm, rules, dry_run=True, note=note)
    with track(caller, "backup.prune", vm) as job:
        result = prune(checked, vm, rules, note=_both(note, job.note))
        job.result = result
    return result


def running() -> list[JobRecord]:
    """Backups running on this host (their process holds the VM's backup lock)."""
    from kvmops.backup import jobs

    return jobs.running_jobs()


def events(vm: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
    """The backup event log (started, completed, failed, cancelled)."""
    from kvmops.backup import jobs

    return jobs.read_events(vm, limit)


# The manifest keys that authenticate repositories ---------------------------------------
def keys() -> list[dict[str, Any]]:
    from kvmops.backup.keys import Keyring

    ring = Keyring()
    current = ring.current_id()
    return [{"id": key_id, "current": key_id == current} for key_id in ring.all_keys()]


@audited("backup.key.rotate", target=None)
def key_rotate(caller: Caller) -> str:
    from kvmops.backup.keys import Keyring

    return Keyring().rotate()


@audited("backup.key.resign", target="repo")
def key_resign(caller: Caller, repo: str | Path, *, adopt_unsigned: bool = False
               ) -> tuple[Path, int, list[str]]:
    """Re-sign a repository's authentic manifests with the current key."""
    from kvmops.backup.repository import resign

    path = existing_repository(caller, repo)
    count, problems = resign(Repository(path), adopt_unsigned=adopt_unsigned)
    return path, count, problems


@audited("backup.key.retire", target="key_id")
def key_retire(caller: Caller, key_id: str) -> None:
    from kvmops.backup.keys import Keyring

    Keyring().retire(key_id)


def key_export(key_id: str | None = None) -> str:
    from kvmops.backup.keys import Keyring

    ring = Keyring()
    return ring.export(key_id or ring.signing_key()[0])


@audited("backup.key.import", target=None)
def key_import(caller: Caller, text: str) -> str:
    from kvmops.backup.keys import Keyring

    return Keyring().import_key(text)
