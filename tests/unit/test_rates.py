"""kvmops.metrics.rates: virt-top's %CPU, byte rates, resets and gaps give None."""

from __future__ import annotations

from dataclasses import replace

import pytest

from kvmops.metrics.rates import VmRates, cpu_percent, rate, rates
from tests.unit.domstats_factory import Block, Dom, Net


def test_cpu_percent_is_share_of_the_whole_host_like_virt_top() -> None:
    prev = Dom(cpu_time_ns=1_000_000_000)
    cur = Dom(cpu_time_ns=3_000_000_000)  # 2 s of CPU in 2 s: one CPU saturated
    assert cpu_percent(prev, cur, 2.0, host_cpus=4) == pytest.approx(25.0)
    assert cpu_percent(prev, cur, 2.0) == pytest.approx(100.0)  # of one host CPU


def test_byte_rates_sum_over_devices_matched_by_target() -> None:
    prev = Dom(blocks=(Block("vda", 0, 1000), Block("vdb", 500, 0)),
               nets=(Net("vnet0", 100, 200),))
    cur = Dom(blocks=(Block("vda", 4096, 3000), Block("vdb", 1500, 0), Block("vdc", 9, 9)),
              nets=(Net("vnet0", 1100, 400),))
    r = rates(prev, cur, 2.0, host_cpus=2)
    assert r.disk_read_bps == pytest.approx((4096 + 1000) / 2)
    assert r.disk_write_bps == pytest.approx(1000.0)
    assert r.net_rx_bps == pytest.approx(500.0)
    assert r.net_tx_bps == pytest.approx(100.0)
    assert r.cpu_percent == 0.0
    assert r.state == "running" and r.name == "vm1"


def test_counter_reset_gives_none_never_negative() -> None:
    prev = Dom(cpu_time_ns=9_000_000_000, blocks=(Block("vda", 10_000, 10_000),),
               nets=(Net("vnet0", 10_000, 10_000),))
    cur = Dom(cpu_time_ns=1_000_000, blocks=(Block("vda", 5, 5),), nets=(Net("vnet0", 5, 5),))
    r = rates(prev, cur, 10.0)
    assert (r.cpu_percent, r.disk_read_bps, r.disk_write_bps, r.net_rx_bps,
            r.net_tx_bps) == (None, None, None, None, None)


@pytest.mark.parametrize("prev", [None, Dom(cpu_time_ns=None), Dom(timed_out=True)])
def test_missing_or_stale_values_give_none(prev: Dom | None) -> None:
    cur = Dom(cpu_time_ns=5_000_000_000, blocks=(Block("vda", 1, 1),))
    r = rates(prev, cur, 1.0)
    assert r.cpu_percent is None and r.disk_read_bps is None
    assert rates(Dom(), replace(cur, timed_out=True), 1.0).cpu_percent is None


def test_zero_interval_and_unknown_counters() -> None:
    assert rate(1, 2, 0.0) is None
    assert rate(None, 2, 1.0) is None
    assert rate(2, 2, 1.0) == 0.0
    cur = Dom(blocks=(Block("vda", None, None),))
    assert rates(Dom(blocks=(Block("vda", None, None),)), cur, 1.0).disk_read_bps is None


def test_memory_prefers_rss_then_balloon_size() -> None:
    assert rates(None, Dom(balloon={"rss": 1000}), 1.0).memory_bytes == 1000 * 1024
    assert rates(None, Dom(), 1.0).memory_bytes == 262144 * 1024
    assert rates(None, Dom(current_memory_kib=None), 1.0).memory_bytes is None


def test_as_dict_has_the_contract_keys() -> None:
    d = rates(None, Dom(), 1.0).as_dict()
    assert set(d) == {f for f in VmRates.__dataclass_fields__}
    assert {"name", "state", "cpu_percent"} <= set(d)
