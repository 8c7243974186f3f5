"""The event hub behind ``GET /api/v1/events`` (Server-Sent Events).

Publishers (job runner threads, the libvirt event loop thread) call
:meth:`EventHub.publish` from any thread; each SSE client owns an asyncio
queue filled through its loop's ``call_soon_threadsafe``. A slow client loses
its oldest events rather than blocking anyone.

With several servers on one PostgreSQL database, :attr:`EventHub.relay` sends each
event to the other instances too (LISTEN/NOTIFY, :mod:`kvmops.services.database`), and
their events come in through :meth:`EventHub.deliver`: an SSE client of any instance
sees the events of all.
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
        #: Sends an event to the other server instances (None: this server is alone).
        self.relay: Callable[[str, dict[str, Any]], None] | None = None

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
        """Send one event to every client (callable from any thread), of every
        instance when there are several."""
        data = {"time": datetime.now(UTC).isoformat(), **data}
        self.deliver(kind, data)
        relay = self.relay
        if relay is not None:
            relay(kind, data)

    def deliver(self, kind: str, data: dict[str, Any]) -> None:
        """Send one event to this server's clients only (one another instance raised)."""
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
