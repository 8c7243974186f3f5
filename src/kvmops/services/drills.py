"""Restore drills as a use case: path policy, a job row, the audit, the signed log and
the metrics' view of the last drill per VM (see :mod:`kvmops.backup.drill`)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from kvmops.backup.drill import DrillLog, DrillRecord, parse_check, run_drill
from kvmops.host.connection import Host
from kvmops.paths import policy
from kvmops.services.audit import audited
from kvmops.services.backups import open_existing
from kvmops.services.caller import Caller
from kvmops.services.jobs import track

__all__ = ["DrillRecord", "drill", "history", "parse_check"]


@audited("backup.drill", target="vm")
def drill(caller: Caller, uri: str | None, repo: str | Path, vm: str, at: str | None = None,
          *, boot: bool = True, timeout: float = 180.0, check: list[str] | None = None,
          images_dir: str | Path | None = None, note: Callable[[str], None] | None = None,
          key_file: str | Path | None = None, passphrase: str | None = None
          ) -> DrillRecord:
    """Run one restore drill and keep its record (also when it fails: the record says
    why; the faces turn ``not record.ok`` into a non-zero exit / a failed job)."""
    checked = open_existing(caller, repo, key_file=key_file, passphrase=passphrase)
    directory = policy().new_images_dir(images_dir, trusted=caller.trusted_paths)
    with track(caller, "backup.drill", vm) as job:
        def say(message: str) -> None:
            job.note(message)
            if note is not None:
                note(message)

        with Host(uri) as host:
            record = run_drill(host, checked, vm, at, images_dir=directory, boot=boot,
                               timeout=timeout, check=check, note=say)
        DrillLog().append(record)
        job.result = record
    return record


def history(vm: str | None = None, limit: int = 100) -> list[DrillRecord]:
    """Past drills, newest first, each marked authentic or not."""
    return DrillLog().records(vm, limit)


def last_per_vm() -> dict[str, DrillRecord]:
    """The newest authentic drill of each VM (for the metrics)."""
    found: dict[str, DrillRecord] = {}
    for record in DrillLog().records(limit=10_000):
        if record.authentic and record.vm not in found:
            found[record.vm] = record
    return found


def require_ok(record: DrillRecord) -> None:
    """One error line for a failed drill (its record is kept either way)."""
    from kvmops.errors import BackupError, BackupInconsistentError

    if record.ok:
        return
    point = f" at {record.backup_id}" if record.backup_id else ""
    error = BackupError if record.verified else BackupInconsistentError
    raise error(f"restore drill of VM '{record.vm}'{point} failed: {record.failure()}",
                hint=f"the drill's record is kept: 'kvmops backup drills {record.vm}'")
