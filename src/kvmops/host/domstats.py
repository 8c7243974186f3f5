"""Every VM's statistics of one host in one bulk call, under a deadline.

One ``virConnectGetAllDomainStats`` per host (with ``NOWAIT``: a domain whose QEMU is
busy with another job is reported with what is at hand instead of waited for) runs in
a worker thread (libvirt-python releases the GIL) and is waited for at most
``deadline_s``. When it misses the deadline -- a domain whose QEMU is stopped holds a
monitor call -- every domain is asked on its own (``virDomainListGetStats``, in
parallel) with the rest of the budget; a domain that still does not answer, or answers
only without its monitor figures (its job is held by the stuck call), comes back with
``timed_out=True`` and its ``previous`` values. A VM that starts, stops or is undefined
meanwhile is skipped or reported as it is: nothing here raises for it.

The stuck worker threads are daemons: they end when libvirt finally answers (the QEMU
is continued) and their answer is dropped.

Besides the statistics: iotune limits from the live domain XML (no job) and the
progress of a domain's job (``virDomainGetJobStats`` when ``virDomainGetControlInfo``
says a job runs; block jobs from ``virDomainGetBlockJobInfo``), each under the same
deadline.
"""

from __future__ import annotations

import contextlib
import functools
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

import libvirt
from lxml import etree

from kvmops.host.connection import Host, connection_lost

T = TypeVar("T")

GROUPS = (libvirt.VIR_DOMAIN_STATS_STATE | libvirt.VIR_DOMAIN_STATS_CPU_TOTAL
          | libvirt.VIR_DOMAIN_STATS_BALLOON | libvirt.VIR_DOMAIN_STATS_VCPU
          | libvirt.VIR_DOMAIN_STATS_INTERFACE | libvirt.VIR_DOMAIN_STATS_BLOCK)
#: Report what is at hand instead of waiting for a domain busy with another job.
NOWAIT = getattr(libvirt, "VIR_CONNECT_GET_ALL_DOMAINS_STATS_NOWAIT", 0)

STATE_NAMES: dict[int, str] = {
    0: "nostate", 1: "running", 2: "blocked", 3: "paused", 4: "shutdown", 5: "shutoff",
    6: "crashed", 7: "pmsuspended",
}
#: libvirt's reason names per state (virDomain*Reason), lower case without prefix.
REASON_NAMES: dict[int, tuple[str, ...]] = {
    0: ("unknown",),
    1: ("unknown", "booted", "migrated", "restored", "from_snapshot", "unpaused",
        "migration_canceled", "save_canceled", "wakeup", "crashed", "postcopy",
        "postcopy_failed"),
    2: ("unknown",),
    3: ("unknown", "user", "migration", "save", "dump", "ioerror", "watchdog",
        "from_snapshot", "shutting_down", "snapshot", "starting_up", "postcopy",
        "postcopy_failed", "api_error"),
    4: ("unknown", "user"),
    5: ("unknown", "shutdown", "destroyed", "crashed", "migrated", "saved", "failed",
        "from_snapshot", "daemon"),
    6: ("unknown", "panicked"),
    7: ("unknown",),
}
#: States in which QEMU runs.
ACTIVE_STATES = frozenset({1, 2, 3, 4, 7})


def state_name(state: int) -> str:
    return STATE_NAMES.get(state, "unknown")


def reason_name(state: int, reason: int) -> str:
    names = REASON_NAMES.get(state, ())
    return names[reason] if 0 <= reason < len(names) else "unknown"


@dataclass(frozen=True)
class VcpuStat:
    index: int
    state: int | None
    time_ns: int | None
    wait_ns: int | None
    delay_ns: int | None


@dataclass(frozen=True)
class BlockStat:
    """One disk (``path`` is its source file or device, None for an empty drive)."""

    target: str
    path: str | None
    rd_bytes: int | None
    rd_reqs: int | None
    rd_times_ns: int | None
    wr_bytes: int | None
    wr_reqs: int | None
    wr_times_ns: int | None
    fl_reqs: int | None
    fl_times_ns: int | None
    allocation: int | None
    capacity: int | None
    physical: int | None


