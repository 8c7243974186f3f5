"""One scheduled backup in a child process: ``python -m kvmops.services.schedule_worker``.

The backup (then, on success, the schedule's retention) runs in this process's main
thread: the engine's SIGTERM/SIGHUP handlers need one, and ``kvmops backup cancel``
signals the process holding the backup -- this one, never the server or ``run-due``.

Protocol: one JSON object on stdin (``vm``, ``repo``, ``uri``, ``full``, ``compress``,
``key_file``, ``retention``, ``user``); the last line on stdout is ``{"result": {...}}``
(id, type, pruned, prune_error) or ``{"error": text, "kind": ClassName}``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kvmops.services.child_worker import run_child


def _supported(fn: Callable[..., Any], **kwargs: Any) -> dict[str, Any]:
    """The optional keyword arguments ``fn`` takes (compression and key files arrive
    with sealed repositories); a set one it does not take is an error, not ignored."""
    names = inspect.signature(fn).parameters
    out: dict[str, Any] = {}
    for key, value in kwargs.items():
        if value is None:
            continue
        if key not in names:
            from kvmops.errors import ValidationError

            raise ValidationError(f"this kvmops cannot back up with {key}={value!r}")
        out[key] = value
    return out


def _run(raw: dict[str, Any]) -> dict[str, Any]:
    from kvmops.errors import KvmopsError
    from kvmops.services import backups
    from kvmops.services.backups import BackupType, RetentionPolicy
    from kvmops.services.caller import Caller

    caller = Caller(name=str(raw.get("user") or "scheduler"), role="admin", via="api",
                    trusted_paths=True)  # the repository was checked when added
    key_file = Path(raw["key_file"]) if raw.get("key_file") else None
    manifest = backups.create(
        caller, raw.get("uri"), raw["vm"], raw["repo"],
        mode=BackupType.FULL if raw.get("full") else None,
        # A key file means an encrypted repository: made so by its first backup.
        **_supported(backups.create, compress=raw.get("compress"), key_file=key_file,
                     encrypt=True if key_file else None))
    result: dict[str, Any] = {"id": manifest.id, "type": manifest.type.value,
                              "pruned": None, "prune_error": None}
    if raw.get("retention"):
        try:
            pruned = backups.prune_backups(
                caller, raw["repo"], raw["vm"], RetentionPolicy(**raw["retention"]),
                **_supported(backups.prune_backups, key_file=key_file))
            result["pruned"] = len(pruned.plan.remove)
        except KvmopsError as err:  # the backup stands; the next success prunes
            result["prune_error"] = f"retention failed: {err}"
    return result


def main() -> int:
    return run_child(_run)


if __name__ == "__main__":
    raise SystemExit(main())
