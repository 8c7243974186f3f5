"""One QEMU monitor (QMP) interface over two transports.

:class:`MonitorChannel` is what the rest of kvmops uses to talk QMP to a QEMU:

* :class:`~kvmops.monitor.libvirt_channel.LibvirtMonitorChannel` for a VM that
  libvirt runs (``virDomainQemuMonitorCommand`` and libvirt's QEMU monitor
  events);
* :class:`~kvmops.monitor.socket_channel.SocketMonitorChannel` for a QEMU
  started by hand with ``-qmp unix:PATH,server=on,wait=off`` or a TCP monitor.

:func:`open_monitor` picks one. Commands return QMP's ``return`` value or raise
:class:`~kvmops.errors.QmpError` (with QEMU's error class); events come as
:class:`MonitorEvent`.

Event delivery: a channel buffers events from the moment it *listens*. A socket
channel listens from the moment it connects; a libvirt channel from its first
:meth:`MonitorChannel.listen` (or :meth:`~MonitorChannel.events`) call, so call
``listen()`` before a command whose events you will wait for (e.g. before
``blockdev-backup`` when waiting for ``BLOCK_JOB_COMPLETED``).
"""

from __future__ import annotations

import json
import re
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any

from kvmops.errors import OperationTimeoutError, QmpError, StateError, ValidationError

_COMMAND_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_-]*$")


# ------------------------------------------------------------------ events
@dataclass(frozen=True)
class MonitorEvent:
    """One QMP event: ``{"event": NAME, "data": {...}, "timestamp": {...}}``."""

    name: str
    timestamp: datetime
    data: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_parts(cls, name: str, seconds: int, microseconds: int,
                   data: Mapping[str, Any] | str | None = None) -> MonitorEvent:
        """Build from QMP's split timestamp; ``data`` may be JSON text (as libvirt gives it)."""
        if isinstance(data, str):
            data = json.loads(data) if data.strip() else {}
        return cls(name=name, timestamp=event_time(seconds, microseconds),
                   data=dict(data or {}))

    @classmethod
    def from_qmp(cls, message: Mapping[str, Any]) -> MonitorEvent:
        """Build from a whole QMP event message."""
        stamp = message.get("timestamp") or {}
        return cls.from_parts(
            str(message["event"]),
            int(stamp.get("seconds", -1)),
            int(stamp.get("microseconds", -1)),
            message.get("data") or {},
        )

    def to_dict(self) -> dict[str, Any]:
        return {"event": self.name, "timestamp": self.timestamp.isoformat(), "data": self.data}


def event_time(seconds: int, microseconds: int) -> datetime:
    """QMP timestamps are seconds + microseconds since the epoch (UTC).

    QEMU sends -1/-1 when it could not read the clock; that becomes "now".
    """
    if seconds < 0 or microseconds < 0:
        return datetime.now(UTC)
    return datetime.fromtimestamp(seconds, UTC).replace(microsecond=min(microseconds, 999_999))


def normalize_event_names(names: Collection[str] | None) -> frozenset[str] | None:
    """QMP event names are upper case (``STOP``, ``BLOCK_JOB_COMPLETED``); accept any case."""
    if not names:
        return None
    cleaned = frozenset(n.strip().upper().replace("-", "_") for n in names if n.strip())
    for name in cleaned:
        if not re.match(r"^[A-Z][A-Z0-9_]*$", name):
            raise ValidationError(f"invalid QMP event name '{name}'",
                                  hint="event names look like STOP, RESUME, DEVICE_DELETED")
    return cleaned or None


# ------------------------------------------------------------------ commands
def parse_command(text: str) -> tuple[str, dict[str, Any] | None]:
    """A user's QMP command: ``{"execute": NAME, "arguments": {...}}`` or a bare NAME.

    Returns ``(name, arguments)``; raises ValidationError on anything else.
    """
    stripped = text.strip()
    if _COMMAND_RE.match(stripped):
        return stripped, None
    try:
        value = json.loads(stripped)
    except json.JSONDecodeError as err:
        raise ValidationError(
            f"invalid QMP command JSON: {err.msg} at line {err.lineno} column {err.colno}",
            hint='write it like \'{"execute": "query-status"}\'',
        ) from None
    if not isinstance(value, dict):
        raise ValidationError(
            f"invalid QMP command: expected a JSON object, got {type(value).__name__}",
            hint='write it like \'{"execute": "query-status"}\'',
        )
    unknown = set(value) - {"execute", "arguments", "id"}
    if unknown:
        raise ValidationError(f"invalid QMP command: unknown key(s) {', '.join(sorted(unknown))}",
                              hint="a command has 'execute' and optionally 'arguments'")
    name = value.get("execute")
    if not isinstance(name, str) or not _COMMAND_RE.match(name):
        raise ValidationError("invalid QMP command: 'execute' must name a command",
                              hint='write it like \'{"execute": "query-status"}\'')
    arguments = value.get("arguments")
    if arguments is not None and not isinstance(arguments, dict):
        raise ValidationError(f"invalid QMP command '{name}': 'arguments' must be a JSON object")
    return name, arguments


def qmp_error(target: str, command: str, arguments: Mapping[str, Any] | None,
              error_class: str | None, desc: str) -> QmpError:
    """The one shape of QMP error reports."""
    request: dict[str, Any] = {"execute": command}
    if arguments:
        request["arguments"] = dict(arguments)
    label = f"{error_class}: " if error_class else ""
    return QmpError(f"QMP command '{command}' failed on {target}: {label}{desc.strip()}",
                    error_class=error_class, command=request)