@dataclass(frozen=True)
class NetStat:
    """One interface (``bridge`` is its source bridge or network, when it has one)."""

    target: str
    rx_bytes: int | None
    rx_pkts: int | None
    rx_errs: int | None
    rx_drop: int | None
    tx_bytes: int | None
    tx_pkts: int | None
    tx_errs: int | None
    tx_drop: int | None
    bridge: str | None = None


@dataclass(frozen=True)
class Iotune:
    """A disk's I/O limits from the domain XML (absent keys: no limit)."""

    target: str
    limits: Mapping[str, int]  # total_bytes_sec, read_iops_sec, ... as in <iotune>


@dataclass(frozen=True)
class JobProgress:
    """A job of the domain: ``operation`` is backup, migration_out, ..., or
    block_<type> (pull, copy, commit, active_commit) with its ``disk``."""

    operation: str
    data_total: int | None
    data_processed: int | None
    data_remaining: int | None
    disk: str | None = None

    @property
    def ratio(self) -> float | None:
        if self.data_total and self.data_processed is not None:
            return max(0.0, min(1.0, self.data_processed / self.data_total))
        return None


@dataclass(frozen=True)
class DomainStats:
    """One VM's figures (ints are None when libvirt did not say)."""

    name: str
    uuid: str
    state: int
    reason: int
    state_name: str  # nostate running blocked paused shutdown shutoff crashed pmsuspended
    reason_name: str  # e.g. ioerror, crashed, destroyed (libvirt's reason, lower case)
    cpu_time_ns: int | None
    cpu_user_ns: int | None
    cpu_system_ns: int | None
    vcpus_current: int | None
    vcpus_maximum: int | None
    max_memory_kib: int | None
    current_memory_kib: int | None
    balloon: Mapping[str, int]
    vcpus: tuple[VcpuStat, ...]
    blocks: tuple[BlockStat, ...]
    nets: tuple[NetStat, ...]
    timed_out: bool
    collected_at: float
    iotune: tuple[Iotune, ...] = ()
    jobs: tuple[JobProgress, ...] = ()
    #: has a guest agent channel (None: not known; the live XML was not read)
    agent_channel: bool | None = None

    @property
    def active(self) -> bool:
        return self.state in ACTIVE_STATES


@dataclass(frozen=True)
class HostStats:
    host_uri: str
    up: bool
    error: str | None
    duration_s: float
    collected_at: float
    domains: tuple[DomainStats, ...] = field(default_factory=tuple)


# Parsing (pure: a record is libvirt's dict of typed parameters) -----------------------
def _int(record: Mapping[str, Any], key: str) -> int | None:
    value = record.get(key)
    if value is None or isinstance(value, str):
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _count(record: Mapping[str, Any], key: str) -> int:
    return _int(record, key) or 0


def _devices(record: Mapping[str, Any], kind: str) -> Iterator[tuple[str, str]]:
    """``(key prefix, target)`` of each ``block``/``net`` device with a name."""
    for i in range(_count(record, f"{kind}.count")):
        p = f"{kind}.{i}."
        target = record.get(p + "name")
        if isinstance(target, str):
            yield p, target


_BALLOON_SKIP = {"current", "maximum"}


