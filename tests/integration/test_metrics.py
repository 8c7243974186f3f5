"""The standalone exporter against the real libvirtd: the series of a running tiny guest
with kumina's labels, a guest whose QEMU is stopped (SIGSTOP) reported ``timed_out``
within the deadline, and 500 scrapes while VMs start, stop and are undefined."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import libvirt
import pytest
from lxml import etree
from prometheus_client.parser import text_string_to_metric_families

from kvmops.devguest.build import GuestImage
from kvmops.host.connection import Host
from kvmops.testing.procs import stop_process
from tests.conftest import SESSION_PREFIX
from tests.integration.api_server import free_port

#: The exporter's deadline (its default); the churn test's is shorter: its scrapes that
#: wait for a domain being started or destroyed end sooner.
DEADLINE_S = 5.0
CHURN_DEADLINE_S = 2.0
Samples = dict[str, list[tuple[dict[str, str], float]]]


def _parse(text: str) -> Samples:
    found: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found.setdefault(sample.name, []).append((sample.labels, sample.value))
    return found


def _value(samples: Samples, name: str, **labels: str) -> float | None:
    for found, value in samples.get(name, []):
        if all(found.get(k) == v for k, v in labels.items()):
            return value
    return None


class Exporter:
    def __init__(self, url: str, proc: subprocess.Popen[str]) -> None:
        self.url, self.proc = url, proc

    def scrape(self) -> Samples:
        response = httpx.get(self.url, timeout=60)
        assert response.status_code == 200, response.text
        return _parse(response.text)


@pytest.fixture(scope="module")
def guest(vm_factory: Callable[..., str]) -> str:
    """This module's booted tiny guest (its QEMU gets stopped: not the shared one)."""
    return vm_factory(start=True)


@contextlib.contextmanager
def running_exporter(*args: str) -> Iterator[Exporter]:
    """``kvmops exporter`` on a free port with ``args``, stopped afterwards."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "kvmops.cli.main", "exporter", "--listen",
         f"127.0.0.1:{port}", *args],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # printed once it listens
        assert "serving metrics on" in line, line + proc.stdout.read()
        yield Exporter(f"http://127.0.0.1:{port}/metrics", proc)
    finally:
        stop_process(proc)


@pytest.fixture(scope="module")
def exporter(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Exporter]:
    db = tmp_path_factory.mktemp("exporter") / "kvmops.db"
    with running_exporter("--host", "local", "--deadline", str(DEADLINE_S),
                          "--db", f"sqlite:///{db}") as started:
        yield started


def scrape_until(exporter: Exporter, done: Callable[[Samples], bool]) -> Samples:
    """Scrapes until ``done`` holds (at most 30, half a second apart): the first scrape
    of a loaded host may find the guest stale, the agent's first answer comes later."""
    for _ in range(30):
        samples = exporter.scrape()
        if done(samples):
            break
        time.sleep(0.5)
    return samples


