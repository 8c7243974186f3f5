"""The event hub behind ``GET /api/v1/events`` (Server-Sent Events).

Publishers (job runner threads, the libvirt event loop thread) call
:meth:`EventHub.publish` from any thread; each SSE client owns an asyncio
queue filled through its loop's ``call_soon_threadsafe``. A slow client loses
its oldest events rather than blocking anyone.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

log = logging.getLogger("kvmops.api")
QUEUE_SIZE = 1000
KEEPALIVE_S = 15.0


@dataclass(eq=False)
class Subscriber:
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue[tuple[int, str, dict[str, Any]] | None] = field(
        default_factory=lambda: asyncio.Queue(QUEUE_SIZE))

    def offer(self, item: tuple[int, str, dict[str, Any]] | None) -> None:
        if self.queue.full():
            with contextlib.suppress(asyncio.QueueEmpty):
                self.queue.get_nowait()
        self.queue.put_nowait(item)


class EventHub:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._subs: set[Subscriber] = set()
        self._ids = itertools.count(1)
        self.closed = False

    def subscribe(self) -> Subscriber:
        sub = Subscriber(asyncio.get_running_loop())
        with self._lock:
            self._subs.add(sub)
        return sub

    def unsubscribe(self, sub: Subscriber) -> None:
        with self._lock:
            self._subs.discard(sub)

    @property
    def subscribers(self) -> int:
        with self._lock:
            return len(self._subs)

    def publish(self, kind: str, data: dict[str, Any]) -> None:
        """Send one event to every client (callable from any thread)."""
        item = (next(self._ids), kind, {"time": datetime.now(UTC).isoformat(), **data})
        with self._lock:
            subs = list(self._subs)
        for sub in subs:
            with contextlib.suppress(RuntimeError):  # loop closed
                sub.loop.call_soon_threadsafe(sub.offer, item)

    def close(self) -> None:
        """End every stream (server shutdown)."""
        self.closed = True
        with self._lock:
            subs = list(self._subs)
        for sub in subs:
            with contextlib.suppress(RuntimeError):
                sub.loop.call_soon_threadsafe(sub.offer, None)

    async def stream(self, accept: Callable[[str, dict[str, Any]], bool] | None = None
                     ) -> AsyncIterator[str]:
        """SSE text for one client: ``event: job|domain``, ``id``, ``data: JSON``."""
        sub = self.subscribe()
        try:
            yield "retry: 3000\n: connected\n\n"
            while not self.closed:
                try:
                    item = await asyncio.wait_for(sub.queue.get(), timeout=KEEPALIVE_S)
                except TimeoutError:
                    yield ": keepalive\n\n"
                    continue
                if item is None:
                    break
                event_id, kind, data = item
                if accept is not None and not accept(kind, data):
                    continue
                yield f"id: {event_id}\nevent: {kind}\ndata: {json.dumps(data, default=str)}\n\n"
        finally:
            self.unsubscribe(sub)


# ------------------------------------------------------------------ libvirt
_LIFECYCLE = {0: "defined", 1: "undefined", 2: "started", 3: "suspended", 4: "resumed",
              5: "stopped", 6: "shutdown", 7: "pmsuspended", 8: "crashed"}


class DomainEvents:
    """libvirt domain life cycle events into the hub (one connection, the default loop)."""

    def __init__(self, hub: EventHub, uri: str | None,
                 on_change: Callable[[str, str], None] | None = None) -> None:
        self.hub = hub
        self.uri = uri
        self.on_change = on_change
        self._conn: Any = None
        self._callback: int | None = None
        self.error: str | None = None

    def start(self) -> bool:
        import libvirt

        try:
            conn = _event_connection(self.uri)
            self._callback = conn.domainEventRegisterAny(
                None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, self._on_lifecycle, None)
        except Exception as err:  # events are optional: the API works without them
            self.error = str(err)
            log.warning("libvirt life cycle events unavailable: %s", err)
            return False
        self._conn = conn
        return True

    def _on_lifecycle(self, _conn: Any, dom: Any, event: int, detail: int, _opaque: Any
                      ) -> None:
        try:
            name = dom.name()
            kind = _LIFECYCLE.get(event, str(event))
            if self.on_change is not None:
                self.on_change(dom.UUIDString(), kind)
            self.hub.publish("domain", {"vm": name, "event": kind, "detail": detail})
        except Exception as err:  # never let an exception into libvirt's loop
            log.warning("dropping a libvirt event: %s", err)

    @property
    def active(self) -> bool:
        return self._conn is not None

    def stop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        with contextlib.suppress(Exception):
            if self._callback is not None:
                conn.domainEventDeregisterAny(self._callback)
        with contextlib.suppress(Exception):
            conn.close()


_fallback_lock = threading.Lock()
_fallback_started = False


def _event_connection(uri: str | None) -> Any:
    """Reuse kvmops.host.events when present; else run libvirt's default loop ourselves."""
    try:
        from kvmops.host import events as host_events
    except ImportError:
        host_events = None  # type: ignore[assignment]
    if host_events is not None:
        return host_events.open_event_connection(uri)
    import libvirt

    from kvmops.config import settings

    global _fallback_started
    with _fallback_lock:
        if not _fallback_started:
            libvirt.virEventRegisterDefaultImpl()

            def loop() -> None:
                while True:
                    libvirt.virEventRunDefaultImpl()

            threading.Thread(target=loop, name="kvmops-api-libvirt-events", daemon=True).start()
            _fallback_started = True
    conn = libvirt.open(uri or settings().uri)
    conn.setKeepAlive(5, 3)
    return conn