# ------------------------------------------------------------------ channel
def hmp_failure(output: str) -> str | None:
    """The error in an HMP command's output (``unknown command: ...``, ``Error: ...``)."""
    first = output.strip().splitlines()[0] if output.strip() else ""
    if first.startswith("unknown command:") or first.startswith("Error:"):
        return first.removeprefix("Error:").strip()
    return None


class MonitorChannel(ABC):
    """A QMP connection to one QEMU. Use as a context manager or call :meth:`close`."""

    #: Human-readable name of the other end, used in messages ("VM 'web1'", "QMP socket /x").
    target: str = "QEMU"

    @abstractmethod
    def execute(self, command: str, arguments: Mapping[str, Any] | None = None) -> Any:
        """Run one QMP command; return its ``return`` value or raise QmpError."""

    def hmp(self, command_line: str) -> str:
        """Run one human monitor (HMP) command line; return its text output. HMP reports
        an unknown command or a failed one only in its text: that becomes a QmpError."""
        output = self._hmp(command_line)
        failure = hmp_failure(output)
        if failure:
            raise QmpError(f"HMP command '{command_line}' on {self.target} failed: {failure}",
                           hint="see 'kvmops qmp VM --hmp help'")
        return output

    @abstractmethod
    def _hmp(self, command_line: str) -> str:
        """The transport's HMP call: the raw text output."""

    @abstractmethod
    def listen(self) -> None:
        """Start buffering events (idempotent); see the module docstring."""

    @abstractmethod
    def _next_event(self, timeout: float | None) -> MonitorEvent | None:
        """The next buffered/arriving event, ``None`` after ``timeout`` seconds.

        Raises ChannelError (or StateError) when the other end went away.
        """

    @abstractmethod
    def close(self) -> None:
        """Release the connection (idempotent)."""

    # -- shared on top of the transport primitives
    def events(self, names: Collection[str] | None = None, timeout: float | None = None
               ) -> Iterator[MonitorEvent]:
        """Events as they arrive, filtered by name (any case); ends after ``timeout`` s.

        ``timeout`` is the total time to listen, ``None`` for no limit. The
        iterator raises ChannelError/StateError when QEMU or the VM goes away.
        """
        wanted = normalize_event_names(names)
        self.listen()
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            remaining = None
            if deadline is not None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return
            event = self._next_event(remaining)
            if event is None:
                return
            if wanted is None or event.name in wanted:
                yield event

    def wait_event(self, names: Collection[str], timeout: float,
                   predicate: Callable[[MonitorEvent], bool] | None = None) -> MonitorEvent:
        """The first event named in ``names`` (and accepted by ``predicate``), or
        OperationTimeoutError after ``timeout`` seconds."""
        for event in self.events(names, timeout):
            if predicate is None or predicate(event):
                return event
        wanted = ", ".join(sorted(normalize_event_names(names) or []))
        raise OperationTimeoutError(
            f"no {wanted} event from {self.target} within {timeout:g}s",
        )

    def command_names(self) -> list[str]:
        """Names of the QMP commands this QEMU offers (``query-commands``)."""
        reply = self.execute("query-commands")
        return sorted(str(c["name"]) for c in reply if isinstance(c, dict) and "name" in c)

    def __enter__(self) -> MonitorChannel:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


# ------------------------------------------------------------------ factory
def parse_tcp(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:4444`` for IPv6) as a (host, port) pair."""
    host, sep, port = text.strip().rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValidationError(f"invalid --tcp address '{text}'",
                              hint="use HOST:PORT, e.g. 127.0.0.1:4444")
    return host, int(port)


def open_monitor(vm: str | None = None, *, socket: Path | str | None = None,
                 tcp: str | None = None, uri: str | None = None,
                 connect_timeout: float = 10.0) -> MonitorChannel:
    """Open the monitor of a libvirt VM (by name), a QMP unix socket, or a TCP monitor.

    Exactly one of ``vm``, ``socket`` and ``tcp``. Raises NotFoundError (no such
    VM), StateError (VM not running) or ChannelError (socket missing, refused,
    busy).
    """
    given = [v for v in (vm, socket, tcp) if v]
    if len(given) != 1:
        raise ValidationError(
            "give exactly one of a VM name, --socket PATH or --tcp HOST:PORT"
            if given else "no monitor given",
            hint="e.g. 'kvmops qmp VM ...' or 'kvmops qmp --socket /run/qemu/qmp.sock ...'",
        )
    if vm:
        from kvmops.host.connection import Host
        from kvmops.monitor.libvirt_channel import LibvirtMonitorChannel

        host = Host(uri)
        try:
            domain = host.lookup(vm)
            if not domain.is_active():
                raise StateError(
                    f"VM '{vm}' is not running: its QEMU monitor is not available",
                    actual="shut off", required="running",
                    hint=f"start it with 'kvmops vm start {vm}'",
                )
            return LibvirtMonitorChannel(domain, host=host)
        except BaseException:
            host.close()
            raise
    from kvmops.monitor.socket_channel import SocketMonitorChannel

    if socket:
        return SocketMonitorChannel(Path(socket), connect_timeout=connect_timeout)
    assert tcp is not None
    return SocketMonitorChannel(parse_tcp(tcp), connect_timeout=connect_timeout)