def test_exporter_serves_the_guest_series(exporter: Exporter, guest: str, host: Host
                                          ) -> None:
    uuid = host.domain(guest).UUIDString()
    me = {"domain": guest, "uuid": uuid, "host": "local"}
    samples = scrape_until(
        exporter, lambda s: _value(s, "libvirt_domain_timed_out", **me) == 0.0)
    assert _value(samples, "libvirt_up", host="local") == 1.0
    assert _value(samples, "kvmops_host_up", host="local") == 1.0
    assert _value(samples, "libvirt_domain_state_code", **me) == 1.0
    assert _value(samples, "kvmops_domain_state", **me, state="running") == 1.0
    assert _value(samples, "libvirt_domain_timed_out", **me) == 0.0
    assert (_value(samples, "libvirt_domain_info_cpu_time_seconds_total", **me) or 0) > 0
    assert _value(samples, "libvirt_domain_info_maximum_memory_bytes", **me) == 256 * 2**20
    assert _value(samples, "libvirt_domain_info_virtual_cpus", **me) == 1.0
    assert _value(samples, "libvirt_domain_vcpu_time_seconds_total", **me, vcpu="0")
    assert (_value(samples, "libvirt_domain_memory_stats_rss_bytes", **me) or 0) > 0
    disk = [labels for labels, _ in samples["libvirt_domain_block_stats_read_bytes_total"]
            if labels["domain"] == guest]
    assert len(disk) == 1 and disk[0]["target_device"] == "vda"
    assert disk[0]["source_file"].endswith(".qcow2") and disk[0]["uuid"] == uuid
    assert (_value(samples, "libvirt_domain_block_stats_read_requests_total", **me,
                   target_device="vda") or 0) > 0
    assert _value(samples, "libvirt_domain_block_stats_capacity_bytes", **me,
                  target_device="vda") == 64 * 2**20
    running = [labels for labels, _ in samples["kvmops_domain_state"]
               if labels["state"] in ("running", "paused", "blocked")]
    assert _value(samples, "libvirt_domains_number", host="local") == len(running)
    # the guest agent is pinged in the background: a later scrape has its answer
    later = scrape_until(
        exporter, lambda s: _value(s, "kvmops_guest_agent_responsive", **me) is not None)
    assert _value(later, "kvmops_guest_agent_responsive", **me) == 1.0


def _qemu_pid(name: str) -> int:
    return int(Path(f"/run/libvirt/qemu/{name}.pid").read_text().strip())


@contextlib.contextmanager
def stopped(pid: int) -> Iterator[None]:
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


def test_a_stopped_qemu_is_timed_out_within_the_deadline(exporter: Exporter, guest: str,
                                                         host: Host) -> None:
    uuid = host.domain(guest).UUIDString()
    me = {"domain": guest, "uuid": uuid, "host": "local"}
    before = scrape_until(
        exporter, lambda s: _value(s, "libvirt_domain_timed_out", **me) == 0.0)
    assert _value(before, "libvirt_domain_timed_out", **me) == 0.0
    cpu_before = _value(before, "libvirt_domain_info_cpu_time_seconds_total", **me)
    held: list[BaseException | tuple[int, ...]] = []

    def stats_call() -> None:  # a block statistics call: waits for the stopped QEMU
        with contextlib.suppress(libvirt.libvirtError), Host(host.uri) as own:
            held.append(tuple(own.domain(guest).blockStats("vda")))

    caller = threading.Thread(target=stats_call, daemon=True)
    with stopped(_qemu_pid(guest)):
        # first the exporter's own bulk call gets stuck on the guest's monitor: the
        # per-domain fallback answers for the others, the guest is stale
        first = exporter.scrape()
        caller.start()  # then another statistics call is underway too
        second = exporter.scrape()
        assert held == []  # the QEMU really did not answer meanwhile
    caller.join(60)
    for samples in (first, second):
        assert _value(samples, "libvirt_up", host="local") == 1.0
        assert _value(samples, "libvirt_domain_timed_out", **me) == 1.0
        assert _value(samples, "kvmops_domain_state", **me, state="running") == 1.0
        # its last values are reported, not dropped
        assert _value(samples, "libvirt_domain_info_cpu_time_seconds_total", **me) == \
            cpu_before
        duration = _value(samples, "kvmops_scrape_duration_seconds", host="local")
        assert duration is not None and duration <= DEADLINE_S
    # once the QEMU runs again the guest answers again
    after = scrape_until(
        exporter, lambda s: _value(s, "libvirt_domain_timed_out", **me) == 0.0)
    assert _value(after, "libvirt_domain_timed_out", **me) == 0.0


def _tiny_xml(name: str, domain_type: str, guest_image: GuestImage) -> str:
    return f"""<domain type='{domain_type}'>
  <name>{name}</name><memory unit='MiB'>64</memory><vcpu>1</vcpu>
  <os><type arch='x86_64'>hvm</type><kernel>{guest_image.kernel}</kernel>
    <initrd>{guest_image.initrd}</initrd><cmdline>console=ttyS0 quiet</cmdline></os>
  <on_poweroff>destroy</on_poweroff><devices/>
</domain>"""


