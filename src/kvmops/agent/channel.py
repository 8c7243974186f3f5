"""One guest-agent channel interface, two transports.

:class:`AgentChannel` is what every guest operation takes, so the operations work
the same on a libvirt-managed VM (:class:`LibvirtAgentChannel`, through
``virDomainQemuAgentCommand``) and on a hand-started QEMU whose agent port is a
``-chardev socket`` (:class:`SocketAgentChannel`, unix path or ``host:port``).

The socket transport speaks qemu-ga's wire protocol itself. Before the first
command, and again after any timeout or unparsable data, it runs the
``guest-sync-delimited`` handshake: send a 0xFF byte (qemu-ga drops any half-read
request), send ``guest-sync-delimited`` with a random id, then discard every byte
up to qemu-ga's 0xFF sentinel and every reply that does not carry our id. A stale
reply of an earlier, timed-out command can therefore never answer a later one.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import secrets
import select
import socket as socketlib
import time
from abc import ABC, abstractmethod
from types import TracebackType
from typing import TYPE_CHECKING, Any

from kvmops.agent.errors import classify_error
from kvmops.errors import (
    AgentNotConfiguredError,
    AgentTimeoutError,
    AgentUnavailableError,
    KvmopsError,
    StateError,
    ValidationError,
)

if TYPE_CHECKING:
    from kvmops.host.connection import Host
    from kvmops.host.domain import Domain

DEFAULT_TIMEOUT = 30.0
SYNC_TIMEOUT = 5.0
SENTINEL = 0xFF
# Replies bigger than this are refused: a guest-file-read of the largest chunk we
# ask for is far below it; anything larger means a confused stream.
MAX_REPLY = 64 * 1024 * 1024

class AgentChannel(ABC):
    """A connection to one guest agent; ``execute`` returns the reply's ``return`` value."""

    target: str  # display name, e.g. "VM 'web1'" or "socket /run/qga.sock"
    # Raw bytes per guest-file-read/write request that this transport carries safely.
    chunk_size: int = 64 * 1024

    @abstractmethod
    def execute(self, command: str, arguments: dict[str, Any] | None = None, *,
                timeout: float = DEFAULT_TIMEOUT) -> Any:
        """Run one command; raise the precise GuestAgentError subclass on failure."""

    @abstractmethod
    def execute_no_reply(self, command: str, arguments: dict[str, Any] | None = None, *,
                         timeout: float = 3.0) -> None:
        """Send a command that answers nothing on success (guest-shutdown).

        An error reply still raises; silence or a dropped connection is success.
        """

    def close(self) -> None:  # noqa: B027 - optional for transports without resources
        """Release the transport."""

    def __enter__(self) -> AgentChannel:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


# --------------------------------------------------------------------- libvirt
class LibvirtAgentChannel(AgentChannel):
    """The agent of a libvirt-managed VM; libvirt does the syncing itself.

    libvirt 9.0 garbles agent requests somewhere between 160 and 256 KiB of raw
    file data (qemu-ga answers "JSON parse error" and libvirt then reports the
    agent unavailable for a while); 64 KiB keeps a wide margin and is as fast,
    since the guest's base64 decoding is the bottleneck (see bench/README.md).
    """

    chunk_size = 64 * 1024

    def __init__(self, domain: Domain, *, host: Host | None = None) -> None:
        from kvmops.host.domain import Domain

        self.domain = Domain.of(domain)
        self.name = self.domain.name
        self.target = f"VM '{self.name}'"
        self._host = host  # closed with the channel when we opened it

    def execute(self, command: str, arguments: dict[str, Any] | None = None, *,
                timeout: float = DEFAULT_TIMEOUT) -> Any:
        from kvmops.agent import libvirt_transport

        try:
            return libvirt_transport.agent_command(
                self.domain, command, arguments, timeout=max(1, math.ceil(timeout)))
        except AgentUnavailableError as err:
            raise self._explain_unavailable(err) from err

    def execute_no_reply(self, command: str, arguments: dict[str, Any] | None = None, *,
                         timeout: float = 3.0) -> None:
        with contextlib.suppress(AgentTimeoutError, AgentUnavailableError):
            self.execute(command, arguments, timeout=timeout)

    def _explain_unavailable(self, err: AgentUnavailableError) -> AgentUnavailableError:
        with contextlib.suppress(KvmopsError):
            if self.domain.state() == "paused":
                return AgentUnavailableError(
                    f"guest agent of VM '{self.name}' is not answering: the VM is paused",
                    hint=f"resume it with 'kvmops vm resume {self.name}'")
        return err

    def close(self) -> None:
        if self._host is not None:
            self._host.close()
            self._host = None


