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

from kvmops.host.connection import Host

#: An open libvirt connection; faces only pass it on to service functions.
Connection = Host

__all__ = ["CONNECTIONS", "Connection", "HostConnections", "SharedConnection",
           "connect", "network_names", "open_connection"]


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

    def __init__(self, uri: str | None,
                 opener: Callable[[str | None], Host] | None = None) -> None:
        self.uri = uri
        self._open: Callable[[str | None], Host] = opener or Host
        self._host: Host | None = None
        self._lock = threading.Lock()

    def get(self) -> Connection:
        with self._lock:
            host = self._host
            if host is not None:
                if host.alive():
                    return host
                host.close()
            self._host = self._open(self.uri)
            return self._host

    def close(self) -> None:
        with self._lock:
            if self._host is not None:
                with contextlib.suppress(Exception):
                    self._host.close()
                self._host = None


def _open_remote(uri: str | None) -> Host:
    from kvmops.host.remote import open_remote  # keepalive: a vanished host is noticed

    return open_remote(uri or "")


class HostConnections:
    """The server's shared connections to the other hosts, one per URI (a request that
    names ``?host=``). A host that does not answer within ``deadline`` seconds is
    HostUnavailableError at once: the attempt goes on in its own thread, and a
    connection it opens later is kept for the next request."""

    def __init__(self) -> None:
        self._shared: dict[str, SharedConnection] = {}
        self._lock = threading.Lock()

    def get(self, uri: str, deadline: float, name: str | None = None) -> Connection:
        from kvmops.errors import HostUnavailableError
        from kvmops.services.hosts import gather

        with self._lock:
            shared = self._shared.get(uri)
            if shared is None:
                shared = self._shared[uri] = SharedConnection(uri, _open_remote)
        outcome = gather({uri: shared.get}, deadline)[uri]
        if outcome.value is None:
            raise HostUnavailableError(f"host '{name or uri}' ({uri}) cannot be reached: "
                                       f"{outcome.error}",
                                       hint=f"see 'kvmops host info {name or 'NAME'}'; is "
                                            "its libvirtd up and reachable?")
        return outcome.value

    def drop(self, uri: str) -> None:
        with self._lock:
            shared = self._shared.pop(uri, None)
        if shared is not None:  # never waits for an attempt hanging on a silent host
            threading.Thread(target=shared.close, name="kvmops-host-drop", daemon=True).start()

    def close(self) -> None:
        with self._lock:
            found, self._shared = list(self._shared.values()), {}
        for shared in found:
            shared.close()


#: The process's shared connections to managed hosts other than its own.
CONNECTIONS = HostConnections()


def network_names(conn: Connection) -> list[str]:
    """The libvirt networks a new VM's NIC may join."""
    return conn.network_names()
