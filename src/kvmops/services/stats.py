"""Every VM's statistics of one host, remembering the last snapshot per host.

:func:`host_stats` is what the metrics exporter, the sampler and ``kvmops top`` call:
one bulk statistics call on the host's shared connection (:mod:`kvmops.host.domstats`)
under a deadline. The previous snapshot of the host (by URI) is kept so that a domain
that does not answer in time is reported with its last values (``timed_out``). A host
that cannot be reached is ``up=False`` with the reason, never an exception.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from typing import TYPE_CHECKING

from kvmops.errors import KvmopsError
from kvmops.host import domstats
from kvmops.host.domstats import HostStats
from kvmops.services.caller import Caller
from kvmops.services.session import CONNECTIONS, Connection

if TYPE_CHECKING:
    from kvmops.store.db import Store

__all__ = ["HostStats", "connection_of", "forget", "host_stats", "last"]

_PREVIOUS: dict[str, HostStats] = {}
_LOCK = threading.Lock()


def _down(uri: str, error: str, started: float) -> HostStats:
    return HostStats(host_uri=uri, up=False, error=error,
                     duration_s=time.monotonic() - started, collected_at=time.time())


def connection_of(caller: Caller, host_name: str | None, deadline_s: float,
                  db: str | Store | None = None) -> tuple[str, Connection]:
    """Host ``host_name``'s URI and its shared connection (HostUnavailableError when it
    does not answer within ``deadline_s``)."""
    from kvmops.services import fleet

    uri = fleet.uri_of(caller, host_name, db)
    return uri, CONNECTIONS.get(uri, deadline_s, host_name or fleet.LOCAL)


def host_stats(caller: Caller, host_name: str | None, *, deadline_s: float = 5.0,
               db: str | Store | None = None,
               connection: tuple[str, Connection] | None = None) -> HostStats:
    """Every VM's statistics on host ``host_name`` (None: this machine) within
    ``deadline_s`` seconds; a host that cannot be reached is ``up=False``.
    ``connection`` is the (URI, connection) the caller already has for it.

    The shared connection is checked (a call that takes no domain's lock) when it is
    handed out: when libvirt then answers nothing more within the deadline (a busy
    libvirtd, domains' locks held by starts and stops), the host counts as up and every
    domain of the last snapshot is reported stale (``timed_out``)."""
    started = time.monotonic()
    try:
        uri, conn = connection or connection_of(caller, host_name, deadline_s, db)
    except KvmopsError as err:
        return _down(host_name or "local", err.message, started)
    remaining = max(0.2, deadline_s - (time.monotonic() - started))
    with _LOCK:
        before = _PREVIOUS.get(uri)
    stats = domstats.collect(conn, deadline_s=remaining,
                             previous=domstats.previous_of(before))
    if stats.up:
        with _LOCK:
            _PREVIOUS[uri] = stats
    elif before is not None and domstats.late(stats):  # the connection was just checked
        return dataclasses.replace(
            stats, up=True, error=None, duration_s=time.monotonic() - started,
            domains=tuple(dataclasses.replace(d, timed_out=True) for d in before.domains))
    return stats


def last(uri: str) -> HostStats | None:
    """The last snapshot taken of host ``uri`` (None: none yet)."""
    with _LOCK:
        return _PREVIOUS.get(uri)


def forget(uri: str | None = None) -> None:
    """Drop the remembered snapshots (of one host, or all)."""
    with _LOCK:
        if uri is None:
            _PREVIOUS.clear()
        else:
            _PREVIOUS.pop(uri, None)
