"""Run a process in the guest (guest-exec) and collect its result.

Apart from :mod:`kvmops.agent.guest` (whose results are pydantic models) so that
``kvmops guest exec`` starts without pydantic; that module re-exports these names.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from kvmops.agent.channel import AgentChannel
from kvmops.errors import (
    AgentCommandDisabledError,
    AgentTimeoutError,
    GuestCommandError,
    KvmopsError,
    OperationTimeoutError,
    ValidationError,
)
from kvmops.records import Record

# A short command (most of what ``guest exec`` runs) has exited by the second or third
# poll; a long one costs a few more polls before the back-off reaches its maximum.
EXEC_POLL_FIRST = 0.005
EXEC_POLL_MAX = 0.5

__all__ = ["EXEC_POLL_FIRST", "EXEC_POLL_MAX", "ExecResult", "error_detail", "exec",
           "exec_start", "exec_status"]


@dataclass
class ExecResult(Record):
    """A finished guest process: its exit code (or signal) and captured output."""

    pid: int
    exit_code: int | None
    signal: int | None
    stdout: bytes
    stderr: bytes
    stdout_truncated: bool = False
    stderr_truncated: bool = False


def error_detail(err: KvmopsError) -> str:
    """The agent's own words from a wrapped error message."""
    text = err.message
    return text.split("': ", 1)[1] if "': " in text else text


def exec_start(channel: AgentChannel, argv: Sequence[str], *, stdin: bytes | None = None,
               env: Sequence[str] | None = None) -> int:
    """Start ``argv`` in the guest with output capture; return the guest pid."""
    if not argv:
        raise ValidationError("no command given to run in the guest")
    args: dict[str, Any] = {"path": argv[0], "arg": list(argv[1:]), "capture-output": True}
    if stdin:
        args["input-data"] = base64.b64encode(stdin).decode()
    if env:
        args["env"] = list(env)
    try:
        return int(channel.execute("guest-exec", args)["pid"])
    except AgentCommandDisabledError:
        raise
    except GuestCommandError as err:
        raise GuestCommandError(
            f"cannot run '{argv[0]}' in the guest of {channel.target}: "
            f"{error_detail(err)}") from err


def exec_status(channel: AgentChannel, pid: int) -> ExecResult | None:
    """The result of a finished process (reaping it), or None while it runs."""
    status = channel.execute("guest-exec-status", {"pid": pid})
    if not status.get("exited"):
        return None
    return ExecResult(
        pid=pid, exit_code=status.get("exitcode"), signal=status.get("signal"),
        stdout=base64.b64decode(status.get("out-data", "")),
        stderr=base64.b64decode(status.get("err-data", "")),
        stdout_truncated=bool(status.get("out-truncated", False)),
        stderr_truncated=bool(status.get("err-truncated", False)),
    )


def exec(channel: AgentChannel, argv: Sequence[str], *, stdin: bytes | None = None,
         timeout: float = 60.0, env: Sequence[str] | None = None) -> ExecResult:
    """Run ``argv`` in the guest and wait for it (polling with a backoff)."""
    pid = exec_start(channel, argv, stdin=stdin, env=env)
    deadline = time.monotonic() + timeout
    delay = EXEC_POLL_FIRST
    while True:
        try:
            result = exec_status(channel, pid)
        except AgentTimeoutError as err:
            raise AgentTimeoutError(
                f"guest agent of {channel.target} stopped answering while '{argv[0]}' "
                f"(pid {pid}) ran", hint=f"the process may still run in the guest (pid {pid})",
            ) from err
        if result is not None:
            return result
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise OperationTimeoutError(
                f"'{' '.join(argv)}' (guest pid {pid}) did not finish within {timeout:g}s "
                f"in the guest of {channel.target}",
                hint=f"it may still be running; stop it with 'kill {pid}' in the guest",
            )
        time.sleep(min(delay, remaining))
        delay = min(delay * 1.5, EXEC_POLL_MAX)
