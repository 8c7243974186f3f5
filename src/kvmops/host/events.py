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
from typing import Generic, TypeVar

import libvirt

from kvmops.config import settings
from kvmops.errors import HostUnavailableError

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
