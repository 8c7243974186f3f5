"""QMP on a socket of a QEMU started by hand (``-qmp unix:PATH,server=on,wait=off``
or ``-qmp tcp:HOST:PORT,server=on,wait=off``), through the QEMU project's own
``qemu.qmp`` library.

``qemu.qmp`` is asyncio based; this channel runs it on a private event loop
that only turns while a call of ours waits (a command, or the next event). The
client's default event listener receives every event from the moment of
connection, so events arriving during a command are kept for ``events()``.

Only this module imports ``qemu.qmp``.

A QEMU monitor socket serves one client at a time: a second client is accepted
by the kernel but gets no greeting until the first one leaves. Connecting
therefore has a deadline, and running out of it is reported as "busy".
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from qemu.qmp import ConnectError, ExecInterruptedError, ExecuteError, QMPClient, QMPError, Runstate

from kvmops.errors import ChannelError, OperationTimeoutError
from kvmops.monitor.channel import MonitorChannel, MonitorEvent, qmp_error

T = TypeVar("T")

# qemu.qmp logs connection trouble itself; we report it as one error line instead.
logging.getLogger("qemu.qmp").addHandler(logging.NullHandler())
logging.getLogger("qemu.qmp").propagate = False

Address = Path | tuple[str, int]


def describe(address: Address) -> str:
    if isinstance(address, tuple):
        return f"QMP TCP monitor {address[0]}:{address[1]}"
    return f"QMP socket {address}"


class SocketMonitorChannel(MonitorChannel):
    """QMP over a unix socket path or a ``(host, port)`` TCP address."""

    def __init__(self, address: Address, *, connect_timeout: float = 10.0,
                 command_timeout: float | None = None) -> None:
        self.address = address
        self.target = describe(address)
        self.command_timeout = command_timeout
        self._loop = asyncio.new_event_loop()
        self._client: QMPClient = self._loop.run_until_complete(self._make_client())
        self._closed = False
        try:
            self._connect(connect_timeout)
        except BaseException:
            self._loop.close()
            self._closed = True
            raise

    @staticmethod
    async def _make_client() -> QMPClient:
        return QMPClient("kvmops")

    def _run(self, awaitable: Awaitable[T], timeout: float | None) -> T:
        task = self._loop.create_task(asyncio.wait_for(awaitable, timeout))
        try:
            return self._loop.run_until_complete(task)
        except BaseException:
            # Ctrl-C lands here while the task waits: cancel it, so nothing is left pending.
            if not task.done():
                task.cancel()
                with contextlib.suppress(BaseException):
                    self._loop.run_until_complete(task)
            raise

    # -------------------------------------------------------------- connect
    def _connect(self, timeout: float) -> None:
        address = self.address
        if isinstance(address, Path):
            if not address.exists():
                raise ChannelError(
                    f"QMP socket {address} does not exist",
                    hint="is QEMU running with -qmp unix:PATH,server=on,wait=off? check the path",
                )
            if not address.is_socket():
                raise ChannelError(f"{address} is not a socket",
                                   hint="give the path of QEMU's -qmp unix socket")
            target: str | tuple[str, int] = str(address)
        else:
            target = address
        try:
            self._run(self._client.connect(target), timeout)
        except TimeoutError:
            raise ChannelError(
                f"{self.target} accepted the connection but sent no QMP greeting "
                f"within {timeout:g}s",
                hint="QEMU serves one client per monitor socket: another client is probably "
                     "connected; give QEMU a second -qmp socket or close the other client",
            ) from None
        except ConnectError as err:
            raise self._connect_error(err) from err

    def _connect_error(self, err: ConnectError) -> ChannelError:
        cause = err.exc
        if isinstance(cause, ConnectionRefusedError):
            return ChannelError(f"{self.target} refused the connection",
                                hint="QEMU is not listening there (has it exited?)")
        if isinstance(cause, FileNotFoundError):
            return ChannelError(f"{self.target} does not exist",
                                hint="is QEMU running with -qmp unix:PATH,server=on,wait=off?")
        if isinstance(cause, PermissionError):
            return ChannelError(f"no permission to connect to {self.target}",
                                hint="run as the user that started QEMU, or as root")
        if isinstance(cause, EOFError | ConnectionResetError):
            return ChannelError(f"{self.target} closed the connection during the QMP greeting",
                                hint="another client may hold the monitor, or QEMU is exiting")
        if isinstance(cause, OSError):
            return ChannelError(f"cannot connect to {self.target}: "
                                f"{cause.strerror or cause}")
        return ChannelError(f"{self.target} does not speak QMP: {err}",
                            hint="is it a -qmp (control) monitor, not an HMP or agent socket?")

    # -------------------------------------------------------------- commands
    def _closed_error(self) -> ChannelError:
        return ChannelError(f"the connection to {self.target} was closed (has QEMU exited?)")

    def execute(self, command: str, arguments: Mapping[str, Any] | None = None) -> Any:
        if self._closed:
            raise self._closed_error()
        try:
            return self._run(self._client.execute(command, arguments), self.command_timeout)
        except ExecuteError as err:
            raise qmp_error(self.target, command, arguments, err.error_class,
                            err.error.error.desc) from None
        except TimeoutError:
            raise OperationTimeoutError(
                f"QMP command '{command}' got no reply from {self.target} within "
                f"{self.command_timeout:g}s") from None
        except (ExecInterruptedError, QMPError, EOFError, OSError) as err:
            raise self._closed_error() from err

    def _hmp(self, command_line: str) -> str:
        return str(self.execute("human-monitor-command", {"command-line": command_line}))

    # -------------------------------------------------------------- events
    def listen(self) -> None:
        """Nothing to do: the client's default listener buffers events since connect."""

    async def _wait_gone(self) -> None:
        while self._client.runstate == Runstate.RUNNING:
            await self._client.runstate_changed()

    async def _next(self, timeout: float | None) -> MonitorEvent | None:
        events = self._client.events
        if not events.empty():
            return MonitorEvent.from_qmp(await events.get())
        get = asyncio.ensure_future(events.get())
        gone = asyncio.ensure_future(self._wait_gone())
        try:
            done, _pending = await asyncio.wait({get, gone}, timeout=timeout,
                                                return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (get, gone):
                if not task.done():
                    task.cancel()
            await asyncio.gather(get, gone, return_exceptions=True)
        if get.done() and not get.cancelled() and get.exception() is None:
            return MonitorEvent.from_qmp(get.result())
        if gone in done:
            raise self._closed_error()
        return None

    def _next_event(self, timeout: float | None) -> MonitorEvent | None:
        if self._closed:
            raise self._closed_error()
        return self._run(self._next(timeout), None)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(BaseException):
            self._run(self._client.disconnect(), 5)
        with contextlib.suppress(BaseException):
            self._loop.close()
