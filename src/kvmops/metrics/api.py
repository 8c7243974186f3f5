"""The API's request latency histogram (observed by the server's middleware)."""

from __future__ import annotations

from prometheus_client import Histogram

#: Seconds; API calls range from a cached list (ms) to a stats call under its deadline.
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

REQUEST_DURATION = Histogram(
    "kvmops_api_request_duration_seconds",
    "How long the kvmops API took to answer, by method, route template and status.",
    ["method", "route", "status"], buckets=BUCKETS, registry=None)


def observe(method: str, route: str, status: int, seconds: float) -> None:
    REQUEST_DURATION.labels(method=method, route=route, status=str(status)).observe(seconds)
