"""One libvirt life cycle subscription per known host, feeding one event stream.

The server watches the local libvirtd and every host added with ``host add``
(:class:`HostWatches`): a watch starts when the server starts or the host is added, and
stops when it is removed. A host that is down is asked again with a backoff (1 s,
doubling up to 30 s); its state (``subscribed`` or ``down: REASON``) is shown by
``GET /api/v1/hosts`` and ``host info`` as ``events``. Every event names its host. A
watch that loses its host, or gets it back, tells the lists' memory
(:mod:`kvmops.services.reachability`): the next list answers at once for a lost host and
includes a host that is back.

Hosts added or removed elsewhere (the CLI on the same database, another server on a
shared PostgreSQL) are picked up by a re-read of the host table every
:attr:`HostWatches.resync_s` seconds; the API's add/remove call :meth:`HostWatches.sync`
at once.

``kvmops events --lifecycle`` uses :func:`follow_lifecycle`: the same watches for the
length of one command, their events in one queue.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol

from kvmops.records import Record
from kvmops.services.caller import Caller

if TYPE_CHECKING:
    from kvmops.store.db import Store

LOCAL = "local"
#: libvirt's life cycle events by name, and a followed host lost or back.
LIFECYCLE_NAMES = ("defined", "undefined", "started", "suspended", "resumed", "stopped",
                   "shutdown", "pmsuspended", "crashed", "down", "subscribed")
#: A watched host that is down is asked again after 1, 2, 4 ... at most this many seconds.
RETRY_MAX_S = 30.0
RESYNC_S = 15.0

#: host, VM name, VM UUID, event (defined, started, stopped ...), libvirt's detail code
HostEventFn = Callable[[str, str, str, str, int], None]
#: host, subscribed?, why not (None when subscribed)
HostStateFn = Callable[[str, bool, "str | None"], None]


class Watch(Protocol):
    """What :class:`HostWatches` needs of a subscription (kvmops.host.events.LifecycleWatch)."""

    error: str | None

    @property
    def active(self) -> bool: ...

    def start(self, *, background: bool = False) -> bool: ...

    def stop(self) -> None: ...


WatchFactory = Callable[[str, Callable[[str, str, str, int], None], Callable[[bool], None]],
                        Watch]


def _lifecycle_watch(uri: str, on_event: Callable[[str, str, str, int], None],
                     on_connection: Callable[[bool], None]) -> Watch:
    from kvmops.host.events import LifecycleWatch  # only servers and `events` watch

    watch = LifecycleWatch(uri, on_event, on_connection)
    watch.RETRY_MAX_S = RETRY_MAX_S
    return watch


def _known_from(db: str | Store | None, local_uri: str | None
                ) -> Callable[[], dict[str, str]]:
    def known() -> dict[str, str]:
        from kvmops.config import settings
        from kvmops.services.hosts import _with_store
        from kvmops.store import hosts as store_hosts

        found = {LOCAL: local_uri or settings().uri}
        for row in _with_store(db, store_hosts.hosts):
            found[row.name] = row.uri
        return found

    return known


@dataclass
class _Entry:
    uri: str
    watch: Watch | None  # None: the same daemon as another name (watched once)
    same_as: str | None = None


class HostWatches:
    """The life cycle watches of every known host (name -> URI from ``known()``)."""

    def __init__(self, on_event: HostEventFn, on_state: HostStateFn | None = None, *,
                 known: Callable[[], dict[str, str]] | None = None,
                 store: Store | None = None, local_uri: str | None = None,
                 factory: WatchFactory | None = None, resync_s: float = RESYNC_S) -> None:
        self.on_event = on_event
        self.on_state = on_state
        self.known = known or _known_from(store, local_uri)
        self.factory: WatchFactory = factory or _lifecycle_watch
        self.resync_s = resync_s
        self._entries: dict[str, _Entry] = {}
        self._lock = threading.RLock()
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ life cycle
    def start(self) -> None:
        """Watch every known host now (the local one waits for its first attempt, the
        others subscribe in the background) and re-read the host table periodically."""
        self.sync()
        if self.resync_s > 0 and self._thread is None:
            self._thread = threading.Thread(target=self._resync_loop, daemon=True,
                                            name="kvmops-host-events-sync")
            self._thread.start()

    def _resync_loop(self) -> None:
        while not self._stopped.wait(self.resync_s):
            with contextlib.suppress(Exception):  # a database hiccup: next round
                self.sync()

    def sync(self) -> None:
        """Start watches of new hosts, stop those of removed ones (or moved: new URI)."""
        if self._stopped.is_set():
            return
        known = self.known()
        with self._lock:
            for name in [n for n, e in self._entries.items() if known.get(n) != e.uri]:
                self._stop(name)
            by_uri = {e.uri: n for n, e in self._entries.items() if e.watch is not None}
            # the local host first: it is the one watched when two names share a daemon
            for name in sorted(known, key=lambda n: (n != LOCAL, n)):
                uri = known[name]
                if name in self._entries:
                    continue
                if uri in by_uri:
                    self._entries[name] = _Entry(uri, None, same_as=by_uri[uri])
                    continue
                watch = self.factory(uri, self._event_fn(name), self._state_fn(name))
                self._entries[name] = _Entry(uri, watch)
                by_uri[uri] = name
                if name == LOCAL:
                    if not watch.start() and self.on_state is not None:
                        self.on_state(name, False, watch.error)
                else:
                    watch.start(background=True)

    def _stop(self, name: str) -> None:
        entry = self._entries.pop(name)
        if entry.watch is not None:
            entry.watch.stop()
            # names that shared this daemon get it watched again by the next sync
            for other in [n for n, e in self._entries.items() if e.same_as == name]:
                del self._entries[other]

    def stop(self) -> None:
        self._stopped.set()
        with self._lock:
            for name in list(self._entries):
                if name in self._entries:
                    self._stop(name)

    # ------------------------------------------------------------------ callbacks
    def _event_fn(self, host: str) -> Callable[[str, str, str, int], None]:
        def fn(vm: str, uuid: str, kind: str, detail: int) -> None:
            self.on_event(host, vm, uuid, kind, detail)

        return fn

    def _state_fn(self, host: str) -> Callable[[bool], None]:
        def fn(up: bool) -> None:
            from kvmops.services import reachability

            entry = self._entries.get(host)
            error = entry.watch.error if entry is not None and entry.watch else None
            if entry is not None:  # the lists answer at once for a host known lost
                if up:
                    reachability.REACHABILITY.answered(entry.uri)
                else:
                    reachability.REACHABILITY.failed(entry.uri, error or "events lost")
            if self.on_state is not None:
                self.on_state(host, up, None if up else error)

        return fn

    # ------------------------------------------------------------------ state
    def state(self, name: str) -> str | None:
        """``subscribed``, ``down: REASON``, or None (not watched: unknown host, or a
        server without events)."""
        with self._lock:
            entry = self._entries.get(name)
            if entry is not None and entry.watch is None and entry.same_as is not None:
                entry = self._entries.get(entry.same_as)
            if entry is None or entry.watch is None:
                return None
            watch = entry.watch
        if watch.active:
            return "subscribed"
        return f"down: {(watch.error or 'not subscribed').splitlines()[0]}"

    def states(self) -> dict[str, str | None]:
        with self._lock:
            names = list(self._entries)
        return {name: self.state(name) for name in names}

    def uri(self, name: str) -> str | None:
        """Host ``name``'s URI (no lock: called from the event loop thread)."""
        entry = self._entries.get(name)
        return None if entry is None else entry.uri

    def subscribed_uris(self) -> set[str]:
        """The URIs of the daemons watched right now (for the scale-out de-duplication)."""
        with self._lock:
            return {e.uri for e in self._entries.values()
                    if e.watch is not None and e.watch.active}