def parse_record(name: str, uuid: str, record: Mapping[str, Any], *,
                 collected_at: float, timed_out: bool = False) -> DomainStats:
    """A ``virDomainStatsRecord``'s dict as :class:`DomainStats`."""
    state = _int(record, "state.state")
    reason = _int(record, "state.reason") or 0
    state = 0 if state is None else state
    balloon = {key[len("balloon."):]: int(value) for key, value in record.items()
               if key.startswith("balloon.") and key[len("balloon."):] not in _BALLOON_SKIP
               and isinstance(value, int)}
    vcpus = tuple(
        VcpuStat(index=i, state=_int(record, f"vcpu.{i}.state"),
                 time_ns=_int(record, f"vcpu.{i}.time"),
                 wait_ns=_int(record, f"vcpu.{i}.wait"),
                 delay_ns=_int(record, f"vcpu.{i}.delay"))
        for i in range(_count(record, "vcpu.maximum"))
        if f"vcpu.{i}.state" in record or f"vcpu.{i}.time" in record)
    blocks = []
    for p, target in _devices(record, "block"):
        path = record.get(p + "path")
        blocks.append(BlockStat(
            target=target, path=path if isinstance(path, str) else None,
            rd_bytes=_int(record, p + "rd.bytes"), rd_reqs=_int(record, p + "rd.reqs"),
            rd_times_ns=_int(record, p + "rd.times"),
            wr_bytes=_int(record, p + "wr.bytes"), wr_reqs=_int(record, p + "wr.reqs"),
            wr_times_ns=_int(record, p + "wr.times"),
            fl_reqs=_int(record, p + "fl.reqs"), fl_times_ns=_int(record, p + "fl.times"),
            allocation=_int(record, p + "allocation"),
            capacity=_int(record, p + "capacity"), physical=_int(record, p + "physical")))
    nets = []
    for p, target in _devices(record, "net"):
        nets.append(NetStat(
            target=target,
            rx_bytes=_int(record, p + "rx.bytes"), rx_pkts=_int(record, p + "rx.pkts"),
            rx_errs=_int(record, p + "rx.errs"), rx_drop=_int(record, p + "rx.drop"),
            tx_bytes=_int(record, p + "tx.bytes"), tx_pkts=_int(record, p + "tx.pkts"),
            tx_errs=_int(record, p + "tx.errs"), tx_drop=_int(record, p + "tx.drop")))
    return DomainStats(
        name=name, uuid=uuid, state=state, reason=reason, state_name=state_name(state),
        reason_name=reason_name(state, reason),
        cpu_time_ns=_int(record, "cpu.time"), cpu_user_ns=_int(record, "cpu.user"),
        cpu_system_ns=_int(record, "cpu.system"),
        vcpus_current=_int(record, "vcpu.current"), vcpus_maximum=_int(record, "vcpu.maximum"),
        max_memory_kib=_int(record, "balloon.maximum"),
        current_memory_kib=_int(record, "balloon.current"),
        balloon=balloon, vcpus=vcpus, blocks=tuple(blocks), nets=tuple(nets),
        timed_out=timed_out, collected_at=collected_at)


def without_monitor(record: Mapping[str, Any]) -> bool:
    """Did libvirt answer for a running domain without asking its QEMU (its job was
    held by another call: NOWAIT)? Then the monitor's figures (the disks' counters,
    the balloon's rss) are missing and the record is stale."""
    state = _int(record, "state.state")
    if state not in (1, 2, 3, 4, 7):
        return False
    disks = _count(record, "block.count")
    if disks and not any(f"block.{i}.rd.reqs" in record for i in range(disks)):
        return True
    return "balloon.current" in record and "balloon.rss" not in record


def stale(current: DomainStats, previous: DomainStats | None) -> DomainStats:
    """``current`` marked timed out, with the previous values when there are any
    (its state stays the current one: libvirt knows it without QEMU)."""
    if previous is None:
        return replace(current, timed_out=True)
    return replace(previous, state=current.state, reason=current.reason,
                   state_name=current.state_name, reason_name=current.reason_name,
                   timed_out=True, collected_at=current.collected_at)


def parse_iotune(xml: str) -> tuple[tuple[Iotune, ...], dict[str, str]]:
    """The disks' limits and the interfaces' source bridges (by target dev) of a
    domain XML."""
    try:
        root = etree.fromstring(xml.encode(), parser=etree.XMLParser(resolve_entities=False))
    except etree.XMLSyntaxError:
        return (), {}
    limits = []
    for disk in root.iterfind("./devices/disk"):
        target = disk.find("target")
        tune = disk.find("iotune")
        if target is None or tune is None:
            continue
        values = {}
        for child in tune:
            if isinstance(child.tag, str) and child.text and child.text.strip().isdigit():
                values[child.tag] = int(child.text.strip())
        if values:
            limits.append(Iotune(target=target.get("dev", ""), limits=values))
    bridges = {}
    for nic in root.iterfind("./devices/interface"):
        target = nic.find("target")
        source = nic.find("source")
        if target is None or source is None or not target.get("dev"):
            continue
        bridge = source.get("bridge") or source.get("network") or source.get("dev")
        if bridge:
            bridges[target.get("dev", "")] = bridge
    return tuple(limits), bridges


