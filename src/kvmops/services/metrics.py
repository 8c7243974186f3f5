"""What a Prometheus scrape of kvmops reads: every host's statistics and kvmops' own.

:class:`MetricsSource` fills one :class:`~kvmops.metrics.model.Scrape` per scrape:

* every host it covers at once (a thread each), each under the deadline: its one bulk
  statistics call (:func:`kvmops.services.stats.host_stats`), its memory and storage
  pools. A host that does not answer in time is ``up=0``; the scrape never fails for it.
* guest agents: a ``guest-ping`` per running VM in the background (at most one per VM
  every ``agent_interval_s``, 1 s timeout); the scrape reports the last answer and
  never waits for one.
* backups from the backup event log and the last manifest of each VM of the scraped
  hosts (manifests are read once per backup); the job store's counts and durations;
  the doctor's last report per host.

:func:`registry` wraps it in a prometheus-client registry of its own.
"""

from __future__ import annotations

import contextlib
import functools
import re
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry

from kvmops.metrics.collector import ScrapeCollector
from kvmops.metrics.model import (
    BackupSample,
    DoctorSample,
    DrillSample,
    HostSample,
    JobsSample,
    PoolSample,
    ScheduleSample,
    Scrape,
)
from kvmops.services.caller import Caller

if TYPE_CHECKING:
    from kvmops.backup.model import Manifest
    from kvmops.host.domstats import DomainStats
    from kvmops.store.db import Store

__all__ = ["MetricsSource", "registry"]

LOCAL = "local"
#: How often a guest agent is pinged at most (seconds).
AGENT_INTERVAL_S = 30.0
#: Finished jobs whose durations feed the histogram (the newest ones).
JOB_ROWS = 5000
_INCONSISTENT = re.compile(r"^disk (\S+): change tracking .*inconsistent")


class AgentProbes:
    """The last guest-ping answer per (host URI, uuid), asked in the background."""

    def __init__(self, interval_s: float = AGENT_INTERVAL_S) -> None:
        self.interval_s = interval_s
        self._known: dict[tuple[str, str], tuple[bool, float]] = {}
        self._asking: set[tuple[str, str]] = set()
        self._lock = threading.Lock()

    def answers(self, uri: str, conn: Any, domains: Iterable[DomainStats]) -> dict[str, bool]:
        """The known answers of ``domains`` (running ones); pings the stale ones in the
        background."""
        from kvmops.host.domstats import agent_ping

        now = time.monotonic()
        found: dict[str, bool] = {}
        for dom in domains:
            if not dom.active or dom.agent_channel is False:  # no agent to ask
                continue
            key = (uri, dom.uuid)
            with self._lock:
                known = self._known.get(key)
                if known is not None:
                    found[dom.uuid] = known[0]
                if (known is not None and now - known[1] < self.interval_s) \
                        or key in self._asking or dom.timed_out:
                    continue
                self._asking.add(key)
            threading.Thread(target=self._ask, args=(key, functools.partial(
                agent_ping, conn, dom.uuid, 1)), name="kvmops-agent-ping", daemon=True).start()
        return found

    def _ask(self, key: tuple[str, str], ping: Callable[[], bool]) -> None:
        try:
            answer = ping()
        except Exception:  # a lost connection: not answering
            answer = False
        with self._lock:
            self._known[key] = (answer, time.monotonic())
            self._asking.discard(key)


class _Manifests:
    """The last manifest of each backup read once (manifests are immutable)."""

    def __init__(self) -> None:
        self._found: dict[tuple[str, str, str], tuple[Manifest, dict[str, int]] | None] = {}
        self._lock = threading.Lock()

    def get(self, repo: str, vm: str, backup_id: str
            ) -> tuple[Manifest, dict[str, int]] | None:
        key = (repo, vm, backup_id)
        with self._lock:
            if key in self._found:
                return self._found[key]
        found = _read_manifest(repo, vm, backup_id)
        with self._lock:
            self._found[key] = found
        return found


def _read_manifest(repo: str, vm: str, backup_id: str
                   ) -> tuple[Manifest, dict[str, int]] | None:
    """The manifest and each disk's chain length (None: not readable)."""
    from kvmops.backup.model import disk_chain
    from kvmops.backup.repository import Repository
    from kvmops.errors import KvmopsError

    try:
        manifests = {m.id: m for m in Repository(Path(repo)).manifests(vm)}
        manifest = manifests.get(backup_id)
        if manifest is None:
            return None
        chains = {}
        for disk in manifest.disks:
            with contextlib.suppress(KvmopsError):
                chains[disk.target] = len(disk_chain(manifests, backup_id, disk.target))
        return manifest, chains
    except (KvmopsError, OSError, ValueError):
        return None


def _timestamp(text: object) -> float | None:
    try:
        return datetime.fromisoformat(str(text)).timestamp()
    except ValueError:
        return None


