"""Which hosts did not answer lately, so that a list does not wait for them again.

A listing of every host (the API's and the page's VM list, the dashboard's host health,
``host list``) asks each host under a deadline. Without memory, a registered host that
does not answer makes *every* list wait that deadline. The process therefore remembers,
per URI, a host that failed or timed out (:data:`REACHABILITY`: since when, why): the
next list answers for it at once as unreachable ("not answering since HH:MM:SS UTC:
REASON; checking again in the background") and starts one background probe for that URI
(never more than one call in flight per URI, counting a timed-out call that still runs).
When a probe, or a late answer of the timed-out call, succeeds the memory is cleared and
the next list includes the host again. A host never seen before still gets the deadline
once.

The CLI runs one process per command: it has no memory between runs, so ``vm list
--host all`` and ``host list`` still wait the deadline for a silent host there.
"""

from __future__ import annotations

import contextlib
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TypeVar

T = TypeVar("T")

#: How long a background probe may take before it counts as failed (it is alone in
#: flight for its URI meanwhile; the lists do not wait for it).
PROBE_DEADLINE_S = 60.0


@dataclass(frozen=True)
class Down:
    """A host (by URI) that did not answer: since when (UTC), the latest reason."""

    since: datetime
    reason: str

    def message(self) -> str:
        return (f"not answering since {self.since:%H:%M:%S} UTC: {self.reason}; "
                "checking again in the background")


_PREFIX = re.compile(r"^host '[^']*' \([^)]*\) cannot be reached: ")


def reason_of(err: BaseException) -> str:
    """An error's one-line reason (without "host 'X' (URI) cannot be reached: ")."""
    message = getattr(err, "message", None)
    text = str(message) if message else f"{type(err).__name__}: {err}"
    return _PREFIX.sub("", text.splitlines()[0] if text else text)


class Reachability:
    """The process's memory of hosts that did not answer, and its in-flight calls."""

    def __init__(self, clock: Callable[[], datetime] | None = None) -> None:
        self._clock = clock or (lambda: datetime.now(UTC))
        self._down: dict[str, Down] = {}
        self._busy: dict[str, int] = {}
        self._lock = threading.Lock()

    def down(self, uri: str) -> Down | None:
        """Why host ``uri`` is known not to answer (None: not known so)."""
        with self._lock:
            return self._down.get(uri)

    def in_flight(self, uri: str) -> int:
        with self._lock:
            return self._busy.get(uri, 0)

    def failed(self, uri: str, reason: str) -> None:
        """Remember that ``uri`` did not answer (the first failure's time is kept)."""
        with self._lock:
            self._failed(uri, reason)

    def _failed(self, uri: str, reason: str) -> None:
        known = self._down.get(uri)
        self._down[uri] = Down(since=known.since if known else self._clock(), reason=reason)

    def answered(self, uri: str) -> None:
        with self._lock:
            self._down.pop(uri, None)

    def forget(self, uri: str) -> None:
        """A removed host: nothing remembered about it."""
        self.answered(uri)

    def ask(self, uri: str, fn: Callable[[], T],
            failure: Callable[[T], str | None] | None = None) -> T:
        """``fn()`` (a call to the host at ``uri``) in this thread, counted in flight
        while it runs; its outcome is remembered (an exception, or a value ``failure``
        names a reason for, is a failure) and returned or raised."""
        with self._lock:
            self._busy[uri] = self._busy.get(uri, 0) + 1
        return self._settle(uri, fn, failure)

    def timed_out(self, uri: str, reason: str) -> None:
        """A list stopped waiting for ``uri``: remembered as down unless its call has
        answered meanwhile (its late outcome still counts when it comes)."""
        with self._lock:
            if self._busy.get(uri, 0) > 0:
                self._failed(uri, reason)

    def recheck(self, uri: str, fn: Callable[[], T],
                failure: Callable[[T], str | None] | None = None) -> bool:
        """Ask ``uri`` again in a background thread, unless a call to it is in flight
        already (False then)."""
        with self._lock:
            if self._busy.get(uri, 0) > 0:
                return False
            self._busy[uri] = 1

        def probe() -> None:
            with contextlib.suppress(Exception):  # remembered by _settle; nobody waits
                self._settle(uri, fn, failure)

        threading.Thread(target=probe, name=f"kvmops-probe-{uri}", daemon=True).start()
        return True

    def _settle(self, uri: str, fn: Callable[[], T],
                failure: Callable[[T], str | None] | None) -> T:
        """Run ``fn`` (already counted in flight) and remember its outcome."""
        try:
            value = fn()
        except Exception as err:
            with self._lock:
                self._failed(uri, reason_of(err))
                self._done(uri)
            raise
        why = failure(value) if failure is not None else None
        with self._lock:
            if why is None:
                self._down.pop(uri, None)
            else:
                self._failed(uri, why)
            self._done(uri)
        return value

    def _done(self, uri: str) -> None:
        left = self._busy.get(uri, 0) - 1
        if left > 0:
            self._busy[uri] = left
        else:
            self._busy.pop(uri, None)


#: The process's memory (a server's lists share it).
REACHABILITY = Reachability()
