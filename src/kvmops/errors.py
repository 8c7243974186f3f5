"""The one error hierarchy of kvmops.

Every error a user can cause or meet carries a one-line, user-facing message
(what failed, which object, what to do) and an exit code. The CLI prints
``str(error)`` and exits with ``error.exit_code``; the API maps the class to an
HTTP status. Lower-layer errors (libvirt, qemu-img, sockets) are translated into
these at one boundary each and kept as ``__cause__``.

    KvmopsError
    ├── ValidationError          bad input (size, name, option combination)
    ├── NotFoundError            VM, file, snapshot ... does not exist
    ├── AlreadyExistsError       name or file taken
    ├── StateError               object is in the wrong state for the action
    ├── UnsupportedError         the host / libvirt / image cannot do it
    ├── HostUnavailableError     libvirtd not running or not reachable
    ├── HypervisorError          libvirt or QEMU refused an operation
    ├── StorageError             qemu-img or file system failure
    ├── OperationTimeoutError    waited, and it did not happen
    ├── BackupError              backup not completed (BackupInconsistentError: repo broken,
    │                            TamperedError: a manifest failed its authentication,
    │                            KeyRequiredError: no key, or not the repository's key)
    ├── PathRefusedError         a path outside the allowed directories (or in the state dir)
    ├── ConfigError              the configuration is invalid (exit 78, EX_CONFIG)
    ├── TooManyRequestsError     a concurrency limit was reached
    ├── CancelledError           interrupted (Ctrl-C) or cancelled; says what was cleaned up
    └── ChannelError             QMP or guest agent channel
        ├── QmpError
        └── GuestAgentError
            ├── AgentNotConfiguredError
            ├── AgentUnavailableError
            ├── AgentTimeoutError
            ├── AgentCommandDisabledError
            └── GuestCommandError
"""

from __future__ import annotations

from typing import Any, ClassVar


def _one_line(text: str) -> str:
    joined = " / ".join(line.strip() for line in text.splitlines() if line.strip())
    # Text from callers can hold lone surrogates, which no output encoding takes.
    return joined.encode("utf-8", "backslashreplace").decode("utf-8")


class KvmopsError(Exception):
    """Base of every error kvmops raises on purpose."""

    exit_code: ClassVar[int] = 1
    http_status: ClassVar[int] = 500

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        # Lower layers (libvirt, QEMU, qemu-img) give multi-line texts; a user gets one line.
        self.message = _one_line(message)
        self.hint = _one_line(hint) if hint else hint
        super().__init__(self.__str__())

    def __str__(self) -> str:
        if self.hint:
            return f"{self.message}; {self.hint}"
        return self.message


class ValidationError(KvmopsError):
    exit_code = 2
    http_status = 422


class NotFoundError(KvmopsError):
    exit_code = 3
    http_status = 404


class AlreadyExistsError(KvmopsError):
    exit_code = 4
    http_status = 409


class StateError(KvmopsError):
    """The object exists but is in a state that forbids the action."""

    exit_code = 5
    http_status = 409

    def __init__(
        self,
        message: str,
        *,
        actual: str | None = None,
        required: str | None = None,
        hint: str | None = None,
    ) -> None:
        self.actual = actual
        self.required = required
        super().__init__(message, hint=hint)


class UnsupportedError(KvmopsError):
    exit_code = 6
    http_status = 501


class HostUnavailableError(KvmopsError):
    exit_code = 7
    http_status = 503


class HypervisorError(KvmopsError):
    """libvirt or QEMU refused or failed an operation."""

    exit_code = 8
    http_status = 502

    def __init__(self, message: str, *, code: int | None = None, hint: str | None = None) -> None:
        self.code = code
        super().__init__(message, hint=hint)


class StorageError(KvmopsError):
    exit_code = 9
    http_status = 500


class OperationTimeoutError(KvmopsError):
    exit_code = 10
    http_status = 504


class ChannelError(KvmopsError):
    """A QMP or guest-agent channel failed."""

    exit_code = 11
    http_status = 502


class QmpError(ChannelError):
    """QEMU answered a QMP command with an error."""

    exit_code = 12

    def __init__(
        self,
        message: str,
        *,
        error_class: str | None = None,
        command: dict[str, Any] | None = None,
        hint: str | None = None,
    ) -> None:
        self.error_class = error_class
        self.command = command
        super().__init__(message, hint=hint)


class GuestAgentError(ChannelError):
    exit_code = 13


class AgentNotConfiguredError(GuestAgentError):
    exit_code = 14
    http_status = 409


class AgentUnavailableError(GuestAgentError):
    exit_code = 15
    http_status = 503


class AgentTimeoutError(GuestAgentError):
    exit_code = 16
    http_status = 504


class AgentCommandDisabledError(GuestAgentError):
    exit_code = 17
    http_status = 403


class GuestCommandError(GuestAgentError):
    """The agent ran the request but the guest side failed (file missing, permission...)."""

    exit_code = 18
    http_status = 409


class BackupError(KvmopsError):
    """A backup did not complete; nothing of it was published."""

    exit_code = 19
    http_status = 500


class BackupInconsistentError(BackupError):
    """A repository check found a broken file, checksum or chain link."""

    exit_code = 20
    http_status = 409


class TamperedError(BackupInconsistentError):
    """A repository file's authentication failed: it was not written by this kvmops."""

    exit_code = 22
    http_status = 409


class KeyRequiredError(BackupError):
    """The repository is encrypted and no key, or not its key, was given."""

    exit_code = 25
    http_status = 403


class PathRefusedError(KvmopsError):
    """A path the path policy refuses: outside the allowed directories, in the state
    directory, or an image reference (backing or data file) leading out of them."""

    exit_code = 21
    http_status = 403


class ConfigError(KvmopsError):
    """The configuration file or environment is invalid."""

    exit_code = 78  # EX_CONFIG: a service manager should not restart on it
    http_status = 500


class TooManyRequestsError(KvmopsError):
    """A per-user or global limit of concurrent operations was reached."""

    exit_code = 23
    http_status = 429


class MigrationBlockedError(StateError):
    """The migration preflight found blockers (all named in the one message, each with
    its remedy); nothing was changed. ``blockers`` holds them for the API."""

    exit_code = 24
    http_status = 409

    def __init__(self, message: str, *, blockers: list[object] | None = None,
                 hint: str | None = None) -> None:
        self.blockers = list(blockers or [])
        super().__init__(message, hint=hint)


class CancelledError(KvmopsError):
    """The operation was interrupted (Ctrl-C, a cancel request) and cleaned up after."""

    exit_code = 130
    http_status = 409