def has_agent_channel(xml: str) -> bool:
    """Does the domain XML have a guest agent channel (``org.qemu.guest_agent.0``)?"""
    try:
        root = etree.fromstring(xml.encode(), parser=etree.XMLParser(resolve_entities=False))
    except etree.XMLSyntaxError:
        return False
    return any(t.get("name") == "org.qemu.guest_agent.0"
               for t in root.iterfind("./devices/channel/target"))


# Calls under a deadline -------------------------------------------------------------
def in_thread(fn: Callable[[], T], name: str = "kvmops-stats") -> Future[T]:
    """``fn()`` in a daemon thread of its own (a call stuck in libvirt never holds up
    the caller's exit or a pool's shutdown)."""
    future: Future[T] = Future()

    def run() -> None:
        if not future.set_running_or_notify_cancel():
            return
        try:
            future.set_result(fn())
        except BaseException as err:  # handed to the waiter
            future.set_exception(err)

    threading.Thread(target=run, name=name, daemon=True).start()
    return future


_INFLIGHT: dict[tuple[Any, ...], Future[Any]] = {}
_INFLIGHT_LOCK = threading.Lock()


def shared_call(key: tuple[Any, ...], fn: Callable[[], T], name: str = "kvmops-stats"
                ) -> Future[T]:
    """``fn()`` in a thread, unless a call with the same ``key`` is still running: then
    that one's future. A call stuck in libvirt (a held domain lock, a stopped QEMU) is
    joined by the next scrapes instead of being issued again: the calls waiting in
    libvirtd stay bounded (its worker threads are few) however often it is scraped."""
    with _INFLIGHT_LOCK:
        running = _INFLIGHT.get(key)
        if running is not None and not running.done():
            return running
        future = in_thread(fn, name)
        _INFLIGHT[key] = future
        if len(_INFLIGHT) > 4096:  # forget finished calls (vanished domains)
            for old in [k for k, f in _INFLIGHT.items() if f.done()]:
                del _INFLIGHT[old]
        return future


def _wait(future: Future[T], until: float) -> T | None:
    """The result by the monotonic time ``until`` (None when late or failed)."""
    try:
        return future.result(timeout=max(0.0, until - time.monotonic()))
    except Exception:  # late, vanished domain, lost connection: no value
        return None


def _message(err: BaseException) -> str:
    if isinstance(err, libvirt.libvirtError):
        return (err.get_error_message() or str(err)).strip()
    return str(err) or type(err).__name__


def _lookup(previous: Mapping[str, DomainStats] | None, name: str,
            uuid: str) -> DomainStats | None:
    if not previous:
        return None
    return previous.get(uuid) or previous.get(name)


Records = list[tuple[Any, dict[str, Any]]]


def _bulk(conn: libvirt.virConnect) -> Records:
    return list(conn.getAllDomainStats(GROUPS, NOWAIT))


def _one(conn: libvirt.virConnect, dom: libvirt.virDomain) -> Records:
    return list(conn.domainListGetStats([dom], GROUPS, NOWAIT))


def _one_waiting(conn: libvirt.virConnect, dom: libvirt.virDomain) -> Records:
    """One domain's statistics waiting for its job (the caller bounds the wait)."""
    return list(conn.domainListGetStats([dom], GROUPS, 0))


def _identity(dom: Any) -> tuple[str, str] | None:
    try:
        return str(dom.name()), str(dom.UUIDString())
    except libvirt.libvirtError:
        return None


#: Shares of the deadline: the bulk call, the listing, the per-domain calls, the host's
#: own answer (a call that takes no domain's lock), the extras (iotune, jobs).
BULK_SHARE, LIST_SHARE, ONE_SHARE, ALIVE_SHARE, EXTRAS_SHARE = 0.5, 0.65, 0.85, 0.9, 0.95

#: The domain handles of each connection's last answer (by uuid): when the bulk call is
#: late, the known domains are asked at once while the listing (which waits for the lock
#: of a domain being started, say) is still under way.
_HANDLES: dict[str, dict[str, Any]] = {}
_HANDLES_LOCK = threading.Lock()


LATE = "libvirt did not answer within"


def late(stats: HostStats) -> bool:
    """Was the host down only for being late (not for a lost connection)?"""
    return not stats.up and (stats.error or "").startswith(LATE)


