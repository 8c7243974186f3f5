"""Stand-ins for host.domstats' DomainStats, BlockStat and NetStat with only the fields
kvmops.metrics.rates and services.sampler read, so their unit tests build domains in
one line."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Block:
    target: str
    rd_bytes: int | None
    wr_bytes: int | None


@dataclass(frozen=True)
class Net:
    target: str
    rx_bytes: int | None
    tx_bytes: int | None


@dataclass(frozen=True)
class Dom:
    name: str = "vm1"
    collected_at: float = 0.0
    cpu_time_ns: int | None = 0
    state_name: str = "running"
    current_memory_kib: int | None = 262144
    balloon: Mapping[str, int] = field(default_factory=dict)
    blocks: tuple[Block, ...] = ()
    nets: tuple[Net, ...] = ()
    timed_out: bool = False
