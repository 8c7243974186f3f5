"""guest bench end to end: fio and sysbench in the tiny guest through its agent, parsed
and stored with the VM's configuration; an I/O limit set live (vm disk iotune) shows in
the next fio run and in the history's comparison; a guest without the tools is one
error line naming the package.

One booted guest for the module (``tools_vm``: tools disk + raw scratch disk); the
guest without the tools is the session's shared ``running_vm``. Runs are short (fio 3 s,
sysbench 2 s): TCG is slow. Results go to a database of the module's own (``--db``).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO, assert_one_line_error, run_cli
from tests.integration.api_server import add_users
from tests.integration.browser import chromium_page, web_server
from tests.integration.guest_tools import ToolsVm

LIMIT_IOPS = 25  # far below what the scratch disk does unthrottled, even under TCG
WEB_USER, WEB_PASSWORD = "benchop", "bench-password-1"
SHOTS = REPO / "test-output" / "screenshots"


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> str:
    return f"sqlite:///{tmp_path_factory.mktemp('bench') / 'bench.db'}"


def _cli_json(*args: str) -> Any:
    result = run_cli(*args, "--json")
    assert result.code == 0, (args, result.code, result.stdout, result.stderr)
    return json.loads(result.stdout)


def _fio(vm: ToolsVm, db: str) -> dict[str, Any]:
    run: dict[str, Any] = _cli_json(
        "guest", "bench", "fio", vm.name, "--rw", "randread", "--bs", "4k", "--iodepth", "4",
        "--size", "16M", "--runtime", "3", "--target", vm.scratch_dev, "--db", db)
    return run


def test_fio_sysbench_and_an_iotune_limit_compared(tools_vm: ToolsVm, db: str) -> None:
    target = tools_vm.scratch_target
    first = _fio(tools_vm, db)
    m = first["metrics"]
    assert first["kind"] == "fio" and first["test"] == "randread"
    assert m["read_iops"] > 0 and m["write_iops"] == 0 and m["iops"] == m["read_iops"]
    assert m["read_bw_bytes"] > 0
    assert 0 < m["read_clat_p50_us"] <= m["read_clat_p99_us"] <= m["read_clat_p99.9_us"]
    assert first["params"]["target"] == tools_vm.scratch_dev and first["params"]["direct"]
    config = first["config"]
    assert config["vcpus"] == 1 and config["memory_bytes"] == 256 * 1024 * 1024
    assert config["disk"] == target and config["host"] == "local"
    assert config["disks"][target]["iotune"]["total_iops"] == 0
    assert m["iops"] > 4 * LIMIT_IOPS, f"the unthrottled run is too slow to compare: {m}"

    cpu = _cli_json("guest", "bench", "sysbench", tools_vm.name, "cpu", "--time", "2",
                    "--db", db)
    assert cpu["kind"] == "sysbench" and cpu["metrics"]["events_per_s"] > 0
    assert cpu["metrics"]["latency_avg_ms"] > 0 and cpu["score"] == cpu["metrics"]["events_per_s"]

    set_limit = run_cli("vm", "disk", "iotune", tools_vm.name, target, "--total-iops",
                        str(LIMIT_IOPS))
    assert set_limit.code == 0, set_limit.stderr
    assert f"total_iops={LIMIT_IOPS}" in set_limit.stdout + set_limit.stderr
    shown = _cli_json("vm", "disk", "iotune", tools_vm.name, target)
    assert shown["live"] and shown["limits"]["total_iops"] == LIMIT_IOPS

    limited = _fio(tools_vm, db)
    assert limited["config"]["disks"][target]["iotune"]["total_iops"] == LIMIT_IOPS
    # QEMU's throttle holds the rate (a burst of a tenth of a second at most).
    assert limited["metrics"]["iops"] <= LIMIT_IOPS * 1.5, limited["metrics"]
    assert limited["metrics"]["iops"] < m["iops"] / 2

    history = _cli_json("guest", "bench", "history", tools_vm.name, "--kind", "fio",
                        "--db", db)
    assert [e["run"]["id"] for e in history] == [first["id"], limited["id"]]
    assert history[0]["previous_id"] is None
    latest = history[1]
    assert latest["previous_id"] == first["id"]
    assert latest["change_percent"] < -50
    assert latest["config_changes"] == [f"{target} iotune total_iops 0→{LIMIT_IOPS}"]
    everything = _cli_json("guest", "bench", "history", tools_vm.name, "--db", db)
    assert {e["run"]["kind"] for e in everything} == {"fio", "sysbench"}

    table = run_cli("guest", "bench", "history", tools_vm.name, "--db", db)
    assert table.code == 0, table.stderr
    assert f"total_iops 0→{LIMIT_IOPS}" in table.stdout and "sysbench cpu" in table.stdout
    show = run_cli("guest", "bench", "show", str(limited["id"]), "--db", db)
    assert show.code == 0, show.stderr
    assert f"total_iops={LIMIT_IOPS}" in show.stdout and "p50/p95/p99/p99.9" in show.stdout

    removed = run_cli("vm", "disk", "iotune", tools_vm.name, target, "--total-iops", "0")
    assert removed.code == 0, removed.stderr
    assert _cli_json("vm", "disk", "iotune", tools_vm.name, target)["limits"]["total_iops"] == 0


def test_a_guest_without_the_tools_names_the_package(running_vm: str, tmp_path: Path
                                                     ) -> None:
    db = f"sqlite:///{tmp_path / 'bench.db'}"
    result = run_cli("guest", "bench", "fio", running_vm, "--runtime", "1", "--db", db)
    assert_one_line_error(result, 3, f"fio is not installed in the guest of VM '{running_vm}'",
                          "install the 'fio' package")
    result = run_cli("guest", "bench", "sysbench", running_vm, "memory", "--time", "1",
                     "--db", db)
    assert_one_line_error(result, 3, "sysbench is not installed", "'sysbench' package")
    empty = run_cli("guest", "bench", "history", running_vm, "--db", db)
    assert empty.code == 0 and "no benchmark runs" in empty.stdout + empty.stderr


def _job(client: Any, job_id: str) -> dict[str, Any]:
    """The job once it ended (bounded: a sysbench run of seconds, TCG's start-up)."""
    deadline = time.monotonic() + 300
    while True:
        job: dict[str, Any] = client.get(f"/jobs/{job_id}").json()
        if job["state"] in ("succeeded", "failed", "cancelled") or time.monotonic() > deadline:
            return job
        time.sleep(0.5)


def test_api_iotune_bench_job_history_and_the_guest_page(tools_vm: ToolsVm) -> None:
    vm, target = tools_vm.name, tools_vm.scratch_target
    with web_server("kvmops-bench-", [(WEB_USER, "operator", WEB_PASSWORD)]) as server:
        add_users(server)
        with server.client("viewer") as view, server.client("operator") as op:
            shown = view.get(f"/vms/{vm}/disks/{target}/iotune")
            assert shown.status_code == 200, shown.text
            assert view.put(f"/vms/{vm}/disks/{target}/iotune",
                            json={"read_iops": 40}).status_code == 403
            changed = op.put(f"/vms/{vm}/disks/{target}/iotune", json={"read_iops": 40})
            assert changed.status_code == 200, changed.text
            assert changed.json()["live"] and changed.json()["limits"]["read_iops"] == 40
            both = op.put(f"/vms/{vm}/disks/{target}/iotune",
                          json={"total_iops": 5, "read_iops": 5})
            assert both.status_code == 422 and "cannot both be set" in both.text
            assert op.put(f"/vms/{vm}/disks/{target}/iotune",
                          json={"read_iops": 0}).status_code == 200

            refused = op.post(f"/vms/{vm}/bench", json={"kind": "fio", "rw": "randwrite",
                                                        "target": tools_vm.scratch_dev})
            assert refused.status_code == 422 and "--overwrite" in refused.text
            assert view.post(f"/vms/{vm}/bench", json={"kind": "sysbench"}).status_code == 403
            started = op.post(f"/vms/{vm}/bench", json={"kind": "sysbench", "test": "cpu",
                                                        "time": 2})
            assert started.status_code == 202, started.text
            job = _job(op, started.json()["job_id"])
            assert job["state"] == "succeeded", job
            assert job["result"]["metrics"]["events_per_s"] > 0
            history = view.get(f"/vms/{vm}/bench").json()
            assert [(e["run"]["kind"], e["run"]["id"]) for e in history] == [
                ("sysbench", job["result"]["id"])]
            one = view.get(f"/vms/{vm}/bench/{job['result']['id']}")
            assert one.status_code == 200 and one.json()["test"] == "cpu"

        with chromium_page() as page:
            page.goto(server.url + "/login")
            page.fill("input[name=username]", WEB_USER)
            page.fill("input[name=password]", WEB_PASSWORD)
            page.click("button[type=submit]")
            page.wait_for_url(server.url + "/")
            page.goto(f"{server.url}/vms/{vm}/guest")
            rows = page.locator("#bench-table tbody tr")
            rows.first.wait_for(timeout=60_000)
            assert rows.count() == 1 and "sysbench cpu" in rows.first.inner_text()
            # a run from the page: the form starts the job, the table grows when it ends
            page.select_option("#bench-form select[name=bench]", "sysbench cpu")
            page.fill("#bench-form input[name=seconds]", "2")
            page.click("#bench-form button[type=submit]")
            page.locator("#guest-bench[data-state=succeeded]").wait_for(timeout=300_000)
            page.locator("#bench-table tbody tr").nth(1).wait_for(timeout=60_000)
            newest = rows.first.inner_text()
            assert "sysbench cpu" in newest and "%" in newest  # compared with the first
            chart = page.locator("[data-bench-chart]")
            assert chart.get_attribute("data-points") == "2"
            SHOTS.mkdir(parents=True, exist_ok=True)
            page.locator("#guest-bench").screenshot(path=str(SHOTS / "guest-bench.png"))