def _token(conn: Any) -> str:
    """A key of its own for a connection object (``id()`` may be reused after it is
    closed and a new one opened)."""
    token = getattr(conn, "_kvmops_stats_token", None)
    if token is None:
        token = f"{id(conn):x}-{time.monotonic_ns():x}"
        with contextlib.suppress(AttributeError):
            conn._kvmops_stats_token = token
    return str(token)


def _remember(conn: Any, handles: Mapping[str, Any]) -> None:
    with _HANDLES_LOCK:
        _HANDLES[_token(conn)] = dict(handles)


def _known(conn: Any) -> dict[str, Any]:
    with _HANDLES_LOCK:
        return dict(_HANDLES.get(_token(conn), {}))


def collect(host: Host, *, deadline_s: float,
            previous: Mapping[str, DomainStats] | None = None) -> HostStats:
    """Every VM's statistics on ``host`` within ``deadline_s`` seconds (see the module
    doc). ``previous`` maps uuid (or name) to the last snapshot's values. A host that
    does not answer is ``up=False`` with the error, never an exception.

    When not even the domain list comes in time (libvirt waits for the lock of a domain
    being started, say) but the host itself answers, the domains known from the last
    call are asked one by one; those that do not answer are stale (``timed_out``)."""
    started = time.monotonic()

    def by(share: float) -> float:
        return started + deadline_s * share

    collected_at = time.time()
    conn = host.conn
    key = _token(conn)
    bulk = shared_call((key, "bulk"), lambda: _bulk(conn), "kvmops-stats-bulk")
    records = _wait(bulk, by(BULK_SHARE))
    domains: list[DomainStats] = []
    if records is None and bulk.done():
        err = bulk.exception()
        if isinstance(err, libvirt.libvirtError) and connection_lost(err):
            return HostStats(host_uri=host.uri, up=False, error=_message(err),
                             duration_s=time.monotonic() - started, collected_at=collected_at)
    handles: dict[str, Any] = {}
    if records is not None:
        # A running domain whose QEMU was busy with another call (NOWAIT left out its
        # monitor's figures) is asked again, waiting for its job, within the deadline:
        # a short overlap with another scrape is not a hung guest.
        busy: list[tuple[tuple[str, str], Mapping[str, Any], Future[Records]]] = []
        for dom, record in records:
            ident = _identity(dom)
            if ident is None:
                continue
            handles[ident[1]] = dom
            if without_monitor(record):
                busy.append((ident, record, shared_call(
                    (key, "waiting", ident[1]), functools.partial(_one_waiting, conn, dom))))
                continue
            domains.append(_parsed(ident, record, collected_at, previous))
        for ident, partial, future in busy:
            answer = _wait(future, by(ONE_SHARE))
            domains.append(_parsed(ident, answer[0][1] if answer else partial,
                                   collected_at, previous))
    else:
        alive = shared_call((key, "alive"), conn.getLibVersion, "kvmops-stats-alive")
        listing = shared_call((key, "list"), lambda: list(conn.listAllDomains(0)),
                              "kvmops-stats-list")
        asked: dict[str, tuple[tuple[str, str], Future[Records]]] = {}

        def ask(doms: Iterable[Any]) -> None:
            for dom in doms:
                ident = _identity(dom)
                if ident is None or ident[1] in asked:
                    continue
                handles[ident[1]] = dom
                asked[ident[1]] = (ident, shared_call((key, "one", ident[1]),
                                                      functools.partial(_one, conn, dom)))

        ask(_known(conn).values())
        listed = _wait(listing, by(LIST_SHARE))
        if listed is not None:
            ask(listed)
            gone = set(asked) - {i[1] for d in listed if (i := _identity(d))}
        elif _wait(alive, by(ALIVE_SHARE)) is None:
            return HostStats(host_uri=host.uri, up=False,
                             error=f"libvirt did not answer within {deadline_s:g} s",
                             duration_s=time.monotonic() - started,
                             collected_at=collected_at)
        else:  # the host answers, its list does not: the last snapshot's other domains
            gone = set()
            seen = set(asked)
            for before in (previous or {}).values():
                if before.uuid not in seen:
                    seen.add(before.uuid)
                    domains.append(replace(before, timed_out=True, collected_at=collected_at))
        for uuid, (ident, future) in asked.items():
            answer = _wait(future, by(ONE_SHARE))
            if answer:
                domains.append(_parsed(ident, answer[0][1], collected_at, previous))
                continue
            if uuid in gone or answer is not None or (
                    future.done() and _domain_gone(future.exception())):
                handles.pop(uuid, None)
                continue  # undefined meanwhile
            domains.append(_unanswered(ident, collected_at, previous))
    _remember(conn, handles)
    domains = _extras(key, domains, handles, by(EXTRAS_SHARE), previous)
    return HostStats(host_uri=host.uri, up=True, error=None,
                     duration_s=time.monotonic() - started, collected_at=collected_at,
                     domains=tuple(sorted(domains, key=lambda d: d.name)))


