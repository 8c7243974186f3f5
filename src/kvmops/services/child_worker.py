"""The JSON-lines protocol shared by the child processes that run one backup.

A child reads one JSON object on stdin and writes JSON lines on stdout, the last
``{"result": {...}}`` or ``{"error": text, "kind": ClassName}``; its exit code says
the same (0, 1, 130 when interrupted). The work runs in the child's main thread
because the backup engine's SIGTERM/SIGHUP handlers need one.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any


def emit(obj: dict[str, Any]) -> None:
    """Write one protocol line and flush it (the parent reads line by line)."""
    sys.stdout.write(json.dumps(obj, default=str) + "\n")
    sys.stdout.flush()


def run_child(work: Callable[[dict[str, Any]], dict[str, Any]]) -> int:
    """Read the request, run ``work`` on it and emit its result or the error."""
    from kvmops.errors import KvmopsError

    try:
        result = work(json.loads(sys.stdin.readline()))
        emit({"result": result})
        return 0
    except KvmopsError as err:
        emit({"error": str(err), "kind": type(err).__name__})
        return 1
    except KeyboardInterrupt:
        emit({"error": "backup interrupted", "kind": "JobCancelled"})
        return 130
    except Exception as err:
        emit({"error": f"internal error: {type(err).__name__}: {err}",
              "kind": "InternalError"})
        return 1