# --------------------------------------------------------------------------- CLI follow
@dataclass
class HostEvent(Record):
    """One event of ``kvmops events --lifecycle``: a VM's life cycle on a host, or the
    host's subscription lost (``event: down``) / back (``event: subscribed``)."""

    host: str
    event: str
    vm: str | None = None
    uuid: str | None = None
    detail: int | None = None
    error: str | None = None
    time: datetime = field(default_factory=lambda: datetime.now(UTC))

    def to_dict(self) -> dict[str, Any]:
        out = {"time": self.time.isoformat(), "host": self.host, "event": self.event}
        for key in ("vm", "uuid", "detail", "error"):
            value = getattr(self, key)
            if value is not None:
                out[key] = value
        return out


@contextlib.contextmanager
def follow_lifecycle(caller: Caller, host: str | None = None, db: str | Store | None = None,
                     *, local_uri: str | None = None, factory: WatchFactory | None = None
                     ) -> Iterator[tuple[Callable[[float | None], HostEvent | None],
                                         list[str]]]:
    """Watch the life cycle events of ``host`` (None: the local one, at ``local_uri`` when
    given; ``all``: every known host) for the length of the block; it gets a function
    returning the next event (or None when ``timeout`` seconds pass first) and the names
    of the hosts watched."""
    from kvmops.host.events import EventQueue
    from kvmops.services import hosts as host_service

    if host == "all":
        names = _known_from(db, local_uri)()
    elif host is None and local_uri is not None:
        names = {LOCAL: local_uri}
    else:
        name = host or LOCAL
        host_service.validate_name(name)
        names = {name: host_service.uri_of(caller, name, db)}
    queue: EventQueue[HostEvent] = EventQueue()

    def event(name: str, vm: str, uuid: str, kind: str, detail: int) -> None:
        queue.put(HostEvent(host=name, event=kind, vm=vm, uuid=uuid, detail=detail))

    def state(name: str, up: bool, error: str | None) -> None:
        queue.put(HostEvent(host=name, event="subscribed" if up else "down", error=error))

    watches = HostWatches(event, state, known=lambda: names, factory=factory, resync_s=0)
    watches.sync()
    try:
        yield queue.get, list(names)
    finally:
        watches.stop()
