"""How often the engine looks at a running backup job: the end of a job is seen soon
after it happens, whatever the job's length, without polling libvirt in a busy loop."""

from __future__ import annotations

from typing import Any

import pytest

from kvmops.backup.engine import FIRST_POLL, next_poll, wait_for_job
from kvmops.host.backupjobs import JobInfo, JobState

POLL = 0.3


def running(processed: int, total: int, elapsed_ms: int | None = None) -> JobInfo:
    return JobInfo(JobState.RUNNING, True, processed, total, None, elapsed_ms)


class FakeJob:
    """A job copying ``total`` bytes at ``rate`` bytes/s then flushing for ``tail`` s, on a
    fake clock that only sleeping advances."""

    def __init__(self, total: int, rate: float, tail: float) -> None:
        self.total, self.rate, self.tail = total, rate, tail
        self.now = 0.0
        self.polls = 0

    @property
    def ends_at(self) -> float:
        return self.total / self.rate + self.tail

    def info(self, _domain: Any, *, completed: bool = False) -> JobInfo:
        if completed:
            return JobInfo(JobState.COMPLETED, True, self.total, self.total, None, None)
        self.polls += 1
        if self.now >= self.ends_at:
            return JobInfo(JobState.NONE, False, 0, 0, None, None)
        done = min(self.total, int(self.now * self.rate))
        return running(done, self.total, int(self.now * 1000))

    def sleep(self, seconds: float) -> None:
        assert seconds > 0
        self.now += seconds


class Domain:
    def name(self) -> str:
        return "web"


@pytest.mark.parametrize(("total", "rate", "tail"), [
    (600 << 20, 700e6, 0.05),    # a 600 MiB full: under a second
    (1536 << 20, 600e6, 0.1),    # 1.5 GiB
    (64 << 30, 500e6, 0.2),      # minutes
    (10 << 20, 1e9, 0.0),        # a small incremental: milliseconds
])
def test_the_end_of_a_job_is_seen_within_milliseconds(monkeypatch: pytest.MonkeyPatch,
                                                      total: int, rate: float,
                                                      tail: float) -> None:
    job = FakeJob(total, rate, tail)
    monkeypatch.setattr("kvmops.host.backupjobs.job_info", job.info)
    monkeypatch.setattr("kvmops.backup.engine.time.sleep", job.sleep)
    monkeypatch.setattr("kvmops.backup.engine.time.monotonic", lambda: job.now)
    wait_for_job(Domain(), None, poll=POLL)  # type: ignore[arg-type]
    late = job.now - job.ends_at
    assert 0 <= late <= 0.05 * max(1.0, job.ends_at) ** 0.5 + 0.03, late
    # ... and without a busy loop: a few dozen looks, not one every 5 ms of the job
    assert job.polls <= 80 + job.ends_at / POLL, job.polls


def test_the_wait_grows_to_the_cap_when_nothing_tells_the_rate() -> None:
    waits = [FIRST_POLL]
    for _ in range(20):
        waits.append(next_poll(waits[-1], POLL, running(0, 0), 60.0))
    assert waits == sorted(waits) and waits[-1] == POLL
    # a young job is looked at more often: at most 5 % of its age late (50 ms at least)
    assert next_poll(POLL, POLL, running(0, 0), 0.5) == pytest.approx(0.05)
    assert next_poll(POLL, POLL, running(0, 0), 2.0) == pytest.approx(0.1)


def test_the_wait_is_at_most_half_the_time_left_at_the_rate_seen() -> None:
    # 900 of 1000 bytes in 0.9 s: 0.1 s left, so look again in 0.05 s (not 0.3 s)
    assert next_poll(POLL, POLL, running(900, 1000, 900), 5.0) == pytest.approx(0.05)
    # libvirt's own elapsed time is preferred to the caller's clock
    assert next_poll(POLL, POLL, running(900, 1000, None), 0.9) == pytest.approx(0.05)
    # nearly done: never below the first poll
    assert next_poll(POLL, POLL, running(999_999, 1_000_000, 1000), 1.0) == FIRST_POLL
