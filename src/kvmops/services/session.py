"""The libvirt connection as the faces see it.

The CLI, the API and the web UI never import ``kvmops.host``: they open, share and
watch a connection through this module and hand the opaque :data:`Connection` to the
use cases in the other service modules, which are the only code that calls it.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Protocol

from kvmops.host.connection import Host

#: An open libvirt connection; faces only pass it on to service functions.
Connection = Host

__all__ = ["Connection", "EventWatch", "SharedConnection", "connect", "network_names",
           "open_connection", "watch_lifecycle"]


def open_connection(uri: str | None) -> Connection:
    """A connection of its own (for a job that may outlive a reconnect of a shared one);
    the caller closes it (it is a context manager)."""
    return Host(uri)


@contextmanager
def connect(uri: str | None) -> Iterator[Connection]:
    """A connection for the length of one command."""
    host = Host(uri)
    try:
        yield host
    finally:
        host.close()


class SharedConnection:
    """One connection shared by a server's threads (libvirt connections are thread-safe),
    opened again when libvirtd went away since the last use."""

    def __init__(self, uri: str | None) -> None:
        self.uri = uri
        self._host: Host | None = None
        self._lock = threading.Lock()

    def get(self) -> Connection:
        with self._lock:
            host = self._host
            if host is not None:
                if host.alive():
                    return host
                host.close()
            self._host = Host(self.uri)
            return self._host

    def close(self) -> None:
        with self._lock:
            if self._host is not None:
                with contextlib.suppress(Exception):
                    self._host.close()
                self._host = None


class EventWatch(Protocol):
    """A running event subscription: ``error`` says why it is down, if it is."""

    error: str | None

    def start(self) -> bool: ...

    def stop(self) -> None: ...


def watch_lifecycle(uri: str | None, changed: Callable[[str, str, str, int], None],
                    connection: Callable[[bool], None]) -> EventWatch:
    """A subscription to libvirt's life cycle events that subscribes again by itself after
    a libvirtd restart (``connection(False)`` / ``connection(True)`` tell the caller)."""
    from kvmops.host.events import LifecycleWatch  # only servers watch: keep the CLI light

    return LifecycleWatch(uri, changed, connection)


def network_names(conn: Connection) -> list[str]:
    """The libvirt networks a new VM's NIC may join."""
    return conn.network_names()