# --------------------------------------------------------------------- socket
class ReplyReader:
    """Splits the agent's byte stream into sentinels and JSON replies.

    Kept free of sockets so the parser is unit-tested against recorded streams:
    ``feed`` bytes, then ``next_sync_reply``/``next_reply`` return a parsed
    reply or None when more bytes are needed.
    """

    def __init__(self) -> None:
        self.buffer = bytearray()

    def feed(self, data: bytes) -> None:
        self.buffer += data
        if len(self.buffer) > MAX_REPLY:
            raise ValueError("agent reply larger than the limit")

    def reset(self) -> None:
        self.buffer.clear()

    def next_sync_reply(self, sync_id: int) -> bool | None:
        """Consume up to our ``guest-sync-delimited`` answer: True once found, None: need more.

        Everything before a 0xFF sentinel is stale and dropped; a reply after a
        sentinel that carries another id (an earlier client's sync) is dropped too.
        """
        while True:
            start = self.buffer.find(SENTINEL)
            if start < 0:
                # No sentinel yet: nothing here can be ours.
                self.buffer.clear()
                return None
            end = self.buffer.find(b"\n", start + 1)
            nxt = self.buffer.find(SENTINEL, start + 1)
            if nxt >= 0 and (end < 0 or nxt < end):
                del self.buffer[:nxt]  # another sentinel before the line ended
                continue
            if end < 0:
                del self.buffer[:start]
                return None
            line = bytes(self.buffer[start + 1:end])
            del self.buffer[:end + 1]
            try:
                reply = json.loads(line)
            except ValueError:
                continue
            if isinstance(reply, dict) and reply.get("return") == sync_id:
                return True

    def next_reply(self, request_id: str) -> dict[str, Any] | None:
        """The next complete reply for ``request_id`` (or one without an id), else None.

        Replies carrying another id are stale and skipped. A 0xFF byte here means
        the stream is no longer ours; it raises ValueError so the caller re-syncs.
        """
        while True:
            end = self.buffer.find(b"\n")
            if end < 0:
                if SENTINEL in self.buffer:
                    raise ValueError("unexpected sentinel byte in the agent stream")
                return None
            line = bytes(self.buffer[:end]).strip()
            del self.buffer[:end + 1]
            if SENTINEL in line:
                raise ValueError("unexpected sentinel byte in the agent stream")
            if not line:
                continue
            reply = json.loads(line)  # ValueError -> caller re-syncs
            if not isinstance(reply, dict):
                raise ValueError("agent reply is not a JSON object")
            if "id" in reply and reply["id"] != request_id:
                continue
            if "return" in reply or "error" in reply:
                return reply