def _domain_gone(err: BaseException | None) -> bool:
    return isinstance(err, libvirt.libvirtError) and err.get_error_code() in (
        libvirt.VIR_ERR_NO_DOMAIN, libvirt.VIR_ERR_OPERATION_INVALID)


def _parsed(ident: tuple[str, str], record: Mapping[str, Any], collected_at: float,
            previous: Mapping[str, DomainStats] | None) -> DomainStats:
    stats = parse_record(ident[0], ident[1], record, collected_at=collected_at)
    if without_monitor(record):
        return stale(stats, _lookup(previous, *ident))
    return stats


def _unanswered(ident: tuple[str, str], collected_at: float,
                previous: Mapping[str, DomainStats] | None) -> DomainStats:
    """A domain whose statistics did not come in time: its previous values (without
    any: an empty record; asking its state would wait for its lock too)."""
    found = _lookup(previous, *ident)
    if found is not None:
        return replace(found, timed_out=True, collected_at=collected_at)
    return parse_record(ident[0], ident[1], {}, collected_at=collected_at, timed_out=True)


# Extras: iotune limits and job progress ---------------------------------------------
_BLOCK_JOB_TYPES = {
    getattr(libvirt, "VIR_DOMAIN_BLOCK_JOB_TYPE_PULL", 1): "block_pull",
    getattr(libvirt, "VIR_DOMAIN_BLOCK_JOB_TYPE_COPY", 2): "block_copy",
    getattr(libvirt, "VIR_DOMAIN_BLOCK_JOB_TYPE_COMMIT", 3): "block_commit",
    getattr(libvirt, "VIR_DOMAIN_BLOCK_JOB_TYPE_ACTIVE_COMMIT", 4): "block_active_commit",
    getattr(libvirt, "VIR_DOMAIN_BLOCK_JOB_TYPE_BACKUP", 5): "block_backup",
}
_JOB_OPERATIONS = {
    0: "unknown", 1: "start", 2: "save", 3: "restore", 4: "migration_in",
    5: "migration_out", 6: "snapshot", 7: "snapshot_revert", 8: "dump", 9: "backup",
    10: "snapshot_delete",
}


def job_from_stats(stats: Mapping[str, Any]) -> JobProgress | None:
    """``virDomainGetJobStats``'s dict as :class:`JobProgress` (None: no job)."""
    if _int(stats, "type") in (None, libvirt.VIR_DOMAIN_JOB_NONE):
        return None
    operation = _JOB_OPERATIONS.get(_int(stats, "operation") or 0, "unknown")
    total = _int(stats, "data_total")
    processed = _int(stats, "data_processed")
    remaining = _int(stats, "data_remaining")
    if total is None and "disk_total" in stats:  # backups report the disks only
        total = _int(stats, "disk_total")
        processed = _int(stats, "disk_processed")
        remaining = _int(stats, "disk_remaining")
    return JobProgress(operation=operation, data_total=total, data_processed=processed,
                       data_remaining=remaining)


def block_job(target: str, info: Mapping[str, Any]) -> JobProgress | None:
    """``virDomainGetBlockJobInfo``'s dict as :class:`JobProgress` (None: no job)."""
    if not info:
        return None
    end = _int(info, "end")
    cur = _int(info, "cur")
    return JobProgress(
        operation=_BLOCK_JOB_TYPES.get(_int(info, "type") or 0, "block_unknown"),
        data_total=end, data_processed=cur,
        data_remaining=(end - cur) if end is not None and cur is not None else None,
        disk=target)


