"""libvirt's event loop, run once per process in a daemon thread.

libvirt delivers events (domain life cycle, QEMU monitor events, device
removal ...) only to connections opened *after* an event implementation was
registered, and only while something runs that loop. :func:`ensure_event_loop`
does both, once, thread-safely; :func:`open_event_connection` opens a
connection that receives events. Each consumer gets its own
:class:`EventQueue` (a thread-safe queue filled from the loop thread), so
several subscriptions never steal each other's events.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Callable
from typing import Generic, TypeVar

import libvirt

from kvmops.config import settings
from kvmops.errors import HostUnavailableError
from kvmops.host import connection as _connection  # noqa: F401  (libvirt's error printer off)

T = TypeVar("T")

_lock = threading.Lock()
_thread: threading.Thread | None = None


def _run_loop() -> None:
    while True:
        try:
            libvirt.virEventRunDefaultImpl()
        except libvirt.libvirtError:  # pragma: no cover - the loop itself failing
            continue


def ensure_event_loop() -> None:
    """Register libvirt's default event implementation and run it (idempotent)."""
    global _thread
    with _lock:
        if _thread is not None:
            return
        libvirt.virEventRegisterDefaultImpl()
        thread = threading.Thread(target=_run_loop, name="kvmops-libvirt-events", daemon=True)
        thread.start()
        _thread = thread


def event_loop_running() -> bool:
    return _thread is not None and _thread.is_alive()


def open_event_connection(uri: str | None = None) -> libvirt.virConnect:
    """A new libvirt connection that receives events (the loop is started first).

    The caller owns it and closes it after deregistering its callbacks.
    """
    ensure_event_loop()
    target = uri or settings().uri
    try:
        conn: libvirt.virConnect = libvirt.open(target)
    except libvirt.libvirtError as err:
        raise HostUnavailableError(
            f"cannot connect to libvirt at {target} for events: "
            f"{(err.get_error_message() or str(err)).strip()}",
            hint="is libvirtd running?",
        ) from err
    # With an event loop, keepalive notices a dead libvirtd instead of waiting forever.
    with contextlib.suppress(libvirt.libvirtError):
        conn.setKeepAlive(5, 3)
    return conn


class EventQueue(Generic[T]):
    """One consumer's queue: the loop thread puts, the consumer gets with a timeout."""

    def __init__(self) -> None:
        self._queue: queue.Queue[T] = queue.Queue()

    def put(self, item: T) -> None:
        self._queue.put(item)

    def get(self, timeout: float | None) -> T | None:
        """The next item, or ``None`` when ``timeout`` seconds pass first."""
        try:
            if timeout is None:
                # A finite wait in a loop keeps Ctrl-C responsive in the main thread.
                while True:
                    try:
                        return self._queue.get(timeout=0.5)
                    except queue.Empty:
                        continue
            return self._queue.get(timeout=max(timeout, 0.0))
        except queue.Empty:
            return None

    def empty(self) -> bool:
        return self._queue.empty()


# ------------------------------------------------------------------ life cycle
LIFECYCLE_EVENTS = {0: "defined", 1: "undefined", 2: "started", 3: "suspended", 4: "resumed",
                    5: "stopped", 6: "shutdown", 7: "pmsuspended", 8: "crashed"}
LifecycleCallback = Callable[[str, str, str, int], None]  # name, uuid, event, detail


class LifecycleWatch:
    """Domain life cycle events of one libvirt URI, subscribed again by itself after
    libvirtd restarts (or comes up after us).

    ``on_event(name, uuid, kind, detail)`` runs in the event loop thread;
    ``on_connection(up)`` is told when the subscription is lost and when it is back.
    """

    RETRY_S = 1.0
    #: Retries back off from RETRY_S, doubling up to this (a host that is down for long
    #: is asked every RETRY_MAX_S seconds, not every second).
    RETRY_MAX_S = 1.0

    def __init__(self, uri: str | None, on_event: LifecycleCallback,
                 on_connection: Callable[[bool], None] | None = None) -> None:
        self.uri = uri
        self.on_event = on_event
        self.on_connection = on_connection
        self._conn: libvirt.virConnect | None = None
        self._callback: int | None = None
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._reconnecting = False
        self.error: str | None = None

    @property
    def active(self) -> bool:
        return self._conn is not None

    def start(self, *, background: bool = False) -> bool:
        """Subscribe; when libvirtd is not reachable, keep trying in the background.
        ``background``: do not wait for the first attempt either (a remote host that does
        not answer must not hold up whoever starts the watch)."""
        if background:
            self.error = "subscribing"
            self._reconnect_later(first=0.0)
            return False
        if self._subscribe():
            return True
        self._reconnect_later()
        return False

    def _subscribe(self) -> bool:
        try:
            conn = open_event_connection(self.uri)
            conn.registerCloseCallback(self._closed, None)
            callback = conn.domainEventRegisterAny(
                None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, self._on_lifecycle, None)
        except (HostUnavailableError, libvirt.libvirtError) as err:
            self.error = str(err)
            return False
        with self._lock:
            if not self._stopped.is_set():
                self._conn, self._callback, self.error = conn, callback, None
                return True
        # stopped while the attempt was under way: nobody wants this subscription
        with contextlib.suppress(libvirt.libvirtError):
            conn.unregisterCloseCallback()
            conn.domainEventDeregisterAny(callback)
        with contextlib.suppress(libvirt.libvirtError):
            conn.close()
        return False

    def _on_lifecycle(self, _conn: libvirt.virConnect, dom: libvirt.virDomain, event: int,
                      detail: int, _opaque: object) -> None:
        try:
            self.on_event(dom.name(), dom.UUIDString(), LIFECYCLE_EVENTS.get(event, str(event)),
                          detail)
        except Exception:
            return

    def _closed(self, _conn: libvirt.virConnect, _reason: int, _opaque: object) -> None:
        with self._lock:
            self._conn = self._callback = None
            self.error = "connection to libvirtd lost"
        if self.on_connection is not None:
            with contextlib.suppress(Exception):
                self.on_connection(False)
        self._reconnect_later()

    def _reconnect_later(self, first: float | None = None) -> None:
        with self._lock:
            if self._reconnecting or self._stopped.is_set():
                return
            self._reconnecting = True
        threading.Thread(target=self._reconnect, args=(first,),
                         name="kvmops-events-reconnect", daemon=True).start()

    def _reconnect(self, first: float | None = None) -> None:
        delay = self.RETRY_S if first is None else first
        try:
            while not self._stopped.wait(delay):
                delay = min(max(delay, self.RETRY_S) * 2, max(self.RETRY_MAX_S, self.RETRY_S))
                if self._subscribe():
                    if self.on_connection is not None:
                        with contextlib.suppress(Exception):
                            self.on_connection(True)
                    return
        finally:
            with self._lock:
                self._reconnecting = False

    def stop(self) -> None:
        self._stopped.set()
        with self._lock:
            conn, callback, self._conn, self._callback = self._conn, self._callback, None, None
        if conn is None:
            return
        with contextlib.suppress(libvirt.libvirtError):
            conn.unregisterCloseCallback()
        with contextlib.suppress(libvirt.libvirtError):
            if callback is not None:
                conn.domainEventDeregisterAny(callback)
        with contextlib.suppress(libvirt.libvirtError):
            conn.close()
