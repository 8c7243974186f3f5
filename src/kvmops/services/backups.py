"""Backup use cases that name paths: the repository, a restore directory, an images
directory -- each through the path policy -- and listing that says what it rejected."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from kvmops.backup import restore as restore_ops
from kvmops.backup.model import Manifest
from kvmops.backup.repository import Rejected, Repository
from kvmops.backup.restore import RestoreResult, VerifyReport
from kvmops.backup.retention import PruneResult, RetentionPolicy, prune
from kvmops.errors import NotFoundError, ValidationError
from kvmops.host.connection import Host
from kvmops.paths import policy
from kvmops.services.caller import Caller

ProgressFn = Callable[[str, float], None]


def repository(caller: Caller, repo: str | Path) -> Path:
    """The repository directory, checked (it may not exist yet: a backup makes it)."""
    return policy().repository(repo, trusted=caller.trusted_paths)


def existing_repository(caller: Caller, repo: str | Path) -> Path:
    path = repository(caller, repo)
    if not path.is_dir():
        raise NotFoundError(f"backup repository {path} does not exist",
                            hint="check --repo (a backup creates it)")
    return path


def list_backups(caller: Caller, repo: str | Path, vm: str
                 ) -> tuple[list[Manifest], list[Rejected]]:
    """Authenticated backups, oldest first, and the ones rejected (never used)."""
    return Repository(existing_repository(caller, repo)).scan(vm)


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
                  images_dir: str | Path | None = None) -> tuple[Path, Path | None, Path]:
    """Every path of a restore, checked before any work (an API job checks first)."""
    checked_repo = existing_repository(caller, repo)
    target = restore_dir(caller, to) if to is not None else None
    directory = policy().new_images_dir(images_dir, trusted=caller.trusted_paths)
    return checked_repo, target, directory


def restore(caller: Caller, host_factory: Callable[[], Host], repo: str | Path, vm: str,
            at: str | None, *, to: str | Path | None = None, new_vm: str | None = None,
            in_place: bool = False, images_dir: str | Path | None = None,
            progress: ProgressFn | None = None) -> RestoreResult:
    if sum(x is not None and x is not False for x in (to, new_vm, in_place)) != 1:
        raise ValidationError("give exactly one of --to DIR, --new-vm NAME, --in-place")
    checked_repo, target, directory = check_restore(caller, repo, to=to,
                                                    images_dir=images_dir)
    if target is not None:
        return restore_ops.restore_to_dir(checked_repo, vm, at, target, progress)
    with host_factory() as host:
        if new_vm is not None:
            return restore_ops.restore_new_vm(host, checked_repo, vm, at, new_vm, directory,
                                              progress)
        return restore_ops.restore_in_place(host, checked_repo, vm, at, progress)


def verify(caller: Caller, repo: str | Path, vm: str | None = None, at: str | None = None,
           *, checksums: bool = True) -> VerifyReport:
    return restore_ops.verify(existing_repository(caller, repo), vm, at, checksums=checksums)


def prune_backups(caller: Caller, repo: str | Path, vm: str, rules: RetentionPolicy, *,
                  dry_run: bool = False, note: Callable[[str], None] | None = None
                  ) -> PruneResult:
    return prune(existing_repository(caller, repo), vm, rules, dry_run=dry_run, note=note)
