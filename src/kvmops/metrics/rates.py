"""Rates between two statistics snapshots of one VM (pure: no libvirt, no I/O).

``cpu_percent`` follows virt-top: the share of the *whole host* the VM used over
the interval, ``delta cpu time / (interval * host CPUs * 1e9) * 100`` -- all VMs of
a host plus its idle time add up to 100 %. A VM that saturates one vCPU on a
4-CPU host shows 25 %. Without a host CPU count (``host_cpus=None``) the
percentage is of one host CPU (top's default "Irix mode": a 2-vCPU VM can reach
200 %).

Counter resets (a VM restarted between the snapshots: a counter went down),
missing values (libvirt did not say, a stale ``timed_out`` snapshot, no previous
snapshot) and non-positive intervals give ``None``, never a negative rate.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Protocol


class _Block(Protocol):
    @property
    def target(self) -> str: ...
    @property
    def rd_bytes(self) -> int | None: ...
    @property
    def wr_bytes(self) -> int | None: ...


class _Net(Protocol):
    @property
    def target(self) -> str: ...
    @property
    def rx_bytes(self) -> int | None: ...
    @property
    def tx_bytes(self) -> int | None: ...


class DomainStatsLike(Protocol):
    """The fields of ``kvmops.host.domstats.DomainStats`` that rates need."""

    @property
    def name(self) -> str: ...
    @property
    def state_name(self) -> str: ...
    @property
    def cpu_time_ns(self) -> int | None: ...
    @property
    def current_memory_kib(self) -> int | None: ...
    @property
    def balloon(self) -> Mapping[str, int]: ...
    @property
    def blocks(self) -> Sequence[_Block]: ...
    @property
    def nets(self) -> Sequence[_Net]: ...
    @property
    def timed_out(self) -> bool: ...


@dataclass(frozen=True)
class VmRates:
    """One VM over one interval. Rates are per second; ``None`` = not known."""

    name: str
    state: str
    cpu_percent: float | None
    memory_bytes: int | None
    disk_read_bps: float | None
    disk_write_bps: float | None
    net_rx_bps: float | None
    net_tx_bps: float | None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def rate(prev: int | None, cur: int | None, interval_s: float) -> float | None:
    """``(cur - prev) / interval``; ``None`` when unknown or the counter went back."""
    if prev is None or cur is None or interval_s <= 0 or cur < prev:
        return None
    return (cur - prev) / interval_s


def memory_bytes(cur: DomainStatsLike) -> int | None:
    """Memory the VM takes from its host: QEMU's resident set (``balloon.rss``),
    else the balloon's current size."""
    rss = cur.balloon.get("rss")
    if rss:
        return int(rss) * 1024
    if cur.current_memory_kib:
        return cur.current_memory_kib * 1024
    return None


def _sum_rate(prev: Iterable[tuple[str, int | None]], cur: Iterable[tuple[str, int | None]],
              interval_s: float) -> float | None:
    """The rate of a counter summed over devices (matched by target).

    A device present in only one snapshot (hot-plugged/unplugged) is left out; when
    no device has both values the sum is unknown. One device going backwards makes
    the whole sum unknown (the VM restarted).
    """
    before = dict(prev)
    total = 0.0
    seen = False
    for target, value in cur:
        if target not in before:
            continue
        if before[target] is None or value is None:
            continue
        one = rate(before[target], value, interval_s)
        if one is None:
            return None
        total += one
        seen = True
    return total if seen else None


def cpu_percent(prev: DomainStatsLike | None, cur: DomainStatsLike, interval_s: float, *,
                host_cpus: int | None = None) -> float | None:
    """virt-top's %CPU (see the module docstring)."""
    if prev is None or prev.timed_out or cur.timed_out:
        return None
    per_second = rate(prev.cpu_time_ns, cur.cpu_time_ns, interval_s)
    if per_second is None:
        return None
    return per_second / 1e9 * 100.0 / (host_cpus if host_cpus and host_cpus > 0 else 1)


def rates(prev: DomainStatsLike | None, cur: DomainStatsLike, interval_s: float, *,
          host_cpus: int | None = None) -> VmRates:
    """The rates of ``cur`` since ``prev`` (``interval_s`` apart)."""
    usable = prev is not None and not prev.timed_out and not cur.timed_out
    before = prev if usable else None

    def sums(attr: str, kind: str) -> float | None:
        if before is None:
            return None
        devices_prev = getattr(before, kind)
        devices_cur = getattr(cur, kind)
        return _sum_rate(((d.target, getattr(d, attr)) for d in devices_prev),
                         ((d.target, getattr(d, attr)) for d in devices_cur), interval_s)

    return VmRates(
        name=cur.name,
        state=cur.state_name,
        cpu_percent=cpu_percent(before, cur, interval_s, host_cpus=host_cpus),
        memory_bytes=memory_bytes(cur),
        disk_read_bps=sums("rd_bytes", "blocks"),
        disk_write_bps=sums("wr_bytes", "blocks"),
        net_rx_bps=sums("rx_bytes", "nets"),
        net_tx_bps=sums("tx_bytes", "nets"),
    )
