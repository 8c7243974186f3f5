"""Benchmark output parsers on captured real outputs (fio 3.33 JSON, sysbench 1.0.20)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kvmops.agent.benchparse import parse_fio, parse_sysbench, score_metric
from kvmops.errors import GuestCommandError

DATA = Path(__file__).parent / "data" / "bench"


def _text(name: str) -> str:
    return (DATA / name).read_text()


def test_fio_randread_iops_bandwidth_and_percentiles() -> None:
    m = parse_fio(_text("fio-randread.json"))
    assert m["read_iops"] == 62691.65 and m["write_iops"] == 0.0
    assert m["iops"] == m["read_iops"]
    assert m["read_bw_bytes"] == 256785015.0
    # clat_ns.percentile in microseconds
    assert (m["read_clat_p50_us"], m["read_clat_p95_us"], m["read_clat_p99_us"],
            m["read_clat_p99.9_us"]) == (230.4, 342.016, 667.648, 3063.808)
    assert "write_clat_p50_us" not in m  # no writes, no write latencies
    assert m["runtime_s"] == 2.0


def test_fio_randrw_sums_both_sides() -> None:
    m = parse_fio(_text("fio-randrw.json"))
    assert m["iops"] == pytest.approx(m["read_iops"] + m["write_iops"])
    assert m["write_clat_p99_us"] == 242.688 and m["read_clat_p99.9_us"] == 1466.368


def test_fio_warnings_before_the_json_are_skipped() -> None:
    text = "fio: this platform does not support process shared mutexes\n" + \
        _text("fio-randread.json")
    assert parse_fio(text)["read_iops"] == 62691.65


def test_fio_failures_are_one_guest_command_error() -> None:
    with pytest.raises(GuestCommandError, match="no JSON result"):
        parse_fio("fio: failed to open /dev/vdz: No such file or directory\n")
    with pytest.raises(GuestCommandError, match="unreadable"):
        parse_fio('{\n "jobs": [')
    job = json.loads(_text("fio-randread.json"))
    job["jobs"][0]["error"] = 5
    with pytest.raises(GuestCommandError, match="failed with error 5"):
        parse_fio(json.dumps(job))


def test_sysbench_cpu() -> None:
    m = parse_sysbench("cpu", _text("sysbench-cpu.txt"))
    assert m["events_per_s"] == 2046.72
    assert (m["latency_min_ms"], m["latency_avg_ms"], m["latency_max_ms"],
            m["latency_p95_ms"]) == (0.39, 0.49, 4.59, 0.61)
    assert m["total_events"] == 4102


def test_sysbench_memory_rate_and_events() -> None:
    m = parse_sysbench("memory", _text("sysbench-memory.txt"))
    assert m["mib_per_s"] == 4784.02 and m["operations_per_s"] == 4898833.72
    assert m["events_per_s"] == round(9805589 / 2.0001, 2)  # from the totals
    assert m["latency_max_ms"] == 2.57


def test_sysbench_fileio() -> None:
    m = parse_sysbench("fileio", _text("sysbench-fileio.txt"))
    assert (m["reads_per_s"], m["writes_per_s"], m["fsyncs_per_s"]) == \
        (3442.74, 2295.16, 7353.91)
    assert (m["read_mib_per_s"], m["written_mib_per_s"]) == (53.79, 35.86)
    assert m["latency_p95_ms"] == 0.23


def test_sysbench_without_its_numbers_is_refused() -> None:
    with pytest.raises(GuestCommandError, match="sysbench fileio output has no reads_per_s"):
        parse_sysbench("fileio", _text("sysbench-cpu.txt"))


def test_score_metric() -> None:
    assert (score_metric("fio"), score_metric("sysbench")) == ("iops", "events_per_s")
