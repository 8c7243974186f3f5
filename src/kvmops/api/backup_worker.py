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

import json
import sys
from typing import Any


def _emit(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj, default=str) + "\n")
    sys.stdout.flush()


def main() -> int:
    from kvmops.errors import KvmopsError
    from kvmops.services import backups
    from kvmops.services.backups import BackupType
    from kvmops.services.caller import Caller
    from kvmops.services.jobs import current_job

    try:
        raw = json.loads(sys.stdin.readline())
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
            progress=lambda done, total: _emit({"progress": [done, total]}),
            note=lambda text: _emit({"note": text}))
        _emit({"result": manifest.model_dump(mode="json", exclude={"domain_xml"})})
        return 0
    except KvmopsError as err:
        _emit({"error": str(err), "kind": type(err).__name__})
        return 1
    except KeyboardInterrupt:
        _emit({"error": "backup interrupted", "kind": "JobCancelled"})
        return 130
    except Exception as err:
        _emit({"error": f"internal error: {type(err).__name__}: {err}",
               "kind": "InternalError"})
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
