"""The log-in throttle's sliding-window arithmetic, on a fake clock."""

from __future__ import annotations

import pytest

from kvmops.api.throttle import ADDRESS_FACTOR, LoginThrottle


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_pair_is_refused_after_the_limit_until_the_oldest_failure_ages_out() -> None:
    clock = Clock()
    throttle = LoginThrottle(max_failures=3, window=60, clock=clock)
    for step in range(3):
        assert throttle.retry_after("admin", "10.0.0.1") is None
        throttle.failed("admin", "10.0.0.1")
        clock.now += 10 * (step < 2)
    # failures at t=1000, 1010, 1020: the first ages out at 1060
    assert throttle.retry_after("admin", "10.0.0.1") == 40
    clock.now = 1059.5
    assert throttle.retry_after("admin", "10.0.0.1") == 1  # rounded up, never 0
    clock.now = 1060.0
    assert throttle.retry_after("admin", "10.0.0.1") is None
    # another address, and another name from the same address, were never limited
    assert throttle.retry_after("admin", "10.0.0.2") is None
    assert throttle.retry_after("alice", "10.0.0.1") is None


def test_success_clears_the_pair_but_not_the_address() -> None:
    clock = Clock()
    throttle = LoginThrottle(max_failures=2, window=60, clock=clock)
    throttle.failed("admin", "a")
    throttle.succeeded("admin", "a")
    throttle.failed("admin", "a")
    assert throttle.retry_after("admin", "a") is None  # one failure since the success


def test_one_address_guessing_many_names_is_limited() -> None:
    clock = Clock()
    throttle = LoginThrottle(max_failures=2, window=60, clock=clock)
    for n in range(2 * ADDRESS_FACTOR):
        assert throttle.retry_after(f"user{n}", "a") is None
        throttle.failed(f"user{n}", "a")
    assert throttle.retry_after("fresh-name", "a") == 60
    assert throttle.retry_after("fresh-name", "b") is None


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError):
        LoginThrottle(max_failures=0)
    with pytest.raises(ValueError):
        LoginThrottle(window=0)
