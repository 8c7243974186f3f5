"""Recent events per VM for the VM page: the event hub's domain and job events,
kept in memory (the last few per VM) while the server runs."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections import deque
from typing import Any

from kvmops.api.events import EventHub

PER_VM = 30


class EventRecorder:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._events: dict[str, deque[dict[str, Any]]] = {}
        self._task: asyncio.Task[None] | None = None

    def add(self, kind: str, data: dict[str, Any]) -> None:
        vm = data.get("vm") if kind == "domain" else data.get("target")
        if not isinstance(vm, str):
            return
        if kind == "job" and "state" not in data:
            return  # progress ticks are not events worth listing
        entry = {**{k: v for k, v in data.items() if k != "result"}, "source": kind}
        with self._lock:
            self._events.setdefault(vm, deque(maxlen=PER_VM)).append(entry)

    def recent(self, vm: str) -> list[dict[str, Any]]:
        with self._lock:
            return list(reversed(self._events.get(vm, ())))

    def start(self, hub: EventHub) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(hub))

    async def _run(self, hub: EventHub) -> None:
        sub = hub.subscribe()
        try:
            while True:
                item = await sub.queue.get()
                if item is None:
                    return
                _id, kind, data = item
                self.add(kind, data)
        finally:
            hub.unsubscribe(sub)

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
