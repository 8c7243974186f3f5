"""PostgreSQL LISTEN/NOTIFY: events of one server instance reach the clients of every
instance on the same database.

A NOTIFY payload must stay below 8000 bytes: an event whose JSON is larger travels
without its bulky fields (a job's result, a long message) and says ``truncated``; a
client reads the whole job with ``GET /api/v1/jobs/{id}``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import queue
import threading
from collections.abc import Callable
from typing import Any

from kvmops.store.db import Store

log = logging.getLogger("kvmops.api")
CHANNEL = "kvmops_events"
MAX_PAYLOAD = 7900  # PostgreSQL refuses 8000 bytes and more
KEPT_WHEN_LARGE = ("id", "kind", "target", "state", "vm", "event", "detail", "time",
                   "percent", "error_kind")

Receiver = Callable[[str, dict[str, Any]], None]


def encode(origin: str, kind: str, data: dict[str, Any]) -> str:
    """The NOTIFY payload of one event, below :data:`MAX_PAYLOAD` bytes."""
    text = json.dumps({"o": origin, "k": kind, "d": data}, default=str)
    if len(text.encode()) <= MAX_PAYLOAD:
        return text
    small = {key: data[key] for key in KEPT_WHEN_LARGE if key in data}
    small["truncated"] = True
    text = json.dumps({"o": origin, "k": kind, "d": small}, default=str)
    if len(text.encode()) > MAX_PAYLOAD:  # a huge target name: only the id is left
        text = json.dumps({"o": origin, "k": kind,
                           "d": {"id": data.get("id"), "truncated": True}}, default=str)
    return text


def decode(payload: str) -> tuple[str, str, dict[str, Any]] | None:
    try:
        message = json.loads(payload)
        origin, kind, data = message["o"], message["k"], message["d"]
    except (ValueError, KeyError, TypeError):
        return None
    if not isinstance(origin, str) or not isinstance(kind, str) or not isinstance(data, dict):
        return None
    return origin, kind, data


class EventChannel:
    """Sends this instance's events with NOTIFY (one sender thread: a publisher never
    waits for the database) and hands every other instance's events to ``receive``
    (one listener thread on its own connection, reconnecting after a failure)."""

    def __init__(self, store: Store, origin: str, receive: Receiver) -> None:
        self.store = store
        self.origin = origin
        self.receive = receive
        self._out: queue.Queue[str | None] = queue.Queue(10_000)
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.listening = threading.Event()

    def start(self) -> None:
        for target, name in ((self._send_loop, "kvmops-notify"),
                             (self._listen_loop, "kvmops-listen")):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def send(self, kind: str, data: dict[str, Any]) -> None:
        try:
            self._out.put_nowait(encode(self.origin, kind, data))
        except queue.Full:
            log.warning("event relay: queue full, an event reaches only this server's clients")

    def _send_loop(self) -> None:
        from sqlalchemy import text

        while True:
            payload = self._out.get()
            if payload is None:
                return
            try:
                with self.store.engine.connect() as conn:
                    conn.execute(text("SELECT pg_notify(:channel, :payload)"),
                                 {"channel": CHANNEL, "payload": payload})
                    conn.commit()
            except Exception as err:  # the database is away: local clients still got it
                log.warning("event relay: NOTIFY failed: %s", err)

    def _listen_loop(self) -> None:
        while not self._stop.is_set():
            conn: Any = None
            try:
                raw = self.store.engine.raw_connection()
                conn = raw.driver_connection
                raw.detach()  # this connection is ours for good, not the pool's
                conn.autocommit = True
                conn.execute(f"LISTEN {CHANNEL}")
                self.listening.set()
                while not self._stop.is_set():
                    for note in conn.notifies(timeout=1.0):
                        message = decode(note.payload)
                        if message is not None and message[0] != self.origin:
                            self.receive(message[1], message[2])
            except Exception as err:
                self.listening.clear()
                if not self._stop.is_set():
                    log.warning("event relay: LISTEN failed (%s); again in 2 s", err)
                    self._stop.wait(2.0)
            finally:
                if conn is not None:
                    try:
                        conn.close()
                    except Exception:  # already broken
                        log.debug("event relay: closing the listener failed", exc_info=True)

    def stop(self) -> None:
        self._stop.set()
        with contextlib.suppress(queue.Full):
            self._out.put_nowait(None)
        for thread in self._threads:
            thread.join(timeout=5)
