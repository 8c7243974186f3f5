"""services.sampler: bounded ring buffers, vanished VMs and removed hosts dropped,
host-level points (CPU of the host, memory in use, summed VM rates)."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import pytest

from kvmops.errors import HostUnavailableError, ValidationError
from kvmops.services import sampler
from kvmops.services.sampler import HOST_KEYS, VM_KEYS, Reading, Sampler
from tests.unit.domstats_factory import Block, Dom, Net


@dataclass(frozen=True)
class Stats:
    collected_at: float
    domains: tuple[Dom, ...]
    up: bool = True
    error: str | None = None


@dataclass(frozen=True)
class Node:
    cpu_busy_ns: int | None
    cpu_total_ns: int | None
    cpus: int = 2
    memory_total: int = 8 << 30
    memory_available: int | None = 6 << 30


def reading(t: float, *doms: Dom, node: Node | None = None) -> Reading:
    return Reading(stats=Stats(collected_at=t, domains=doms), node=node)


def test_buffers_are_bounded_to_the_window() -> None:
    s = Sampler(interval_s=10, window_s=60)
    assert s.maxlen == 7
    for i in range(50):
        s.add("local", reading(i * 10.0, Dom("a", i * 10.0, cpu_time_ns=i * 10**9)))
    assert s.sizes() == {"local": 7, "local/a": 7}
    series = s.vm_series("local", "a")
    assert series is not None
    assert series.times == [430.0 + 10 * i for i in range(7)]
    assert set(series.series) == set(VM_KEYS)
    # 1 s of CPU per 10 s on a 1-CPU reading (no node counters): 10 % of one CPU
    assert series.series["cpu_percent"] == [pytest.approx(10.0)] * 7


def test_vanished_vms_are_dropped_and_stopped_ones_keep_their_points() -> None:
    s = Sampler(interval_s=1, window_s=10)
    s.add("local", reading(0, Dom("a", 0), Dom("b", 0)))
    s.add("local", reading(1, Dom("a", 1), Dom("b", 1, state_name="shutoff")))
    assert s.sizes() == {"local": 2, "local/a": 2, "local/b": 1}
    s.add("local", reading(2, Dom("b", 2, state_name="shutoff")))
    assert s.sizes() == {"local": 3, "local/b": 1}
    assert s.vm_series("local", "a") is None  # not on the host any more: a 404
    b = s.vm_series("local", "b")
    assert b is not None and len(b.times) == 1


def test_host_point_uses_node_counters_and_sums_vm_rates() -> None:
    s = Sampler(interval_s=1, window_s=10)
    s.add("h", reading(0, Dom("a", 0, blocks=(Block("vda", 0, 0),), nets=(Net("n", 0, 0),)),
                       Dom("b", 0, blocks=(Block("vda", 0, 0),)),
                       node=Node(cpu_busy_ns=0, cpu_total_ns=0)))
    s.add("h", reading(2, Dom("a", 2, blocks=(Block("vda", 2000, 4000),),
                              nets=(Net("n", 200, 400),)),
                       Dom("b", 2, blocks=(Block("vda", 2000, 0),)),
                       node=Node(cpu_busy_ns=1 * 10**9, cpu_total_ns=4 * 10**9)))
    h = s.host_series("h")
    assert set(h.series) == set(HOST_KEYS)
    assert h.series["cpu_percent"] == [None, 25.0]
    assert h.series["memory_used_bytes"] == [2 << 30, 2 << 30]
    assert h.series["disk_read_bps"] == [None, 2000.0]
    assert h.series["disk_write_bps"] == [None, 2000.0]
    assert h.series["net_rx_bps"] == [None, 100.0]
    assert h.series["vms_running"] == [2.0, 2.0]


def test_a_failing_host_is_skipped_and_a_removed_host_dropped() -> None:
    hosts = ["local", "far"]
    t = [0.0]

    def read(name: str) -> Reading:
        if name == "far":
            raise HostUnavailableError("far: down")
        t[0] += 1
        return reading(t[0], Dom("a", t[0]))

    s = Sampler(interval_s=1, window_s=10, hosts=lambda: list(hosts), read=read)
    s.sample_once()
    s.add("far", reading(0, Dom("x", 0)))
    s.sample_once()
    assert s.sizes() == {"local": 2, "local/a": 2, "far": 1, "far/x": 1}
    hosts.remove("far")
    s.sample_once()
    assert s.sizes() == {"local": 3, "local/a": 3}


def test_the_thread_samples_and_stops() -> None:
    called = threading.Event()

    def read(name: str) -> Reading:
        called.set()
        return reading(1.0, Dom("a", 1.0))

    s = Sampler(interval_s=1, window_s=10, hosts=lambda: ["local"], read=read)
    s.start()
    try:
        assert called.wait(30)
        for _ in range(300):  # the round puts its reading in after read() returns
            if "local/a" in s.sizes():
                break
            time.sleep(0.1)
    finally:
        s.stop()
    assert s._thread is None
    assert s.sizes()["local/a"] >= 1


def test_interval_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KVMOPS_SAMPLE_INTERVAL", "0")
    assert sampler.interval_from_env() == 0
    monkeypatch.setenv("KVMOPS_SAMPLE_INTERVAL", "0.1")
    with pytest.raises(ValidationError, match="KVMOPS_SAMPLE_INTERVAL"):
        sampler.interval_from_env()
    monkeypatch.delenv("KVMOPS_SAMPLE_INTERVAL")
    assert sampler.interval_from_env() == 10.0


def test_a_timed_out_reading_gives_no_rates_and_the_next_spans_both() -> None:
    s = Sampler(interval_s=1, window_s=10)
    s.add("h", reading(0, Dom("a", 0, cpu_time_ns=0)))
    # stale: the old values again, marked timed out (its job was held)
    s.add("h", reading(1, Dom("a", 1, cpu_time_ns=0, timed_out=True)))
    s.add("h", reading(2, Dom("a", 2, cpu_time_ns=10**9)))
    series = s.vm_series("h", "a")
    assert series is not None
    assert series.series["cpu_percent"] == [None, None, pytest.approx(50.0)]
