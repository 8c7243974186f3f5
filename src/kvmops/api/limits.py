"""Limits on concurrent long requests (guest agent calls, QMP, waits for a guest).

Each holds a worker thread for as long as the guest takes: without a limit, one
operator's sixty ``guest exec sleep 15`` would take every thread of the server.
A user may hold ``per_user`` such requests at once, everybody together ``total``;
beyond that the request is refused at once with 429 and ``Retry-After``.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

from kvmops.errors import TooManyRequestsError


class SlotLimiter:
    def __init__(self, per_user: int = 4, total: int = 16) -> None:
        self.per_user = per_user
        self.total = total
        self._held: dict[str, int] = {}
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def hold(self, user: str) -> Iterator[None]:
        with self._lock:
            mine = self._held.get(user, 0)
            if mine >= self.per_user:
                raise TooManyRequestsError(
                    f"user '{user}' already has {mine} long requests running (limit "
                    f"{self.per_user})", hint="wait for one to finish, or run long guest "
                                              "commands in the background (a job)")
            if sum(self._held.values()) >= self.total:
                raise TooManyRequestsError(
                    f"the server is running {self.total} long requests (its limit)",
                    hint="retry in a moment")
            self._held[user] = mine + 1
        try:
            yield
        finally:
            with self._lock:
                left = self._held.get(user, 1) - 1
                if left:
                    self._held[user] = left
                else:
                    self._held.pop(user, None)

    def held(self) -> int:
        with self._lock:
            return sum(self._held.values())
