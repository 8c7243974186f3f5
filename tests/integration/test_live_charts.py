"""Live charts and ``kvmops top`` against one running tiny guest (booted once for the
module): ``top --once --json`` lists it running with a numeric CPU %, a guest burning
CPU shows more than when idle; the server's sampler fills
``GET /api/v1/vms/{name}/samples`` and ``/hosts/{name}/samples``; the VM page and
the dashboard draw their charts with data points in a real headless Chromium; with a
second host (``KVMOPS_TEST_H2_INDEX``) ``top --host all`` lists both hosts' VMs and the
sampler keeps that host's series too."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from kvmops.devguest.build import GuestImage
from tests.conftest import SESSION_PREFIX, assert_one_line_error, run_cli
from tests.integration.api_server import server_with_host
from tests.integration.nshost import defined_vm, second_host

SAMPLE_ENV = {"KVMOPS_SAMPLE_INTERVAL": "1"}
BUSY = "timeout 60 sh -c 'while :; do :; done' >/dev/null 2>&1 & echo $! > /tmp/busy.pid"


@pytest.fixture(scope="module")
def guest(vm_factory: Callable[..., str]) -> str:
    return vm_factory(start=True)


def top_row(vm: str, *args: str) -> dict[str, Any]:
    result = run_cli("top", "--once", "--json", *args)
    assert result.code == 0, result.stderr
    rows = json.loads(result.stdout)
    assert isinstance(rows, list)
    found = [row for row in rows if row["name"] == vm]
    assert len(found) == 1, rows
    return found[0]


def test_top_once_json_lists_the_running_guest(guest: str) -> None:
    row = top_row(guest)
    assert row["state"] == "running"
    assert isinstance(row["cpu_percent"], float | int) and row["cpu_percent"] >= 0
    assert row["memory_bytes"] > 0
    assert row["host"] == "local"
    assert row["agent"] == "connected"
    assert {"disk_read_bps", "disk_write_bps", "net_rx_bps", "net_tx_bps"} <= set(row)


def test_a_guest_burning_cpu_shows_more_cpu(guest: str) -> None:
    idle = top_row(guest, "--delay", "3")["cpu_percent"]
    started = run_cli("guest", "exec", guest, "--timeout", "60", "--", "/bin/sh", "-c", BUSY)
    assert started.code == 0, started.stderr
    try:
        busy = top_row(guest, "--delay", "3", "--sort", "name")["cpu_percent"]
    finally:
        run_cli("guest", "exec", guest, "--", "/bin/sh", "-c", "kill $(cat /tmp/busy.pid)")
    assert busy > idle, (idle, busy)


def test_top_refuses_bad_options_in_one_line() -> None:
    assert_one_line_error(run_cli("top", "--once", "--sort", "bogus"), 2, "bogus", "cpu")
    assert_one_line_error(run_cli("top", "--json"), 2, "--json needs --once")
    assert_one_line_error(run_cli("top", "--once", "--host", "nosuchhost"), 3, "nosuchhost")


# --------------------------------------------------------------------------- server
@pytest.fixture(scope="module")
def charts_server(guest: str) -> Iterator[tuple[Any, str]]:
    """A server sampling every second with a viewer 'cview' (and its API token)."""
    from tests.integration.browser import web_server

    with web_server("kvmops-charts-", [("cview", "viewer", "charts-view-1")],
                    extra_env=SAMPLE_ENV) as server:
        token = run_cli("user", "token", "cview", "--db", server.db)
        assert token.code == 0, token.stderr
        yield server, token.stdout.strip().splitlines()[-1]


def wait_samples(client: httpx.Client, url: str, key: str, points: int = 3
                 ) -> dict[str, Any]:
    """The samples once ``key`` has ``points`` known values (the sampler takes one a
    second); fails after two minutes."""
    deadline = time.monotonic() + 120
    while True:
        resp = client.get(url)
        assert resp.status_code == 200, resp.text
        data: dict[str, Any] = resp.json()
        if sum(v is not None for v in data["series"][key]) >= points:
            return data
        assert time.monotonic() < deadline, data
        time.sleep(0.5)


def test_samples_api_serves_the_sampler_series(charts_server: tuple[Any, str],
                                               guest: str) -> None:
    server, token = charts_server
    with httpx.Client(base_url=server.url + "/api/v1", timeout=60,
                      headers={"Authorization": f"Bearer {token}"}) as client:
        vm = wait_samples(client, f"/vms/{guest}/samples", "cpu_percent")
        assert vm["name"] == guest and vm["host"] == "local" and vm["interval_s"] == 1
        assert set(vm["series"]) == {"cpu_percent", "memory_bytes", "disk_read_bps",
                                     "disk_write_bps", "net_rx_bps", "net_tx_bps"}
        assert all(len(col) == len(vm["times"]) for col in vm["series"].values())
        assert vm["times"] == sorted(vm["times"])
        assert all(v > 0 for v in vm["series"]["memory_bytes"])
        assert all(v >= 0 for v in vm["series"]["cpu_percent"] if v is not None)

        host = wait_samples(client, "/hosts/local/samples", "cpu_percent")
        assert 0 <= [v for v in host["series"]["cpu_percent"] if v is not None][-1] <= 100
        assert host["series"]["memory_used_bytes"][-1] > 0
        assert host["series"]["vms_running"][-1] >= 1

        missing = client.get("/vms/kvmops-no-such-vm/samples")
        assert missing.status_code == 404 and "kvmops-no-such-vm" in missing.json()["error"]
        assert client.get("/hosts/nosuchhost/samples").status_code == 404
    assert httpx.get(server.url + f"/api/v1/vms/{guest}/samples").status_code == 401


def test_vm_page_and_dashboard_draw_charts(charts_server: tuple[Any, str],
                                           guest: str) -> None:
    pytest.importorskip("playwright.sync_api")
    from tests.integration.browser import CHROMIUM, chromium_page, log_in

    if not CHROMIUM.exists():
        pytest.fail("chromium missing: run scripts/setup-host.sh")
    server, _token = charts_server
    drawn = ("(sel) => { const c = [...document.querySelectorAll(sel + ' .chart')];"
             " return c.length === 4 && c.every((e) => e.querySelector('canvas'))"
             " && Number(c[0].dataset.points) >= 2; }")
    with chromium_page() as page:
        log_in(page, server.url, "cview", "charts-view-1")
        page.wait_for_function(drawn, arg="#host-charts", timeout=120_000)
        assert page.locator("#host-charts .chart-title").first.inner_text().startswith("CPU")

        page.goto(f"{server.url}/vms/{guest}")
        page.wait_for_function(drawn, arg="#charts", timeout=120_000)
        titles = page.locator("#charts .chart-title").all_inner_texts()
        assert [t.split(" ")[0] for t in titles] == ["CPU", "Memory", "Disk", "Network"]
        memory = page.locator("#charts .chart").nth(1)
        assert int(memory.get_attribute("data-points") or 0) >= 1


def test_top_and_the_sampler_cover_every_host(guest: str, tiny_guest: GuestImage,
                                              tmp_path: Path) -> None:
    """A second host with a VM started paused (nothing boots there)."""
    env = {"KVMOPS_DB": f"sqlite:///{tmp_path / 'hosts.db'}"}
    with second_host(f"{SESSION_PREFIX}lch") as h2, defined_vm(
            h2.uri, f"{SESSION_PREFIX}lcvm", str(tiny_guest.kernel),
            str(tiny_guest.initrd)) as vm:
        assert run_cli("host", "add", "h2", h2.uri, env=env).code == 0
        started = run_cli("vm", "start", vm, "--paused", "--host", "h2", env=env)
        assert started.code == 0, started.stderr
        listed = run_cli("top", "--once", "--json", "--host", "all", env=env)
        assert listed.code == 0 and "warning" not in listed.stderr, listed.stderr
        rows = {(row["host"], row["name"]): row for row in json.loads(listed.stdout)}
        assert rows[("local", guest)]["state"] == "running"
        assert rows[("h2", vm)]["state"] == "paused"
        assert ("local", vm) not in rows and ("h2", guest) not in rows

        workdir = tmp_path / "server"
        workdir.mkdir()
        with server_with_host(f"sqlite:///{workdir / 'kvmops.db'}", workdir, "h2", h2.uri,
                              extra_env=SAMPLE_ENV) as server, \
                server.client("viewer") as view:
            there = wait_samples(view, "/hosts/h2/samples", "memory_used_bytes")
            assert there["name"] == "h2" and there["series"]["vms_running"][-1] == 0
            paused = view.get(f"/vms/{vm}/samples", params={"host": "h2"})
            assert paused.status_code == 200, paused.text
            assert paused.json()["times"] == []  # only running VMs add points
            assert view.get(f"/vms/{guest}/samples", params={"host": "h2"}).status_code == 404
            assert view.get(f"/vms/{guest}/samples").status_code == 200
