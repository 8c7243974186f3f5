"""What one scrape knows: plain values the collector turns into series (pure).

:mod:`kvmops.services.metrics` fills a :class:`Scrape` (every host's statistics, backup
records, the job store, the doctor's last reports); :mod:`kvmops.metrics.collector`
renders it. Keeping the two apart lets the series be tested on hand-made values.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from kvmops.host.domstats import DomainStats


@dataclass(frozen=True)
class PoolSample:
    name: str
    capacity: int | None
    available: int | None


@dataclass(frozen=True)
class HostSample:
    """One host's part of a scrape (``host`` is the kvmops host name, ``local`` here)."""

    host: str
    up: bool
    duration_s: float
    domains: tuple[DomainStats, ...] = ()
    error: str | None = None
    memory_bytes: int | None = None
    pools: tuple[PoolSample, ...] = ()
    #: uuid -> did the guest agent answer its last ping (absent: not known yet)
    agents: Mapping[str, bool] = field(default_factory=dict)


@dataclass(frozen=True)
class BackupSample:
    """A VM's backups as the backup event log and its last manifest tell."""

    domain: str
    host: str
    last_time: float | None  # the last backup that ended (completed or failed)
    last_success: bool | None
    last_size_bytes: int | None = None  # of the last completed one (all its disks)
    #: per disk of the last completed backup: its time, chain length, bitmap trouble
    disk_success_time: Mapping[str, float] = field(default_factory=dict)
    chain_length: Mapping[str, int] = field(default_factory=dict)
    bitmap_inconsistent: Mapping[str, bool] = field(default_factory=dict)


@dataclass(frozen=True)
class JobsSample:
    """The job store: how many jobs per (kind, state), and the finished ones' durations
    as (kind, result, seconds)."""

    counts: Mapping[tuple[str, str], int] = field(default_factory=dict)
    durations: tuple[tuple[str, str, float], ...] = ()


@dataclass(frozen=True)
class DoctorSample:
    host: str
    checks: tuple[tuple[str, str], ...]  # (check name, ok|warn|fail)


@dataclass(frozen=True)
class ScheduleSample:
    """A backup schedule for one VM (kvmops.services.schedules): its expected interval,
    its last finished run and its last success (the schedule's creation when none, so
    a schedule that never succeeds becomes overdue too)."""

    schedule: int
    domain: str
    host: str
    interval_s: float
    last_run_time: float | None
    last_success: bool | None  # of the last finished run: ok True, failed False
    last_success_time: float


@dataclass(frozen=True)
class DrillSample:
    """A VM's last authentic restore drill (kvmops.backup.drill)."""

    domain: str
    time: float  # when it started, Unix time
    success: bool
    agent_s: float | None  # seconds from start to the restored guest's agent


@dataclass(frozen=True)
class Scrape:
    hosts: tuple[HostSample, ...] = ()
    backups: tuple[BackupSample, ...] = ()
    jobs: JobsSample | None = None
    doctor: tuple[DoctorSample, ...] = ()
    schedules: tuple[ScheduleSample, ...] = ()
    drills: tuple[DrillSample, ...] = ()
