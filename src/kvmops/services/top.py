"""``kvmops top``: every VM's CPU %, memory, disk and network rates, state and guest
agent, like virt-top. A :class:`TopSession` keeps the previous reading of each host
and turns the next one into rates; :func:`once` takes two readings ``delay_s`` apart.

CPU % is virt-top's: the share of the whole host (all its CPUs) the VM used (see
:mod:`kvmops.metrics.rates`); rates are per second; ``None`` where not known yet
(the first reading, a VM that just started, a counter that went back)."""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass, field

from kvmops.errors import HostUnavailableError, ValidationError
from kvmops.records import Record
from kvmops.services import sampler
from kvmops.services.caller import Caller

ALL = "all"
#: ``--sort`` names -> the row field (numbers sort biggest first)
SORT_KEYS = {"name": "name", "host": "host", "state": "state", "cpu": "cpu_percent",
             "memory": "memory_bytes", "disk_read": "disk_read_bps",
             "disk_write": "disk_write_bps", "net_rx": "net_rx_bps", "net_tx": "net_tx_bps",
             "agent": "agent"}
DEFAULT_SORT = "cpu"


@dataclass
class TopRow(Record):
    """One VM in ``kvmops top`` (``--json``: these keys)."""

    name: str
    host: str
    state: str
    cpu_percent: float | None = None
    memory_bytes: int | None = None
    disk_read_bps: float | None = None
    disk_write_bps: float | None = None
    net_rx_bps: float | None = None
    net_tx_bps: float | None = None
    agent: str | None = None  # connected, disconnected; None: no agent channel


@dataclass
class TopSnapshot:
    rows: list[TopRow]
    at: float
    errors: dict[str, str] = field(default_factory=dict)  # host -> why it has no rows


def hosts_of(caller: Caller, host: str | None) -> list[str]:
    """The host names ``--host`` means: None the local one, ``all`` every known one."""
    from kvmops.services import hosts

    if host == ALL:
        return [name for name, _uri, _local in hosts.known_hosts()]
    name = hosts.validate_name(host) if host else sampler.LOCAL
    hosts.uri_of(caller, name)  # an unknown host fails here, before any reading
    return [name]


def sort_rows(rows: list[TopRow], key: str = DEFAULT_SORT, *, reverse: bool = False
              ) -> list[TopRow]:
    """Rows by ``key`` (a :data:`SORT_KEYS` name): numbers biggest first, text A-Z;
    unknown values last either way; ``reverse`` turns the order round."""
    if key not in SORT_KEYS:
        raise ValidationError(f"cannot sort by {key!r}",
                              hint="use one of " + ", ".join(SORT_KEYS))
    attr = SORT_KEYS[key]

    def known(row: TopRow) -> bool:
        return getattr(row, attr) is not None

    numeric = attr.endswith(("_percent", "_bytes", "_bps"))
    have = sorted((r for r in rows if known(r)),
                  key=lambda r: (getattr(r, attr), r.host, r.name) if not numeric
                  else (-getattr(r, attr), r.host, r.name))
    if reverse:
        have.reverse()
    return have + sorted((r for r in rows if not known(r)), key=lambda r: (r.host, r.name))


class TopSession:
    """Consecutive readings of some hosts: :meth:`refresh` gives rates since the last
    call."""

    def __init__(self, caller: Caller, host: str | None = None, *,
                 deadline_s: float = sampler.DEADLINE_S) -> None:
        self.caller = caller
        self.hosts = hosts_of(caller, host)
        self.deadline_s = deadline_s
        self._trackers = {name: sampler.Tracker() for name in self.hosts}

    def _one(self, name: str) -> list[TopRow]:
        reading = sampler.read_host(name, deadline_s=self.deadline_s, caller=self.caller)
        if not reading.stats.up:
            raise HostUnavailableError(f"host {name}: {reading.stats.error or 'no answer'}")
        vm_rates, _point = self._trackers[name].step(reading)
        try:
            agents = sampler.agent_states(self.caller, name)
        except Exception:  # the agent column is a nicety: the table comes without it
            agents = {}
        return [TopRow(name=r.name, host=name, state=r.state, cpu_percent=r.cpu_percent,
                       memory_bytes=r.memory_bytes, disk_read_bps=r.disk_read_bps,
                       disk_write_bps=r.disk_write_bps, net_rx_bps=r.net_rx_bps,
                       net_tx_bps=r.net_tx_bps, agent=agents.get(r.name))
                for r in vm_rates]

    def refresh(self) -> TopSnapshot:
        from kvmops.services import hosts

        if len(self.hosts) == 1:
            # one host: its errors raise (a one-line error and exit code)
            outcomes = {self.hosts[0]: hosts.Outcome(value=self._one(self.hosts[0]))}
        else:
            outcomes = hosts.gather({name: functools.partial(self._one, name)
                                     for name in self.hosts}, self.deadline_s * 2 + 5)
        rows: list[TopRow] = []
        errors: dict[str, str] = {}
        for name, outcome in outcomes.items():
            if outcome.value is not None:
                rows.extend(outcome.value)
            else:
                errors[name] = outcome.error or "no answer"
        return TopSnapshot(rows=rows, at=time.time(), errors=errors)


def once(caller: Caller, host: str | None = None, *, delay_s: float = 1.0,
         sort: str = DEFAULT_SORT, reverse: bool = False) -> TopSnapshot:
    """Two readings ``delay_s`` apart, the rows sorted: ``top --once``."""
    if not 0 < delay_s <= 3600:
        raise ValidationError(f"delay {delay_s:g} s: out of range",
                              hint="give more than 0 and at most 3600 seconds")
    sort_rows([], sort)  # a bad sort key fails before the wait
    session = TopSession(caller, host)
    session.refresh()
    time.sleep(delay_s)
    snap = session.refresh()
    # A running VM busy with another statistics call (or a job) at either reading has
    # no rates yet: a few more readings give it its rates since its last fresh one.
    for _ in range(EXTRA_READINGS):
        if not _waiting(snap.rows):
            break
        time.sleep(min(delay_s, 1.0))
        snap = _merged(snap, session.refresh())
    snap.rows = sort_rows(snap.rows, sort, reverse=reverse)
    return snap


EXTRA_READINGS = 3


def _waiting(rows: list[TopRow]) -> bool:
    return any(row.state == "running" and row.cpu_percent is None for row in rows)


def _merged(before: TopSnapshot, after: TopSnapshot) -> TopSnapshot:
    """``after``, where a VM has no CPU figure there but had one ``before``: the row
    of ``before``."""
    known = {(row.host, row.name): row for row in before.rows if row.cpu_percent is not None}
    rows = [known.get((row.host, row.name), row) if row.cpu_percent is None else row
            for row in after.rows]
    return TopSnapshot(rows=rows, at=after.at, errors=after.errors)