def backup_samples(events: Iterable[Mapping[str, Any]], hosts_of: Mapping[str, str],
                   manifest: Callable[[str, str, str], tuple[Manifest, dict[str, int]] | None]
                   ) -> list[BackupSample]:
    """Each VM's backup figures from the event log (oldest first), for the VMs in
    ``hosts_of`` (name -> host); ``manifest(repo, vm, id)`` reads a completed backup."""
    ended: dict[str, Mapping[str, Any]] = {}
    completed: dict[str, Mapping[str, Any]] = {}
    for event in events:
        vm = event.get("vm")
        if not isinstance(vm, str) or vm not in hosts_of:
            continue
        if event.get("event") in ("completed", "failed"):
            ended[vm] = event
        if event.get("event") == "completed":
            completed[vm] = event
    samples = []
    for vm, last in sorted(ended.items()):
        success = completed.get(vm)
        size = None
        disk_times: dict[str, float] = {}
        chains: dict[str, int] = {}
        inconsistent: dict[str, bool] = {}
        read = None
        if success is not None and success.get("repo") and success.get("backup_id"):
            read = manifest(str(success["repo"]), vm, str(success["backup_id"]))
        summary = success.get("summary") if success is not None else None
        if read is not None:
            found, chains = read
            size = sum(d.bytes_written for d in found.disks)
            bad = {m.group(1) for note in found.notes if (m := _INCONSISTENT.match(note))}
            for disk in found.disks:
                disk_times[disk.target] = found.time.timestamp()
                inconsistent[disk.target] = disk.target in bad
        elif isinstance(summary, Mapping) and (when := _timestamp(summary.get("time"))):
            # a sealed or remote repository: the figures the backup recorded
            size = int(summary.get("bytes") or 0)
            notes = [str(n) for n in summary.get("notes") or []]
            bad = {m.group(1) for note in notes if (m := _INCONSISTENT.match(note))}
            for target in summary.get("disks") or []:
                disk_times[str(target)] = when
                inconsistent[str(target)] = str(target) in bad
            recorded = summary.get("chains")
            if isinstance(recorded, Mapping):
                chains = {str(t): n for t, n in recorded.items() if isinstance(n, int)}
        elif success is not None and not (success.get("repo") and success.get("backup_id")):
            # an event from before events named the repository
            when = _timestamp(success.get("time"))
            if when is not None:
                disk_times = {"": when}
        samples.append(BackupSample(
            domain=vm, host=hosts_of[vm], last_time=_timestamp(last.get("time")),
            last_success=last.get("event") == "completed", last_size_bytes=size,
            disk_success_time=disk_times, chain_length=chains,
            bitmap_inconsistent=inconsistent))
    return samples


def jobs_sample(store: Store) -> JobsSample:
    """Counts per (kind, state) and the newest finished jobs' durations."""
    from sqlalchemy import func, select

    from kvmops.store.models import Job

    with store.session() as db:
        counts = {(str(kind), str(state)): int(n) for kind, state, n in db.execute(
            select(Job.kind, Job.state, func.count()).group_by(Job.kind, Job.state))}
        rows = db.execute(
            select(Job.kind, Job.state, Job.started_at, Job.created_at, Job.finished_at)
            .where(Job.finished_at.is_not(None))
            .order_by(Job.finished_at.desc()).limit(JOB_ROWS)).all()
    durations = []
    for kind, state, started, created, finished in rows:
        begun = started or created
        if begun is None or finished is None:
            continue
        durations.append((str(kind), str(state),
                          max(0.0, (finished - begun).total_seconds())))
    return JobsSample(counts=counts, durations=tuple(durations))


