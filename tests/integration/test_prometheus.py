"""A real Prometheus (Debian's ``prometheus``) scrapes ``kvmops exporter`` and Debian's
``prometheus-libvirt-exporter`` (kumina's) side by side, with kvmops' shipped alert rules
loaded: PromQL returns the guests' series, kumina's series are a subset of kvmops' for
the same VMs, every dashboard query runs, and a crashed VM fires its alert.

One module-wide stack (all on loopback, free ports, killed at the end): the session's
booted guest, a paused guest with a NIC on an isolated network of this module (interface
series without a second boot), the two exporters and Prometheus scraping both every 2 s
(a 1 s timeout would drop the scrapes of a loaded 2-core machine)."""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import libvirt
import pytest
import yaml

from kvmops.host.connection import Host
from kvmops.services import monitoring
from kvmops.testing.procs import stop_process
from tests import promql
from tests.conftest import REPO, SESSION_PREFIX, run_cli
from tests.integration.api_server import ApiServer, add_users, free_port, start_server

SCRAPE_S = 2
WAIT_S = 90  # for series to appear: scrapes, rule evaluations (bounded, not timed)

# Panels that must show data for this module's guests (others need backups, pools,
# jobs, API requests, a doctor run or a slow domain).
CORE_PANELS = ("Host answering", "VMs running", "VMs defined",
               "Memory: RAM and committed to running VMs", "CPU used by VMs (cores)",
               "Statistics call duration", "VM CPU (% of its vCPUs)", "VM memory",
               "VM disk throughput", "VM disk IOPS", "VM network throughput",
               "VM network packets", "vCPU delay (waiting for a host CPU)",
               "API latency p50 / p95 / p99", "API requests by status", "VM states")


@dataclass
class Stack:
    prometheus: str  # base URL
    server: ApiServer  # kvmops serve, scraped as job kvmops-server with a viewer's token
    vm: str  # booted, agent answering
    nic_vm: str  # paused, one NIC on ``bridge``
    bridge: str
    uuids: dict[str, str]

    def query(self, expr: str, at: float | None = None) -> list[dict[str, Any]]:
        params: dict[str, Any] = {"query": expr}
        if at is not None:
            params["time"] = at
        answer = httpx.get(f"{self.prometheus}/api/v1/query", params=params, timeout=30)
        body = answer.json()
        assert answer.status_code == 200 and body["status"] == "success", (expr, body)
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    def api(self, path: str) -> Any:
        answer = httpx.get(f"{self.prometheus}/api/v1/{path}", timeout=30)
        assert answer.status_code == 200, answer.text
        return answer.json()["data"]

    def wait_for(self, what: str, check: Callable[[], Any]) -> Any:
        """``check()``'s first truthy value within WAIT_S."""
        deadline = time.monotonic() + WAIT_S
        while True:
            value = check()
            if value:
                return value
            assert time.monotonic() < deadline, f"no {what} within {WAIT_S} s"
            time.sleep(0.5)


def _labels(series: dict[str, Any]) -> dict[str, str]:
    return {k: v for k, v in series["metric"].items() if k not in ("job", "instance")}


def _value(series: dict[str, Any]) -> float:
    return float(series["value"][1])


def _start(argv: list[str], log: Path, url: str, procs: list[subprocess.Popen[bytes]]
           ) -> None:
    """Start a server and wait until ``url`` answers 200."""
    out = log.open("wb")
    proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, cwd=REPO,
                            start_new_session=True)
    procs.append(proc)
    deadline = time.monotonic() + 60
    while True:
        assert proc.poll() is None, f"{argv[0]} exited: {log.read_text()}"
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=5).status_code == 200:
                return
        assert time.monotonic() < deadline, f"{argv[0]} did not answer: {log.read_text()}"
        time.sleep(0.2)


