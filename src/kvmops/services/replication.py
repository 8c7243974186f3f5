"""Backup replication use case: ship the points a second repository lacks (local or
remote, :mod:`kvmops.backup.replicate`), verified there -- both locations through the
one check (path policy, or the remote allow-list for API callers), a job, audited."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from kvmops.backup.replicate import ReplicateResult
from kvmops.errors import ValidationError
from kvmops.services import backups
from kvmops.services.audit import audited
from kvmops.services.caller import Caller
from kvmops.services.jobs import track

__all__ = ["ReplicateResult", "check", "replicate"]
BytesFn = Callable[[int, int], None]
NoteFn = Callable[[str], None]


def check(caller: Caller, source: str | Path, target: str | Path) -> str | Path:
    """Both locations checked before any work (an API job checks first); returns the
    target's checked location."""
    where_from = backups.location(caller, source)
    where_to = backups.location(caller, target)
    if str(where_from).rstrip("/") == str(where_to).rstrip("/"):
        raise ValidationError("--from and --to name the same repository")
    if isinstance(where_from, Path) and not where_from.is_dir():
        backups.existing_repository(caller, source)  # NotFoundError, one line
    return where_to


def _target(arguments: dict[str, Any]) -> str:
    return str(arguments.get("vm") or "all VMs")


@audited("backup.replicate", target=_target)
def replicate(caller: Caller, source: str | Path, target: str | Path, vm: str | None = None,
              *, all_vms: bool = False, key_file: str | Path | None = None,
              passphrase: str | None = None, progress: BytesFn | None = None,
              note: NoteFn | None = None) -> ReplicateResult:
    """Ship the points of ``vm`` (or of every VM with ``all_vms``) that ``target`` lacks."""
    from kvmops.backup.replicate import replicate as run

    if (vm is None) == (not all_vms):
        raise ValidationError("give a VM or --all")
    where_to = check(caller, source, target)
    opened = backups.open_existing(caller, source, key_file=key_file, passphrase=passphrase)
    with track(caller, "backup.replicate", vm or "all") as job:
        def step(done: int, total: int) -> None:
            job.bytes(done, total)
            if progress is not None:
                progress(done, total)

        def tell(message: str) -> None:
            job.note(message)
            if note is not None:
                note(message)

        result = run(opened, where_to, [vm] if vm else None,
                     key_file=backups.key_path(caller, key_file), passphrase=passphrase,
                     progress=step, note=tell)
        job.result = result
    return result
