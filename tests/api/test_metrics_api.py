"""GET /metrics on the server: a viewer's token is enough, none is 401; the body is
Prometheus text with the hosts' series and the API's own latency histogram."""

from __future__ import annotations

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.api_server import ApiServer


def _families(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    found: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found.setdefault(sample.name, []).append((sample.labels, sample.value))
    return found


def test_metrics_needs_a_token(api: ApiServer) -> None:
    response = httpx.get(api.url + "/metrics")
    assert response.status_code == 401
    bad = httpx.get(api.url + "/metrics", headers={"Authorization": "Bearer nope"})
    assert bad.status_code == 401


def test_metrics_for_a_viewer(api: ApiServer) -> None:
    assert httpx.get(api.url + "/api/v1/health").status_code == 200
    assert httpx.get(api.url + "/metrics").status_code == 401
    headers = {"Authorization": f"Bearer {api.tokens['viewer']}"}
    response = httpx.get(api.url + "/metrics", headers=headers, timeout=60)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    series = _families(response.text)
    assert ({"host": "local"}, 1.0) in series["libvirt_up"]
    assert ({"host": "local"}, 1.0) in series["kvmops_host_up"]
    assert "libvirt_domains_number" in series
    health = [labels for labels, _ in series["kvmops_api_request_duration_seconds_count"]
              if labels["route"] == "/api/v1/health"]
    assert {"method": "GET", "route": "/api/v1/health", "status": "200"} in health
    # the refused scrape is observed too
    assert {"method": "GET", "route": "/metrics", "status": "401"} in [
        labels for labels, _ in series["kvmops_api_request_duration_seconds_count"]]