Extras = tuple[tuple[Iotune, ...], dict[str, str], tuple[JobProgress, ...], bool]


def _domain_extras(dom: Any, targets: tuple[str, ...]) -> Extras:
    """A running domain's iotune limits, NIC bridges and jobs."""
    xml = dom.XMLDesc(0)
    iotune, bridges = parse_iotune(xml)
    jobs: list[JobProgress] = []
    with contextlib.suppress(libvirt.libvirtError):
        control = dom.controlInfo(0)
        if control and control[0] == libvirt.VIR_DOMAIN_CONTROL_JOB:
            job = job_from_stats(dom.jobStats(0))
            if job is not None:
                jobs.append(job)
    for target in targets:
        with contextlib.suppress(libvirt.libvirtError):
            found = block_job(target, dom.blockJobInfo(target, 0))
            if found is not None:
                jobs.append(found)
    return iotune, bridges, tuple(jobs), has_agent_channel(xml)


def _with_extras(stats: DomainStats, extras: Extras) -> DomainStats:
    iotune, bridges, jobs, agent = extras
    return replace(stats, iotune=iotune, jobs=jobs, agent_channel=agent,
                   nets=tuple(replace(n, bridge=bridges.get(n.target)) for n in stats.nets))


def _extras(key: str, domains: Iterable[DomainStats], handles: Mapping[str, Any],
            until: float, previous: Mapping[str, DomainStats] | None) -> list[DomainStats]:
    """The running domains with their iotune limits, bridges and jobs, each asked in
    parallel and waited for until ``until`` (late: the previous ones, so that a
    series' labels -- the source bridge -- do not change with a slow answer)."""
    asked: list[tuple[DomainStats, Future[Extras] | None]] = []
    for stats in domains:
        dom = handles.get(stats.uuid)
        if dom is None or not stats.active or stats.timed_out:
            # a stale domain's live XML would wait for its held job: the last extras
            asked.append((stats, None))
            continue
        targets = tuple(b.target for b in stats.blocks)
        asked.append((stats, shared_call((key, "extras", stats.uuid, targets),
                                         functools.partial(_domain_extras, dom, targets),
                                         "kvmops-stats-extras")))
    result = []
    for stats, future in asked:
        extras = _wait(future, until) if future is not None else None
        if extras is not None:
            result.append(_with_extras(stats, extras))
        elif stats.active:
            result.append(_previous_extras(stats, _lookup(previous, stats.name, stats.uuid)))
        else:
            result.append(stats)
    return result


def _previous_extras(stats: DomainStats, before: DomainStats | None) -> DomainStats:
    if before is None:
        return stats
    bridges = {n.target: n.bridge for n in before.nets}
    return replace(stats, iotune=before.iotune, jobs=before.jobs,
                   agent_channel=before.agent_channel,
                   nets=tuple(replace(n, bridge=n.bridge or bridges.get(n.target))
                              for n in stats.nets))


def previous_of(snapshot: HostStats | None) -> dict[str, DomainStats]:
    """A snapshot's domains by uuid, for ``collect(previous=...)``."""
    return {d.uuid: d for d in snapshot.domains} if snapshot is not None else {}


def iter_running(stats: HostStats) -> Iterable[DomainStats]:
    return (d for d in stats.domains if d.active)


# Cheap extras of a host and a guest ---------------------------------------------------
def agent_ping(host: Host, uuid: str, timeout_s: int = 1) -> bool:
    """Does the guest agent of domain ``uuid`` answer a guest-ping within ``timeout_s``?
    (False for no agent, a silent one, a domain that is gone.) The call takes libvirt's
    agent job, not the domain's: a domain busy with another job still answers."""
    import libvirt_qemu

    try:
        dom = host.conn.lookupByUUIDString(uuid)
        libvirt_qemu.qemuAgentCommand(dom, '{"execute":"guest-ping"}', max(1, timeout_s), 0)
    except libvirt.libvirtError:
        return False
    return True


def memory_bytes(host: Host) -> int | None:
    """The host's memory (None when libvirt did not say)."""
    try:
        return host.memory_total()
    except Exception:  # a lost connection: the metric is left out
        return None