class MetricsSource:
    """One scrape of the hosts ``hosts`` (None: every host kvmops manages)."""

    def __init__(self, caller: Caller, *, hosts: list[str] | None = None,
                 deadline_s: float = 5.0, db: str | Store | None = None,
                 store: Callable[[], Store | None] | None = None) -> None:
        self.caller = caller
        self.hosts = hosts
        self.deadline_s = deadline_s
        self.db = db
        self._store = store
        self.agents = AgentProbes()
        self.manifests = _Manifests()
        self._pools: dict[str, tuple[PoolSample, ...]] = {}
        self._events_read: tuple[tuple[int, int] | None, list[dict[str, Any]]] = (None, [])

    def host_names(self) -> list[str]:
        if self.hosts is not None:
            return self.hosts
        from kvmops.services import fleet

        try:
            return fleet.host_names(self.db)
        except Exception:  # no database here: this machine only
            return [LOCAL]

    def scrape(self) -> Scrape:
        from kvmops.services.hosts import gather

        names = self.host_names()
        outcomes = gather({name: functools.partial(self._host, name) for name in names},
                          self.deadline_s + 1.0)
        samples = []
        for name in names:
            value = outcomes[name].value
            samples.append(value if value is not None else HostSample(
                host=name, up=False, duration_s=self.deadline_s + 1.0,
                error=outcomes[name].error))
        hosts_of: dict[str, str] = {}
        for sample in samples:
            for dom in sample.domains:
                hosts_of.setdefault(dom.name, sample.host)
        return Scrape(hosts=tuple(samples), backups=tuple(self._backups(hosts_of)),
                      jobs=self._jobs(), doctor=tuple(self._doctor(names)),
                      schedules=tuple(self._schedules()), drills=tuple(self._drills()))

    def _host(self, name: str) -> HostSample:
        from kvmops.errors import KvmopsError
        from kvmops.host.domstats import shared_call
        from kvmops.services import stats

        started = time.monotonic()
        try:
            uri, conn = stats.connection_of(self.caller, name, self.deadline_s, self.db)
        except KvmopsError as err:
            return HostSample(host=name, up=False, duration_s=time.monotonic() - started,
                              error=err.message)
        extras = shared_call((uri, id(self), "host"),
                             functools.partial(self._host_extras, uri, conn),
                             "kvmops-metrics-host")
        remaining = max(0.2, self.deadline_s - (time.monotonic() - started))
        snapshot = stats.host_stats(self.caller, name, deadline_s=remaining, db=self.db,
                                    connection=(uri, conn))
        if not snapshot.up:
            return HostSample(host=name, up=False, duration_s=time.monotonic() - started,
                              error=snapshot.error)
        agents = self.agents.answers(uri, conn, snapshot.domains)
        try:  # late or failed: the pools known, no memory figure
            memory, pools = extras.result(timeout=max(
                0.0, started + self.deadline_s * 0.97 - time.monotonic()))
        except Exception:
            memory, pools = None, self._pools.get(uri, ())
        return HostSample(host=name, up=True, duration_s=time.monotonic() - started,
                          domains=snapshot.domains, memory_bytes=memory, pools=pools,
                          agents=agents)

    def _host_extras(self, uri: str, conn: Any) -> tuple[int | None, tuple[PoolSample, ...]]:
        """The host's memory and active pools (kept for a scrape they are late for)."""
        from kvmops.host.domstats import memory_bytes
        from kvmops.services import pools

        found = tuple(PoolSample(p.name, p.capacity, p.available)
                      for p in pools.list_pools(self.caller, conn) if p.active)
        self._pools[uri] = found
        return memory_bytes(conn), found

    def _backups(self, hosts_of: Mapping[str, str]) -> list[BackupSample]:
        return backup_samples(self._events(), hosts_of, self.manifests.get)

    def _events(self) -> list[dict[str, Any]]:
        """The backup event log, read again only when it changed."""
        from kvmops.backup import jobs

        path = jobs.events_path()
        try:
            stat = path.stat()
        except OSError:
            return []
        key = (stat.st_mtime_ns, stat.st_size)
        if self._events_read[0] != key:
            try:
                events = jobs.read_events(None, limit=10_000_000)
            except (OSError, ValueError):
                return []
            self._events_read = (key, events)
        return self._events_read[1]

    def _jobs(self) -> JobsSample | None:
        store = self._store() if self._store is not None else None
        if store is None:
            return None
        try:
            return jobs_sample(store)
        except Exception:  # the database is not answering: no job series this time
            return None

    def _schedules(self) -> list[ScheduleSample]:
        store = self._store() if self._store is not None else None
        if store is None:
            return []
        try:
            from kvmops.services.schedules import schedule_samples

            return schedule_samples(store)
        except Exception:  # the database is not answering: no schedule series this time
            return []

    def _drills(self) -> list[DrillSample]:
        from kvmops.services.drills import last_per_vm

        try:
            last = last_per_vm()
        except OSError:  # the drill log is unreadable: no drill series this time
            return []
        return [DrillSample(domain=vm, time=r.started.timestamp(), success=r.ok,
                            agent_s=r.agent_s) for vm, r in sorted(last.items())]

    def _doctor(self, names: Iterable[str]) -> list[DoctorSample]:
        try:
            from kvmops.services import doctor
        except ImportError:
            return []
        last_report = getattr(doctor, "last_report", None)
        if last_report is None:
            return []
        found = []
        for name in names:
            with contextlib.suppress(Exception):
                report = last_report(name)
                if report is not None:
                    found.append(DoctorSample(host=name, checks=tuple(
                        (c.name, str(c.status.value if hasattr(c.status, "value")
                                     else c.status)) for c in report.checks)))
        return found


def registry(source: MetricsSource, *extra: Any) -> CollectorRegistry:
    """A registry of its own holding the scrape's collector (and ``extra`` collectors,
    e.g. the API latency histogram)."""
    reg = CollectorRegistry(auto_describe=False)
    reg.register(ScrapeCollector(source.scrape))
    for collector in extra:
        reg.register(collector)
    return reg
