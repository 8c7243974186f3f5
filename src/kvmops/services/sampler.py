"""The live charts' data: a bounded in-process sampler.

``kvmops serve`` starts one background thread (:func:`start`) that every
``interval_s`` seconds (default 10, ``KVMOPS_SAMPLE_INTERVAL``; 0 turns it off)
takes one bulk statistics snapshot of each managed host (:func:`kvmops.services.stats.host_stats`)
and a few host counters (:mod:`kvmops.host.nodestats`), turns them into rates
(:mod:`kvmops.metrics.rates`) and keeps the last hour per running VM and per host in
ring buffers (``deque(maxlen=...)``): memory stays bounded whatever runs how long.
A VM that vanishes (undefined, migrated away) loses its series; a host that is
removed loses its own; a VM that stops keeps the points it had.

:func:`vm_samples` and :func:`host_samples` read the buffers (the API and the web UI's
charts); :func:`track` turns consecutive snapshots into rates for ``kvmops top``.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import threading
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from kvmops.errors import KvmopsError, NotFoundError, ValidationError
from kvmops.metrics.rates import DomainStatsLike, VmRates, rate, rates
from kvmops.services.caller import Caller

log = logging.getLogger("kvmops.sampler")

LOCAL = "local"
DEFAULT_INTERVAL_S = 10.0
WINDOW_S = 3600.0
DEADLINE_S = 5.0

#: the series of a VM (the keys of :class:`kvmops.metrics.rates.VmRates` that are numbers)
VM_KEYS = ("cpu_percent", "memory_bytes", "disk_read_bps", "disk_write_bps", "net_rx_bps",
           "net_tx_bps")
#: the series of a host: its CPU use (all CPUs, %), memory in use and total, the sums of
#: its VMs' disk and network rates, running VMs
HOST_KEYS = ("cpu_percent", "memory_used_bytes", "memory_total_bytes", "disk_read_bps",
             "disk_write_bps", "net_rx_bps", "net_tx_bps", "vms_running")

Value = float | None


class DomainStatsRow(DomainStatsLike, Protocol):
    @property
    def collected_at(self) -> float: ...


class HostStatsLike(Protocol):
    """The fields of ``kvmops.host.domstats.HostStats`` the sampler reads."""

    @property
    def up(self) -> bool: ...
    @property
    def error(self) -> str | None: ...
    @property
    def collected_at(self) -> float: ...
    @property
    def domains(self) -> Sequence[DomainStatsRow]: ...


class NodeLike(Protocol):
    @property
    def cpus(self) -> int: ...
    @property
    def cpu_busy_ns(self) -> int | None: ...
    @property
    def cpu_total_ns(self) -> int | None: ...
    @property
    def memory_total(self) -> int: ...
    @property
    def memory_available(self) -> int | None: ...


@dataclass(frozen=True)
class Reading:
    """One host at one moment: the bulk VM statistics and the host counters (None when
    they could not be read)."""

    stats: HostStatsLike
    node: NodeLike | None


@dataclass(frozen=True)
class Samples:
    """Series over time, column-wise (what chart libraries take): ``times`` in seconds
    since the epoch, one list per key in ``series`` (None: not known at that time)."""

    name: str
    host: str
    interval_s: float
    window_s: float
    times: list[float] = field(default_factory=list)
    series: dict[str, list[Value]] = field(default_factory=dict)


# --------------------------------------------------------------------------- rates
@dataclass
class Tracker:
    """Consecutive readings of one host turned into rates.

    Each VM's last *fresh* values are kept: a reading where the VM did not answer in
    time (``timed_out``: its job was held, e.g. by another statistics call, and the
    values are the old ones) gives no rates for that VM, and the next fresh reading's
    rates span both intervals.
    """

    previous: dict[str, DomainStatsRow] = field(default_factory=dict)
    node: NodeLike | None = None

    def step(self, reading: Reading) -> tuple[list[VmRates], tuple[Value, ...]]:
        """The VMs' rates since their last fresh reading and the host's point
        (``HOST_KEYS``)."""
        node = reading.node
        cpus = node.cpus if node is not None else None
        out: list[VmRates] = []
        current: dict[str, DomainStatsRow] = {}
        for dom in reading.stats.domains:
            prev = self.previous.get(dom.name)
            if not dom.timed_out:
                current[dom.name] = dom
            elif prev is not None:
                current[dom.name] = prev
            interval = dom.collected_at - prev.collected_at if prev is not None else 0.0
            out.append(rates(prev, dom, interval, host_cpus=cpus))
        host_cpu: Value = None
        if node is not None and self.node is not None:
            busy = rate(self.node.cpu_busy_ns, node.cpu_busy_ns, 1.0)
            total = rate(self.node.cpu_total_ns, node.cpu_total_ns, 1.0)
            if busy is not None and total:
                host_cpu = min(100.0, 100.0 * busy / total)
        if host_cpu is None and any(r.cpu_percent is not None for r in out):
            host_cpu = _sum(r.cpu_percent for r in out)  # the VMs' share at least
        used: Value = None
        total_mem: Value = None
        if node is not None:
            total_mem = float(node.memory_total)
            if node.memory_available is not None:
                used = float(max(0, node.memory_total - node.memory_available))
        running = float(sum(1 for r in out if r.state == "running"))
        point = (host_cpu, used, total_mem, _sum(r.disk_read_bps for r in out),
                 _sum(r.disk_write_bps for r in out), _sum(r.net_rx_bps for r in out),
                 _sum(r.net_tx_bps for r in out), running)
        self.previous = current
        self.node = node
        return out, point


def _sum(values: Iterable[Value]) -> Value:
    known = [v for v in values if v is not None]
    return float(sum(known)) if known else None


# --------------------------------------------------------------------------- reading
_CALLER = Caller(name="sampler", role="viewer", via="api")


def read_host(host_name: str, *, deadline_s: float = DEADLINE_S,
              caller: Caller = _CALLER) -> Reading:
    """One reading of a host (``local`` or an added host's name): the bulk statistics
    (:func:`kvmops.services.stats.host_stats`) and the host counters, both on the host's
    shared connection."""
    from kvmops.host import nodestats
    from kvmops.services import stats as stats_service

    stats = stats_service.host_stats(caller, host_name, deadline_s=deadline_s)
    node: NodeLike | None = None
    if stats.up:
        try:
            _uri, conn = stats_service.connection_of(caller, host_name, deadline_s)
            node = nodestats.node_stats(conn)
        except KvmopsError as err:
            log.debug("host counters of %s: %s", host_name, err)
    return Reading(stats=stats, node=node)


def agent_states(caller: Caller, host_name: str, *, deadline_s: float = DEADLINE_S
                 ) -> dict[str, str | None]:
    """The guest agent channel state (``connected``/``disconnected``/None: no channel)
    of each running VM of a host."""
    from kvmops.host import nodestats
    from kvmops.services import stats as stats_service

    _uri, conn = stats_service.connection_of(caller, host_name, deadline_s)
    return nodestats.agent_states(conn)


def _known_hosts() -> list[str]:
    from kvmops.services import hosts

    return [name for name, _uri, _local in hosts.known_hosts()]


# --------------------------------------------------------------------------- sampler
VmPoint = tuple[float, tuple[Value, ...]]


class Sampler:
    """Ring buffers of the last ``window_s`` seconds, one point every ``interval_s``."""

    def __init__(self, *, interval_s: float = DEFAULT_INTERVAL_S, window_s: float = WINDOW_S,
                 hosts: Callable[[], list[str]] = _known_hosts,
                 read: Callable[[str], Reading] = read_host) -> None:
        if not interval_s > 0:
            raise ValidationError(f"sample interval {interval_s}: not a positive number")
        self.interval_s = interval_s
        self.window_s = window_s
        self.maxlen = max(2, math.ceil(window_s / interval_s) + 1)
        self._hosts = hosts
        self._read = read
        self._lock = threading.Lock()
        self._trackers: dict[str, Tracker] = {}
        self._vms: dict[str, dict[str, deque[VmPoint]]] = {}
        self._host: dict[str, deque[VmPoint]] = {}
        self._names: dict[str, set[str]] = {}  # every VM of the host's last reading
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ---- taking samples
    def sample_once(self) -> None:
        """One reading of every host into the buffers, the hosts read at once (a host
        that fails or does not answer in time is skipped and keeps its earlier points)."""
        from kvmops.services.hosts import gather

        try:
            names = self._hosts()
        except KvmopsError as err:
            log.warning("sampler: cannot list the hosts: %s", err)
            return
        with self._lock:
            for gone in set(self._host) - set(names):
                self._drop_host(gone)
        outcomes = gather({name: functools.partial(self._read, name) for name in names},
                          DEADLINE_S * 2 + 5)
        for name, outcome in outcomes.items():
            if outcome.value is None:
                log.debug("sampler: host %s: %s", name, outcome.error)
            elif not self._stop.is_set():
                self.add(name, outcome.value)

    def add(self, host: str, reading: Reading) -> None:
        """Put one reading of ``host`` into the buffers."""
        if not reading.stats.up:
            return
        with self._lock:
            tracker = self._trackers.setdefault(host, Tracker())
            vm_rates, point = tracker.step(reading)
            when = reading.stats.collected_at
            self._host.setdefault(host, deque(maxlen=self.maxlen)).append((when, point))
            vms = self._vms.setdefault(host, {})
            present = {r.name for r in vm_rates}
            for gone in set(vms) - present:
                del vms[gone]  # undefined or moved away: its series goes too
            for r in vm_rates:
                if r.state != "running":
                    continue  # a stopped VM keeps its points; only running ones grow
                values = tuple(getattr(r, key) for key in VM_KEYS)
                vms.setdefault(r.name, deque(maxlen=self.maxlen)).append((when, values))
            self._names[host] = present

    def _drop_host(self, host: str) -> None:
        for table in (self._trackers, self._vms, self._host, self._names):
            table.pop(host, None)

    # ---- reading samples
    def _samples(self, name: str, host: str, points: Iterable[VmPoint],
                 keys: Sequence[str]) -> Samples:
        times: list[float] = []
        columns: list[list[Value]] = [[] for _ in keys]
        for when, values in points:
            times.append(round(when, 3))
            for column, value in zip(columns, values, strict=True):
                column.append(None if value is None else round(value, 3))
        return Samples(name=name, host=host, interval_s=self.interval_s,
                       window_s=self.window_s, times=times,
                       series=dict(zip(keys, columns, strict=True)))

    def vm_series(self, host: str, name: str) -> Samples | None:
        """The VM's points; None when the host's last reading did not have the VM
        (an empty series when it has none yet, e.g. it is shut off)."""
        with self._lock:
            if host in self._names and name not in self._names[host]:
                return None
            points = list(self._vms.get(host, {}).get(name, ()))
        return self._samples(name, host, points, VM_KEYS)

    def host_series(self, host: str) -> Samples:
        with self._lock:
            points = list(self._host.get(host, ()))
        return self._samples(host, host, points, HOST_KEYS)

    def sizes(self) -> Mapping[str, int]:
        """How many points each buffer holds (``host`` and ``host/vm``): for tests and
        for seeing that memory stays bounded."""
        with self._lock:
            out = {host: len(points) for host, points in self._host.items()}
            for host, vms in self._vms.items():
                out.update({f"{host}/{vm}": len(points) for vm, points in vms.items()})
            return out

    # ---- the thread
    def start(self) -> None:
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="kvmops-sampler", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.sample_once()
            except Exception:  # never let the thread die; the next round tries again
                log.exception("sampler round failed")
            self._stop.wait(self.interval_s)

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None


# --------------------------------------------------------------------------- the server's
_current: Sampler | None = None
_current_lock = threading.Lock()


def interval_from_env() -> float:
    """``KVMOPS_SAMPLE_INTERVAL`` (seconds, default 10; 0: no sampler)."""
    text = os.environ.get("KVMOPS_SAMPLE_INTERVAL", str(DEFAULT_INTERVAL_S))
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not (value == 0 or 1.0 <= value <= 3600.0):
        raise ValidationError(f"KVMOPS_SAMPLE_INTERVAL={text}: not an interval in seconds",
                              hint="give 1 to 3600 seconds, or 0 to turn the charts' "
                                   "sampler off (default 10)")
    return value


def start(interval_s: float | None = None) -> Sampler | None:
    """Start the server's sampler (None: the interval is 0, sampling is off)."""
    global _current
    interval = interval_from_env() if interval_s is None else interval_s
    if interval == 0:
        return None
    with _current_lock:
        if _current is None:
            _current = Sampler(interval_s=interval)
            _current.start()
        return _current


def stop() -> None:
    global _current
    with _current_lock:
        sampler, _current = _current, None
    if sampler is not None:
        sampler.stop()


def _running() -> Sampler:
    if _current is None:
        raise NotFoundError("no live samples: this server's sampler is off",
                            hint="start kvmops serve with KVMOPS_SAMPLE_INTERVAL above 0 "
                                 "(default 10 seconds)")
    return _current


def _host_name(caller: Caller, host: str | None) -> str:
    from kvmops.services import hosts

    name = hosts.validate_name(host) if host else LOCAL
    hosts.uri_of(caller, name)  # an unknown host is a 404
    return name


def vm_samples(caller: Caller, name: str, host: str | None = None) -> Samples:
    """The last hour of a VM's CPU %, memory, disk and network rates."""
    host_name = _host_name(caller, host)
    found = _running().vm_series(host_name, name)
    if found is None:
        raise NotFoundError(f"VM '{name}' not found on host '{host_name}'",
                            hint="kvmops vm list --host " + host_name)
    return found


def host_samples(caller: Caller, host: str | None = None) -> Samples:
    """The last hour of a host's CPU %, memory in use and its VMs' summed rates."""
    return _running().host_series(_host_name(caller, host))


def as_dict(samples: Samples) -> dict[str, Any]:
    return {"name": samples.name, "host": samples.host, "interval_s": samples.interval_s,
            "window_s": samples.window_s, "times": samples.times, "series": samples.series}
