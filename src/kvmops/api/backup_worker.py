"""Run one backup in a child process: ``python -m kvmops.api.backup_worker``.

The backup engine installs SIGTERM/SIGHUP handlers for a clean abort, which
Python allows only in a main thread, and ``kvmops backup cancel`` signals the
process that registered the backup. So the API runs each backup in a child
process whose main thread calls :func:`kvmops.services.backups.create` (the same use
case as ``kvmops backup create``; the server's runner records the job);
cancelling the job (or ``POST /vms/NAME/backups/cancel``) sends it SIGTERM.

Protocol: the request is one JSON object on stdin; the child writes JSON lines
on stdout: ``{"progress": [done, total]}``, ``{"note": text}``, and finally
``{"result": manifest}`` or ``{"error": text, "kind": ClassName}``.
"""

from __future__ import annotations

from typing import Any

from kvmops.services.child_worker import emit, run_child


def _run(raw: dict[str, Any]) -> dict[str, Any]:
    from kvmops.services import backups
    from kvmops.services.backups import BackupType
    from kvmops.services.caller import Caller
    from kvmops.services.jobs import current_job

    current_job.set(raw.get("job_id"))  # the server's row: the backup lock names it
    caller = Caller(name=str(raw.get("user") or "api"), role="operator", via="api")
    manifest = backups.create(
        caller, raw.get("uri"), raw["vm"], raw["repo"],
        mode=BackupType(raw["mode"]) if raw.get("mode") else None,
        disks=list(raw.get("disks") or []), exclude=list(raw.get("exclude") or []),
        freeze=bool(raw.get("freeze", True)), speed=raw.get("speed"),
        compress=raw.get("compress") or False, encrypt=bool(raw.get("encrypt")),
        key_file=raw.get("key_file"), passphrase=raw.get("passphrase"),
        fleecing=raw.get("fleecing"),
        progress=lambda done, total: emit({"progress": [done, total]}),
        note=lambda text: emit({"note": text}))
    return manifest.model_dump(mode="json", exclude={"domain_xml"})


def main() -> int:
    return run_child(_run)


if __name__ == "__main__":
    raise SystemExit(main())
