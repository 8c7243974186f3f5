"""Parsers of the benchmark tools' output (pure: text in, flat metrics out).

Every parser returns a flat ``{metric: number}`` mapping so a stored run, its history
and the comparison with the previous run need no per-tool schema. Names:

* fio (``--output-format=json``, one job or ``--group_reporting``): ``iops`` (read +
  write), ``read_iops``, ``write_iops``, ``read_bw_bytes``, ``write_bw_bytes`` (bytes/s),
  ``read_clat_p50_us`` ... ``read_clat_p99.9_us`` (completion latency percentiles from
  ``clat_ns.percentile``, in microseconds), the same for ``write_``, ``read_clat_mean_us``,
  ``runtime_s``;
* sysbench (1.0 text output): ``events_per_s``, ``latency_min_ms``, ``latency_avg_ms``,
  ``latency_max_ms``, ``latency_p95_ms``, ``total_events``, ``total_time_s``; memory adds
  ``mib_per_s`` and ``operations_per_s``; fileio adds ``reads_per_s``, ``writes_per_s``,
  ``fsyncs_per_s``, ``read_mib_per_s``, ``written_mib_per_s``.

The *score* of a run (what the history compares) is ``iops`` for fio and
``events_per_s`` for sysbench.
"""

from __future__ import annotations

import json
import re
from typing import Any

from kvmops.errors import GuestCommandError

__all__ = ["PERCENTILES", "parse_fio", "parse_sysbench", "score_metric"]

# fio's percentile keys ("99.900000") -> our metric suffix ("p99.9").
PERCENTILES = {"50.000000": "p50", "95.000000": "p95", "99.000000": "p99",
               "99.900000": "p99.9"}


def score_metric(kind: str) -> str:
    """The metric a run of ``kind`` is compared by (higher is better)."""
    return "iops" if kind == "fio" else "events_per_s"


def _fio_document(text: str) -> dict[str, Any]:
    """fio prints warnings ("fio: ...") before its JSON on stdout: start at the first
    line that opens an object."""
    match = re.search(r"^\{", text, re.MULTILINE)
    if match is None:
        raise GuestCommandError(f"fio printed no JSON result: {_excerpt(text)}")
    try:
        document, _end = json.JSONDecoder().raw_decode(text, match.start())
    except json.JSONDecodeError as err:
        raise GuestCommandError(f"fio's JSON result is unreadable ({err.msg} at line "
                                f"{err.lineno}): {_excerpt(text)}") from err
    if not isinstance(document, dict) or not document.get("jobs"):
        raise GuestCommandError(f"fio's JSON result has no jobs: {_excerpt(text)}")
    return document


def _excerpt(text: str, limit: int = 200) -> str:
    flat = " ".join(text.split())
    return (flat[:limit] + "...") if len(flat) > limit else (flat or "(nothing)")


def parse_fio(text: str) -> dict[str, float]:
    """Metrics of fio's JSON output (jobs summed; latencies of the first job, which is
    the only one with ``--group_reporting``)."""
    document = _fio_document(text)
    jobs = [j for j in document["jobs"] if isinstance(j, dict)]
    failed = [j for j in jobs if j.get("error")]
    if failed:
        raise GuestCommandError(f"fio job '{failed[0].get('jobname', '?')}' failed with "
                                f"error {failed[0]['error']}")
    metrics: dict[str, float] = {}
    for side in ("read", "write"):
        iops = sum(float(j.get(side, {}).get("iops", 0.0)) for j in jobs)
        metrics[f"{side}_iops"] = round(iops, 2)
        metrics[f"{side}_bw_bytes"] = float(sum(int(j.get(side, {}).get("bw_bytes", 0))
                                                for j in jobs))
        first = jobs[0].get(side, {})
        clat = first.get("clat_ns", {}) if isinstance(first, dict) else {}
        if not first.get("total_ios"):
            continue
        if clat.get("mean") is not None:
            metrics[f"{side}_clat_mean_us"] = round(float(clat["mean"]) / 1000.0, 3)
        for key, name in PERCENTILES.items():
            value = clat.get("percentile", {}).get(key)
            if value is not None:
                metrics[f"{side}_clat_{name}_us"] = round(float(value) / 1000.0, 3)
    metrics["iops"] = round(metrics["read_iops"] + metrics["write_iops"], 2)
    runtime_ms = max((int(j.get("job_runtime", 0)) for j in jobs), default=0)
    metrics["runtime_s"] = round(runtime_ms / 1000.0, 3)
    if metrics["iops"] == 0.0:
        raise GuestCommandError("fio completed no I/O (0 IOPS)",
                                hint="check the target and the --size/--runtime given")
    return metrics


_NUMBER = r"([0-9]+(?:\.[0-9]+)?)"
_SYSBENCH_PATTERNS: dict[str, str] = {
    "events_per_s": rf"events per second:\s*{_NUMBER}",
    "total_time_s": rf"total time:\s*{_NUMBER}s",
    "total_events": rf"total number of events:\s*{_NUMBER}",
    "latency_min_ms": rf"Latency \(ms\):\s*\n\s*min:\s*{_NUMBER}",
    "latency_avg_ms": rf"Latency \(ms\):(?:\s*\n.*){{1}}\n\s*avg:\s*{_NUMBER}",
    "latency_max_ms": rf"Latency \(ms\):(?:\s*\n.*){{2}}\n\s*max:\s*{_NUMBER}",
    "latency_p95_ms": rf"95th percentile:\s*{_NUMBER}",
    # memory
    "operations_per_s": rf"Total operations:\s*[0-9]+\s*\({_NUMBER} per second\)",
    "mib_per_s": rf"MiB transferred \({_NUMBER} MiB/sec\)",
    # fileio
    "reads_per_s": rf"reads/s:\s*{_NUMBER}",
    "writes_per_s": rf"writes/s:\s*{_NUMBER}",
    "fsyncs_per_s": rf"fsyncs/s:\s*{_NUMBER}",
    "read_mib_per_s": rf"read, MiB/s:\s*{_NUMBER}",
    "written_mib_per_s": rf"written, MiB/s:\s*{_NUMBER}",
}
_REQUIRED = {
    "cpu": ("events_per_s",),
    "memory": ("operations_per_s", "mib_per_s"),
    "fileio": ("reads_per_s", "writes_per_s"),
}


def parse_sysbench(test: str, text: str) -> dict[str, float]:
    """Metrics of sysbench 1.0's text output of ``test`` (cpu, memory, fileio)."""
    metrics: dict[str, float] = {}
    for name, pattern in _SYSBENCH_PATTERNS.items():
        match = re.search(pattern, text)
        if match:
            metrics[name] = float(match.group(1))
    if "events_per_s" not in metrics and metrics.get("total_time_s") and \
            "total_events" in metrics:
        # memory and fileio print no events/s: the same rate from the totals.
        metrics["events_per_s"] = round(metrics["total_events"] / metrics["total_time_s"], 2)
    missing = [m for m in (*_REQUIRED.get(test, ()), "events_per_s") if m not in metrics]
    if missing:
        raise GuestCommandError(f"sysbench {test} output has no {', '.join(missing)}: "
                                f"{_excerpt(text)}")
    return metrics