def test_500_scrapes_while_vms_come_and_go(tmp_path: Path, guest: str, host: Host,
                                           tiny_guest: GuestImage) -> None:
    domain_type = etree.fromstring(host.domain(guest).XMLDesc(0).encode()).get("type", "qemu")
    names = [f"{SESSION_PREFIX}churn{i}" for i in range(2)]
    stop = threading.Event()
    cycles = [0]
    errors: list[str] = []

    def churn() -> None:
        with Host(host.uri) as own:
            while not stop.is_set():
                for i, name in enumerate(names):
                    try:
                        dom = own.conn.defineXML(_tiny_xml(name, domain_type, tiny_guest))
                        dom.create()
                        if i == 0:  # stopped, then undefined
                            dom.destroy()
                            dom.undefine()
                        else:  # undefined while it runs: gone once destroyed
                            dom.undefine()
                            dom.destroy()
                        cycles[0] += 1
                        stop.wait(0.3)  # scrapes also find no lock held now and then
                    except libvirt.libvirtError as err:
                        errors.append(str(err))
                        stop.wait(0.2)

    stack = contextlib.ExitStack()
    exporter = stack.enter_context(running_exporter(
        "--host", "local", "--deadline", str(CHURN_DEADLINE_S),
        "--db", f"sqlite:///{tmp_path / 'kvmops.db'}"))
    worker = threading.Thread(target=churn, daemon=True)
    worker.start()
    failed: list[str] = []
    seen_churn = [0]

    def scrape(_: int) -> None:
        try:
            response = httpx.get(exporter.url, timeout=60)
            if response.status_code != 200:
                failed.append(f"{response.status_code}: {response.text[:200]}")
                return
            samples = _parse(response.text)
            if _value(samples, "libvirt_up", host="local") != 1.0:
                failed.append("libvirt_up is not 1")
            if any(labels["domain"] in names
                   for labels, _ in samples.get("libvirt_domain_state_code", [])):
                seen_churn[0] += 1
        except (httpx.HTTPError, ValueError) as err:
            failed.append(f"{type(err).__name__}: {err}")

    try:
        # eight scrapers at once (Prometheus servers in HA pairs, curls): the exporter
        # serves them in parallel, and the scrapes waiting for a domain's lock overlap
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(scrape, range(500)))
    finally:
        stop.set()
        worker.join(60)
        stack.close()
        with Host(host.uri) as own:
            for name in names:
                with contextlib.suppress(libvirt.libvirtError):
                    dom = own.conn.lookupByName(name)
                    with contextlib.suppress(libvirt.libvirtError):
                        dom.destroy()
                    dom.undefine()
    assert failed == []
    assert cycles[0] >= 4, errors[-3:]  # VMs really came and went meanwhile
    assert seen_churn[0] > 0  # and scrapes saw them


def test_unreachable_hosts_are_down_not_a_failed_scrape(tmp_path: Path, guest: str) -> None:
    """Every managed host is exported; one refusing connections and one that never
    answers (a black-holed address) are ``libvirt_up 0`` while this host's series
    come as usual."""
    from kvmops.services.database import migrated
    from kvmops.store import hosts as store_hosts

    db = f"sqlite:///{tmp_path / 'hosts.db'}"
    with migrated(db) as store:
        store_hosts.add(store, "refusing", "qemu+tcp://127.0.0.1:1/system", {}, "test")
        store_hosts.add(store, "silent", "qemu+tcp://192.0.2.1/system", {}, "test")
    with running_exporter("--deadline", str(DEADLINE_S), "--db", db) as exporter:
        samples = scrape_until(exporter, lambda s: _value(
            s, "libvirt_domain_state_code", domain=guest, host="local") is not None)
    for name, up in (("local", 1.0), ("refusing", 0.0), ("silent", 0.0)):
        assert _value(samples, "libvirt_up", host=name) == up, name
        assert _value(samples, "kvmops_host_up", host=name) == up, name
    assert _value(samples, "libvirt_domain_state_code", domain=guest, host="local") == 1.0