@pytest.fixture(scope="module")
def stack(running_vm: str, vm_factory: Callable[..., str], host: Host,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    for tool in ("prometheus", "prometheus-libvirt-exporter"):
        assert shutil.which(tool), f"{tool} is missing: run scripts/setup-host.sh"
    work = tmp_path_factory.mktemp("prometheus")
    net = f"{SESSION_PREFIX}prom"
    procs: list[subprocess.Popen[bytes]] = []
    nic_vm = ""
    server: ApiServer | None = None
    created = run_cli("net", "create", net, "--mode", "isolated")
    assert created.code == 0, created.stderr
    try:
        nic_vm = vm_factory("--network", net)
        host.domain(nic_vm).createWithFlags(libvirt.VIR_DOMAIN_START_PAUSED)
        bridge = host.conn.networkLookupByName(net).bridgeName()
        ports = {"kvmops": free_port(), "kumina": free_port(), "prometheus": free_port()}
        kvmops = f"127.0.0.1:{ports['kvmops']}"
        _start([sys.executable, "-m", "kvmops.cli.main", "exporter", "--listen", kvmops,
                "--host", "local", "--db", f"sqlite:///{work / 'kvmops.db'}"],
               work / "kvmops-exporter.log", f"http://{kvmops}/metrics", procs)
        kumina = f"127.0.0.1:{ports['kumina']}"
        _start(["prometheus-libvirt-exporter", f"--web.listen-address={kumina}"],
               work / "kumina.log", f"http://{kumina}/metrics", procs)
        server = start_server(f"sqlite:///{work / 'api.db'}", work)
        add_users(server)
        (work / "viewer-token").write_text(server.tokens["viewer"])
        (work / monitoring.RULES_FILE).write_text(monitoring.alert_rules())
        config = {
            "global": {"scrape_interval": f"{SCRAPE_S}s", "scrape_timeout": f"{SCRAPE_S}s",
                       "evaluation_interval": "1s"},
            "rule_files": [str(work / monitoring.RULES_FILE)],
            "scrape_configs": [
                {"job_name": "kvmops", "static_configs": [{"targets": [kvmops]}]},
                {"job_name": "kumina", "static_configs": [{"targets": [kumina]}]},
                {"job_name": "kvmops-server",  # as docs/concepts/observability.md says
                 "authorization": {"credentials_file": str(work / "viewer-token")},
                 "static_configs": [{"targets": [server.url.removeprefix("http://")]}]}]}
        (work / "prometheus.yml").write_text(yaml.safe_dump(config))
        url = f"http://127.0.0.1:{ports['prometheus']}"
        _start(["prometheus", f"--config.file={work / 'prometheus.yml'}",
                f"--storage.tsdb.path={work / 'data'}",
                f"--web.listen-address=127.0.0.1:{ports['prometheus']}"],
               work / "prometheus.log", f"{url}/-/ready", procs)
        stack = Stack(url, server, running_vm, nic_vm, bridge,
                      {name: host.domain(name).UUIDString() for name in (running_vm, nic_vm)})
        for job in ("kvmops", "kumina"):
            for name in (running_vm, nic_vm):
                stack.wait_for(f"{job}'s series of {name}", lambda job=job, name=name: stack.query(
                    f'libvirt_domain_info_cpu_time_seconds_total{{job="{job}",domain="{name}"}}'))
        yield stack
    finally:
        for proc in procs:
            stop_process(proc)
        if server is not None:
            server.stop()
        if nic_vm:  # before its network, which refuses to go while a VM uses it
            with contextlib.suppress(libvirt.libvirtError):
                host.domain(nic_vm).destroy()
            run_cli("vm", "undefine", nic_vm, "--remove-storage")
        deleted = run_cli("net", "delete", net)
        assert deleted.code == 0, deleted.stderr


def test_promql_returns_the_guests_series(stack: Stack) -> None:
    vm, uuid = stack.vm, stack.uuids[stack.vm]

    def one(expr: str) -> dict[str, Any]:
        # waits out a scrape that timed out (Prometheus marks all its series stale)
        result: list[dict[str, Any]] = stack.wait_for(expr, lambda: stack.query(expr))
        assert len(result) == 1, (expr, result)
        return result[0]

    cpu = one(f'libvirt_domain_info_cpu_time_seconds_total{{job="kvmops",domain="{vm}"}}')
    assert _labels(cpu) == {"__name__": "libvirt_domain_info_cpu_time_seconds_total",
                            "domain": vm, "uuid": uuid, "host": "local"}
    assert _value(cpu) > 0
    assert _value(one(f'libvirt_domain_info_virtual_cpus{{job="kvmops",domain="{vm}"}}')) == 1
    assert _value(one(f'libvirt_domain_info_maximum_memory_bytes{{job="kvmops",'
                      f'domain="{vm}"}}')) == 256 * 2**20
    assert _value(one(f'libvirt_domain_state_code{{job="kvmops",domain="{vm}"}}')) == 1
    state = one(f'kvmops_domain_state{{job="kvmops",domain="{vm}"}} == 1')
    assert state["metric"]["state"] == "running", state
    # 1 for a moment when the domain's QEMU was busy with another call (NOWAIT)
    assert _value(one(f'libvirt_domain_timed_out{{job="kvmops",domain="{vm}"}} == 0')) == 0
    assert _value(one(f'libvirt_domain_block_stats_read_bytes_total{{job="kvmops",'
                      f'domain="{vm}",target_device="vda"}}')) > 0
    assert _value(one(f'libvirt_domain_vcpu_time_seconds_total{{job="kvmops",domain="{vm}",'
                      'vcpu="0"}')) > 0
    assert _value(one(f'libvirt_domain_memory_stats_rss_bytes{{job="kvmops",domain="{vm}"}}')) > 0
    stack.wait_for("an answering agent", lambda: stack.query(
        f'kvmops_guest_agent_responsive{{domain="{vm}",uuid="{uuid}"}} == 1'))
    paused = one(f'kvmops_domain_state{{job="kvmops",domain="{stack.nic_vm}"}} == 1')
    assert (paused["metric"]["state"], paused["metric"]["reason"]) == ("paused", "user")
    nic = one(f'libvirt_domain_interface_stats_receive_bytes_total{{job="kvmops",'
              f'domain="{stack.nic_vm}"}}')
    assert nic["metric"]["source_bridge"] == stack.bridge
    assert nic["metric"]["target_device"].startswith("vnet")
    assert _value(one('kvmops_host_up{job="kvmops",host="local"}')) == 1
    assert _value(one('kvmops_host_memory_bytes{job="kvmops",host="local"}')) > 2**30
    stack.wait_for("both targets up", lambda: {
        s["metric"]["job"]: _value(s) for s in stack.query("up")} == {"kvmops": 1, "kumina": 1,
                                                        "kvmops-server": 1})


def _samples(stack: Stack, selector: str, at: float) -> dict[tuple[tuple[str, str], ...],
                                                               list[tuple[float, float]]]:
    """Every raw sample of the series in the 30 s up to ``at``, by label set."""
    out = {}
    for series in stack.query(f"{{{selector}}}[{15 * SCRAPE_S}s]", at):
        out[tuple(sorted(_labels(series).items()))] = [(float(t), float(v))
                                                       for t, v in series["values"]]
    return out


def test_kumina_series_are_a_subset_of_kvmops(stack: Stack) -> None:
    """For each kumina series of these VMs (and the host-wide ones): kvmops has the same
    name with the same labels (plus ``host``) and the same value; a counter's kvmops
    sample lies between kumina's samples around it (the exporters are scraped at
    different instants)."""
    for job in ("kumina", "kvmops"):
        stack.wait_for(f"{job}'s samples", lambda job=job: stack.query(
            f'count_over_time(libvirt_up{{job="{job}"}}[{15 * SCRAPE_S}s]) >= 6'))
    now = time.time()
    ours = (stack.vm, stack.nic_vm)
    selector = '__name__=~"libvirt_.+",domain=~"{}|"'.format("|".join(ours))
    kumina = _samples(stack, f'job="kumina",{selector}', now)
    kvmops = _samples(stack, f'job="kvmops",{selector}', now)
    # Samples where kvmops reported a domain's last values (it did not answer in time
    # on this loaded machine) are not compared: that is libvirt_domain_timed_out's job.
    stale = {(dict(key)["domain"], t) for key, samples in kvmops.items()
             if dict(key)["__name__"] == "libvirt_domain_timed_out"
             for t, v in samples if v == 1}
    names = {dict(key)["__name__"] for key in kumina}
    assert {"libvirt_up", "libvirt_domains_number", "libvirt_domain_state_code",
            "libvirt_domain_info_cpu_time_seconds_total",
            "libvirt_domain_block_stats_read_bytes_total",
            "libvirt_domain_interface_stats_transmit_bytes_total"} <= names, names
    assert {dict(key).get("domain") for key in kumina} == {None, *ours}
    mismatches: list[tuple[Any, ...]] = []
    for key, theirs in kumina.items():
        labels = dict(key)
        matches = [samples for other, samples in kvmops.items()
                   if labels.items() <= dict(other).items()]
        if len(matches) != 1:
            mismatches.append((labels, f"{len(matches)} kvmops series"))
            continue
        # kvmops' newest sample with two kumina samples on each side of it: a sample's
        # time is its scrape's start, the reading comes later in the scrape (up to its
        # duration), so the bracket is one scrape wider on each side.
        inside = [(t, v) for t, v in matches[0]
                  if len(theirs) >= 4 and theirs[1][0] <= t <= theirs[-2][0]
                  and (labels.get("domain"), t) not in stale]
        if not inside:
            mismatches.append((labels, "no kvmops sample between kumina's", theirs,
                               matches[0]))
            continue
        at, value = inside[-1]
        last_before = max(i for i, (t, _) in enumerate(theirs) if t <= at)
        first_after = min(i for i, (t, _) in enumerate(theirs) if t >= at)
        before, after = theirs[last_before - 1][1], theirs[first_after + 1][1]
        name = labels["__name__"]
        if "domain" not in labels:
            # host-wide: other sessions' VMs come and go, and kumina's scrape fails
            # (libvirt_up 0) when one vanishes under it
            if name == "libvirt_up" and value != 1:
                mismatches.append((labels, value))
            continue
        if name.endswith("_total"):
            slack = 0.011 if "seconds" in name else 0  # kumina: 10 ms steps
            if not before - slack <= value <= after + slack:
                mismatches.append((labels, value, (before, after)))
        elif not math.isclose(value, before):
            mismatches.append((labels, value, before))
    assert not mismatches, mismatches


def test_every_dashboard_query_runs_and_core_panels_have_data(stack: Stack) -> None:
    domains = f"{stack.vm}|{stack.nic_vm}"
    stack.wait_for("two samples for rates", lambda: stack.query(
        f'count_over_time(libvirt_domain_info_cpu_time_seconds_total{{domain="{stack.vm}",'
        'job="kvmops"}[30s]) >= 3'))
    with_data: set[str] = set()
    queries = promql.dashboard_queries(host="local", domain=domains)

    def core_panels_have_data() -> bool:
        """Every query runs (an error of Prometheus fails); data seen in any round
        counts (a scrape that timed out hides the exporter's series for a moment)."""
        for query in queries:
            if stack.query(query.expr):
                with_data.add(query.where)
        return all(any(where.startswith(f"panel {title!r} ") for where in with_data)
                   for title in CORE_PANELS)

    deadline = time.monotonic() + WAIT_S
    while not core_panels_have_data() and time.monotonic() < deadline:
        time.sleep(1)
    # A panel has data when one of its queries has (not every VM has balloon stats).
    empty = [title for title in CORE_PANELS
             if not any(where.startswith(f"panel {title!r} ") for where in with_data)]
    assert not empty, empty
    assert any(q.where.startswith(f"panel {CORE_PANELS[-1]!r} ") for q in queries)
    assert {"variable host", "variable domain"} <= with_data
    values = stack.api("label/domain/values?match[]="
                       "libvirt_domain_info_cpu_time_seconds_total")
    assert {stack.vm, stack.nic_vm} <= set(values)


def test_the_shipped_rules_load_and_evaluate(stack: Stack) -> None:
    shipped = [rule["alert"] for rule in promql.rules()]

    def evaluated() -> list[dict[str, Any]] | None:
        rules = [rule for group in stack.api("rules")["groups"] for rule in group["rules"]]
        return rules if all(rule.get("lastEvaluation", "").startswith("2")
                            and not rule["lastEvaluation"].startswith("0001")
                            for rule in rules) else None

    rules = stack.wait_for("an evaluation of every rule", evaluated)
    assert sorted(rule["name"] for rule in rules) == sorted(shipped)
    bad = [(rule["name"], rule["health"], rule.get("lastError")) for rule in rules
           if rule["health"] != "ok"]
    assert not bad, bad


def test_a_crashed_vm_fires_its_alert(stack: Stack, vm_factory: Callable[..., str],
                                      host: Host) -> None:
    """KVM's 'VM crashed' for real: the QEMU of a (paused) VM killed with SIGKILL;
    libvirt reports it shut off (crashed) and the shipped rule fires."""
    name = vm_factory()
    domain = host.domain(name)
    domain.createWithFlags(libvirt.VIR_DOMAIN_START_PAUSED)

    def firing() -> list[dict[str, Any]]:
        return [a for a in stack.api("alerts")["alerts"]
                if a["labels"]["alertname"] == "KvmopsVMCrashed"
                and a["labels"].get("domain") == name and a["state"] == "firing"]

    stack.wait_for(f"{name} paused in Prometheus", lambda: stack.query(
        f'kvmops_domain_state{{domain="{name}",state="paused"}} == 1'))
    assert not firing()
    pid = int(Path(f"/run/libvirt/qemu/{name}.pid").read_text())
    os.kill(pid, signal.SIGKILL)
    alert = stack.wait_for("the KvmopsVMCrashed alert", firing)[0]
    assert alert["labels"]["state"] == "shutoff" and alert["labels"]["reason"] == "crashed"
    assert alert["labels"]["severity"] == "critical" and alert["labels"]["host"] == "local"
    assert name in alert["annotations"]["summary"]
    assert domain.state() == [libvirt.VIR_DOMAIN_SHUTOFF, libvirt.VIR_DOMAIN_SHUTOFF_CRASHED]


def test_the_server_is_scraped_with_a_viewer_token(stack: Stack) -> None:
    """The docs' scrape job for ``kvmops serve``: its /metrics with a viewer's token has
    the same VM series as the exporter, and its own API latency histogram."""
    vm = stack.vm
    with stack.server.client("viewer") as client:
        assert client.get("/vms").status_code == 200
    stack.wait_for("the server's series of the VM", lambda: stack.query(
        f'libvirt_domain_info_virtual_cpus{{job="kvmops-server",domain="{vm}"}} == 1'))
    routes = stack.wait_for("the API latency of GET /api/v1/vms", lambda: stack.query(
        'kvmops_api_request_duration_seconds_count{job="kvmops-server",method="GET",'
        'route="/api/v1/vms",status="200"} > 0'))
    assert routes[0]["metric"]["route"] == "/api/v1/vms"
