"""Log-in throttling: slows password guessing without locking a user out everywhere.

Failed log-ins are counted in a sliding window per (user name, client address)
and per client address across all names. When a count reaches its limit, further
attempts for that key are refused (HTTP 429 with ``Retry-After``) until the oldest
failure in the window has aged out. The correct password does not bypass a
refusal, otherwise the limit would tell a guesser when they hit it. A successful
log-in clears the pair's count.

Counts live in the server process (:class:`LoginThrottle`, one ``kvmops serve`` on
SQLite), or in the database (:class:`SharedLoginThrottle`, several servers on one
PostgreSQL database count together: spreading guesses over them gains nothing).
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime

from starlette.requests import Request

from kvmops.services import auth
from kvmops.services.auth import Principal
from kvmops.services.database import Store

#: A single address may fail this many times the per-pair limit across all names.
ADDRESS_FACTOR = 4
#: Keys kept at most; beyond this, keys without recent failures are dropped first.
MAX_KEYS = 10_000


class LoginThrottle:
    def __init__(self, max_failures: int = 5, window: float = 300.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if max_failures < 1 or window <= 0:
            raise ValueError("max_failures must be >= 1 and window > 0")
        self.max_failures = max_failures
        self.window = window
        self._clock = clock
        self._failures: dict[tuple[str, str], deque[float]] = {}
        self._lock = threading.Lock()

    def _keys(self, user: str, address: str) -> list[tuple[tuple[str, str], int]]:
        return [((user, address), self.max_failures),
                (("", address), self.max_failures * ADDRESS_FACTOR)]

    def _recent(self, key: tuple[str, str], now: float) -> deque[float]:
        times = self._failures.get(key)
        if times is None:
            return deque()
        while times and times[0] <= now - self.window:
            times.popleft()
        if not times:
            del self._failures[key]
        return times

    def retry_after(self, user: str, address: str) -> int | None:
        """Seconds until a log-in of ``user`` from ``address`` is accepted again, or None."""
        now = self._clock()
        wait = 0.0
        with self._lock:
            for key, limit in self._keys(user, address):
                times = self._recent(key, now)
                if len(times) >= limit:
                    wait = max(wait, times[len(times) - limit] + self.window - now)
        return max(1, math.ceil(wait)) if wait > 0 else None

    def failed(self, user: str, address: str) -> None:
        now = self._clock()
        with self._lock:
            if len(self._failures) >= MAX_KEYS:
                self._forget_oldest(now)
            for key, _limit in self._keys(user, address):
                self._failures.setdefault(key, deque()).append(now)

    def succeeded(self, user: str, address: str) -> None:
        with self._lock:
            self._failures.pop((user, address), None)

    def _forget_oldest(self, now: float) -> None:
        for key in list(self._failures):
            self._recent(key, now)
        if len(self._failures) >= MAX_KEYS:
            by_age = sorted(self._failures, key=lambda k: self._failures[k][-1])
            for key in by_age[: len(by_age) // 2]:
                del self._failures[key]


class SharedLoginThrottle(LoginThrottle):
    """The same limits, counted in the database every server instance shares."""

    def __init__(self, store: Store, max_failures: int = 5, window: float = 300.0) -> None:
        super().__init__(max_failures, window)
        self.store = store

    def retry_after(self, user: str, address: str) -> int | None:
        now = datetime.now(UTC)
        wait = 0.0
        for (name, addr), limit in self._keys(user, address):
            times = auth.login_failures(self.store, name, addr, self.window)
            if len(times) >= limit:
                oldest = times[len(times) - limit]
                wait = max(wait, (oldest - now).total_seconds() + self.window)
        return max(1, math.ceil(wait)) if wait > 0 else None

    def failed(self, user: str, address: str) -> None:
        auth.record_login_failure(self.store, [key for key, _ in self._keys(user, address)],
                                  self.window)

    def succeeded(self, user: str, address: str) -> None:
        auth.clear_login_failures(self.store, user, address)


class LoginThrottled(Exception):
    """Too many failed log-ins: the caller answers 429 with ``Retry-After``."""

    def __init__(self, retry_after: int) -> None:
        super().__init__(f"too many failed log-ins; try again in {retry_after} s")
        self.retry_after = retry_after


def attempt_login(store: Store, throttle: LoginThrottle, username: str, password: str,
                  address: str) -> Principal | None:
    """Check a password under the throttle (shared by the API and the web form)."""
    if not username:  # an empty form is no guess (and "" is the per-address key)
        return None
    wait = throttle.retry_after(username, address)
    if wait is not None:
        raise LoginThrottled(wait)
    principal = auth.check_password(store, username, password)
    if principal is None:
        throttle.failed(username, address)
    else:
        throttle.succeeded(username, address)
    return principal


def client_address(request: Request) -> str:
    """The peer's address (a proxy in front of kvmops makes all clients one address)."""
    return request.client.host if request.client else "unknown"