def parse_tcp(address: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValidationError(f"invalid --tcp '{address}'",
                              hint="use HOST:PORT, e.g. 127.0.0.1:4444")
    return host.strip("[]"), int(port)


class SocketAgentChannel(AgentChannel):
    """qemu-ga on a unix socket path or a TCP ``host:port`` (QEMU's ``-chardev socket``)."""

    chunk_size = 1024 * 1024

    def __init__(self, *, path: str | None = None, tcp: str | None = None,
                 sync_timeout: float = SYNC_TIMEOUT) -> None:
        if (path is None) == (tcp is None):
            raise ValidationError("give exactly one of a socket path or a TCP address")
        self.path = path
        self.address = parse_tcp(tcp) if tcp else None
        self.target = f"socket {path}" if path else f"TCP {tcp}"
        self.sync_timeout = sync_timeout
        self._sock: socketlib.socket | None = None
        self._reader = ReplyReader()
        self._synced = False
        self._counter = 0
        self._connect()

    # -- connection
    def _connect(self) -> None:
        try:
            if self.path is not None:
                if not os.path.exists(self.path):
                    raise AgentUnavailableError(
                        f"guest agent {self.target} does not exist",
                        hint="is the QEMU with this -chardev socket running?")
                sock = socketlib.socket(socketlib.AF_UNIX, socketlib.SOCK_STREAM)
                sock.settimeout(self.sync_timeout)
                sock.connect(self.path)
            else:
                assert self.address is not None
                sock = socketlib.create_connection(self.address, timeout=self.sync_timeout)
        except KvmopsError:
            raise
        except OSError as err:
            raise AgentUnavailableError(
                f"cannot connect to the guest agent {self.target}: {err.strerror or err}",
                hint="is the QEMU with this -chardev socket running and nobody else connected?",
            ) from err
        sock.setblocking(False)
        self._sock = sock

    def close(self) -> None:
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.close()
            self._sock = None

    def _send(self, data: bytes, deadline: float) -> None:
        assert self._sock is not None
        view = memoryview(data)
        while view:
            self._wait(deadline, write=True)
            try:
                sent = self._sock.send(view)
            except BlockingIOError:
                continue
            except OSError as err:
                raise self._lost(err) from err
            view = view[sent:]

    def _wait(self, deadline: float, *, write: bool = False) -> None:
        assert self._sock is not None
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError
        rlist, wlist = ([], [self._sock]) if write else ([self._sock], [])
        ready = select.select(rlist, wlist, [], remaining)
        if not any(ready):
            raise TimeoutError

    def _recv(self, deadline: float) -> None:
        assert self._sock is not None
        self._wait(deadline)
        try:
            data = self._sock.recv(1 << 20)
        except BlockingIOError:
            return
        except OSError as err:
            raise self._lost(err) from err
        if not data:
            raise ConnectionResetError("the agent closed the connection")
        self._reader.feed(data)

    def _lost(self, err: BaseException) -> AgentUnavailableError:
        self._synced = False
        return AgentUnavailableError(f"lost the connection to the guest agent {self.target}: "
                                     f"{getattr(err, 'strerror', None) or err}")

    # -- protocol
    def sync(self) -> None:
        """Run the guest-sync-delimited handshake (see the module docstring)."""
        if self._sock is None:
            self._connect()
        # Not the random module: a seeded one (test runners reseed it) would hand two
        # clients of one process the same id, and a stale reply could pass for ours.
        sync_id = secrets.randbits(62) + 1
        request = json.dumps({"execute": "guest-sync-delimited", "arguments": {"id": sync_id}})
        deadline = time.monotonic() + self.sync_timeout
        self._reader.reset()
        try:
            self._send(bytes([SENTINEL]) + request.encode() + b"\n", deadline)
            while not self._reader.next_sync_reply(sync_id):
                self._recv(deadline)
        except TimeoutError as err:
            raise AgentUnavailableError(
                f"guest agent {self.target} is not answering (no guest-sync reply in "
                f"{self.sync_timeout:g}s)",
                hint="the guest may be booting or paused, qemu-ga may not run in it, or "
                     "another client holds the socket",
            ) from err
        except (ConnectionError, ValueError) as err:
            raise self._lost(err) from err
        self._synced = True

    def execute(self, command: str, arguments: dict[str, Any] | None = None, *,
                timeout: float = DEFAULT_TIMEOUT) -> Any:
        reply = self._roundtrip(command, arguments, timeout, expect_reply=True)
        assert reply is not None
        return reply.get("return")

    def execute_no_reply(self, command: str, arguments: dict[str, Any] | None = None, *,
                         timeout: float = 3.0) -> None:
        self._roundtrip(command, arguments, timeout, expect_reply=False)

    def _roundtrip(self, command: str, arguments: dict[str, Any] | None, timeout: float,
                   *, expect_reply: bool) -> dict[str, Any] | None:
        if not self._synced:
            self.sync()
        self._counter += 1
        request_id = f"kvmops-{os.getpid()}-{self._counter}"
        request: dict[str, Any] = {"execute": command, "id": request_id}
        if arguments:
            request["arguments"] = arguments
        deadline = time.monotonic() + timeout
        try:
            self._send(json.dumps(request).encode() + b"\n", deadline)
            while (reply := self._reader.next_reply(request_id)) is None:
                self._recv(deadline)
        except TimeoutError as err:
            self._synced = False  # a late reply may still come: re-sync before the next one
            if not expect_reply:
                return None
            raise AgentTimeoutError(
                f"guest agent {self.target} did not answer '{command}' within {timeout:g}s",
                hint="the guest may be overloaded; the command may still complete in it",
            ) from err
        except ConnectionError as err:
            self._synced = False
            self.close()
            if not expect_reply:
                return None
            raise self._lost(err) from err
        except ValueError as err:
            self._synced = False
            raise AgentUnavailableError(
                f"guest agent {self.target} sent an unreadable reply to '{command}'",
                hint="retry; the channel is re-synchronised on the next command") from err
        if "error" in reply:
            error = reply["error"] if isinstance(reply["error"], dict) else {}
            raise classify_error(self.target, command, error.get("class"),
                                 str(error.get("desc", reply["error"])))
        return reply


# --------------------------------------------------------------------- resolve
def open_agent(vm: str | None = None, socket: str | None = None, tcp: str | None = None,
               uri: str | None = None) -> AgentChannel:
    """The agent channel of a libvirt VM (``vm``, ``uri``) or of a raw ``socket``/``tcp``."""
    given = [x for x in (vm, socket, tcp) if x]
    if len(given) != 1:
        raise ValidationError("name exactly one target: a VM, --socket PATH or --tcp HOST:PORT")
    if socket:
        return SocketAgentChannel(path=socket)
    if tcp:
        return SocketAgentChannel(tcp=tcp)
    assert vm is not None
    from kvmops.agent.libvirt_transport import agent_configured
    from kvmops.host.connection import Host

    host = Host(uri)
    try:
        domain = host.lookup(vm)
        if not agent_configured(domain):
            raise AgentNotConfiguredError(
                f"VM '{vm}' has no guest agent channel in its XML",
                hint="recreate it without --no-agent, or add a <channel type='unix'> with "
                     "target name org.qemu.guest_agent.0")
        if not domain.is_active():
            raise StateError(f"VM '{vm}' is not running: its guest agent cannot answer",
                             actual="shut off", required="running",
                             hint=f"start it with 'kvmops vm start {vm}'")
    except BaseException:
        host.close()
        raise
    return LibvirtAgentChannel(domain, host=host)
