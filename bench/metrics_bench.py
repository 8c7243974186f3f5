"""Prometheus scrapes: ``kvmops exporter`` side by side with Debian's
``prometheus-libvirt-exporter`` (kumina's 0.2.0) on the same host in the same run.

The host gets DEFINED minimal VMs (not running: 32 MiB, no disk) and RUNNING tiny
guests (TCG, 256 MiB, a 64 MiB qcow2 disk, a NIC on an isolated network, booted until
their agent answers), 200 and 10 by default, on top of whatever else runs there. Both
exporters start fresh on loopback ports; after two warm-up scrapes each, N rounds scrape
one then the other (alternating, so the host's load hits both alike) and record:

* the scrape's wall time (the client's, as Prometheus sees it: request to last byte);
* the exporter's CPU time (utime + stime of its process, all threads, from
  /proc/PID/stat) and libvirtd's over the same scrape (libvirtd serves both; other
  work on the host adds to it);
* the series it returned (its own ``go_``/``python_``/``process_`` series left out).

kvmops' exporter also reports the defined VMs (state, sizes) that kumina leaves out, and
pings each running guest's agent in the background (at most every 30 s), all counted.

Usage (as root)::

    .venv/bin/python bench/metrics_bench.py [--defined 200] [--running 10] [-n 20]
        [--write-readme]

Everything is named ``kvmops-test-bench-metrics-PID-*`` (``make clean-test`` removes it
after an interrupted run) and removed afterwards even on failure.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import httpx
from benchlib import REPO, defined_vms, free_port, write_marked_section

from kvmops.testing.procs import stop_process

KVMOPS = str(Path(sys.executable).parent / "kvmops")
GUEST = Path("/var/cache/kvmops/guest")
IMAGES = Path("/var/lib/kvmops/test-images")
BEGIN, END = "<!-- metrics-bench:begin -->", "<!-- metrics-bench:end -->"
CLK_TCK = os.sysconf("SC_CLK_TCK")
OWN_PREFIXES = ("go_", "python_", "process_", "promhttp_")


def cpu_s(pid: int) -> float:
    """utime + stime of a process (all its threads), seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def libvirtd_pid() -> int:
    return int(Path("/run/libvirtd.pid").read_text().strip())


def _run(argv: Sequence[str]) -> None:
    proc = subprocess.run(list(argv), capture_output=True, text=True, check=False,
                          timeout=600, env={**os.environ, "KVMOPS_IMAGE_DIRS": str(IMAGES)})
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr.strip()}")


@dataclass
class Side:
    name: str
    url: str
    pid: int
    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)
    libvirtd: list[float] = field(default_factory=list)
    series: int = 0
    size: int = 0

    def scrape(self, client: httpx.Client, measured: bool = True) -> None:
        daemon = libvirtd_pid()
        cpu0, lv0 = cpu_s(self.pid), cpu_s(daemon)
        start = time.perf_counter()
        answer = client.get(self.url)
        wall = time.perf_counter() - start
        cpu1, lv1 = cpu_s(self.pid), cpu_s(daemon)
        if answer.status_code != 200:
            raise SystemExit(f"{self.name}: /metrics answered {answer.status_code}")
        if not measured:
            return
        self.wall.append(wall)
        self.cpu.append(cpu1 - cpu0)
        self.libvirtd.append(lv1 - lv0)
        lines = [line for line in answer.text.splitlines()
                 if line and not line.startswith("#") and not line.startswith(OWN_PREFIXES)]
        self.series = len(lines)
        self.size = len(answer.content)


def p95(values: Sequence[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]


@contextlib.contextmanager
def server(argv: list[str], url: str, log: Path) -> Iterator[int]:
    """A server process until the block ends; yields its PID once ``url`` answers."""
    out = log.open("wb")
    proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, cwd=REPO,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                raise SystemExit(f"{argv[0]} exited: {log.read_text()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(url, timeout=30).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise SystemExit(f"{argv[0]} did not answer: {log.read_text()}")
            time.sleep(0.2)
        yield proc.pid
    finally:
        stop_process(proc)
        out.close()


@contextlib.contextmanager
def running_guests(prefix: str, count: int) -> Iterator[list[str]]:
    """``count`` booted tiny guests with a disk and a NIC on an isolated network of their
    own; removed afterwards even on failure."""
    net = f"{prefix}net"
    names = [f"{prefix}r{n}" for n in range(count)]
    try:
        if count:
            _run([KVMOPS, "net", "create", net, "--mode", "isolated"])
        for name in names:
            _run([KVMOPS, "vm", "create", name, "--memory", "256M", "--vcpus", "1",
                  "--kernel", str(GUEST / "vmlinuz"), "--initrd", str(GUEST / "initrd.img"),
                  "--cmdline", "console=ttyS0", "--disk", "size=64M", "--images-dir",
                  str(IMAGES), "--network", net])
        starts = [subprocess.Popen([KVMOPS, "vm", "start", name, "--wait-agent", "600"],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                   env={**os.environ, "KVMOPS_IMAGE_DIRS": str(IMAGES)})
                  for name in names]
        for name, proc in zip(names, starts, strict=True):
            _, err = proc.communicate(timeout=900)
            if proc.returncode != 0:
                raise SystemExit(f"{name} did not boot: {err.decode().strip()}")
        yield names
    finally:
        env = {**os.environ, "KVMOPS_IMAGE_DIRS": str(IMAGES)}
        for name in names:
            for argv in (["virsh", "-q", "destroy", name],
                         [KVMOPS, "vm", "undefine", name, "--remove-storage"],
                         ["virsh", "-q", "undefine", name]):
                with contextlib.suppress(Exception):
                    subprocess.run(argv, capture_output=True, check=False, timeout=120,
                                   env=env)
        if count:
            for argv in (["virsh", "-q", "net-destroy", net],
                         ["virsh", "-q", "net-undefine", net]):
                with contextlib.suppress(Exception):
                    subprocess.run(argv, capture_output=True, check=False, timeout=120)


def measure(defined: int, running: int, rounds: int) -> tuple[Side, Side, int, str]:
    prefix = f"kvmops-test-bench-metrics-{os.getpid()}-"
    work = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        with defined_vms(f"{prefix}d", defined) as conn, running_guests(prefix, running):
            domains = len(conn.listAllDomains(0))
            kv_addr, ku_addr = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
            load = " ".join(f"{x:.2f}" for x in os.getloadavg())
            with server([sys.executable, "-m", "kvmops.cli.main", "exporter", "--listen",
                         kv_addr, "--host", "local", "--db",
                         f"sqlite:///{work / 'kvmops.db'}"],
                        f"http://{kv_addr}/metrics", work / "kvmops.log") as kv_pid, \
                 server(["prometheus-libvirt-exporter", f"--web.listen-address={ku_addr}"],
                        f"http://{ku_addr}/metrics", work / "kumina.log") as ku_pid:
                kvmops = Side("kvmops exporter", f"http://{kv_addr}/metrics", kv_pid)
                kumina = Side("prometheus-libvirt-exporter", f"http://{ku_addr}/metrics",
                              ku_pid)
                with httpx.Client(timeout=120) as client:
                    for _ in range(2):
                        kvmops.scrape(client, measured=False)
                        kumina.scrape(client, measured=False)
                    for n in range(rounds):
                        first, second = (kvmops, kumina) if n % 2 == 0 else (kumina, kvmops)
                        first.scrape(client)
                        second.scrape(client)
            return kvmops, kumina, domains, load
    finally:
        shutil.rmtree(work, ignore_errors=True)


def render(kvmops: Side, kumina: Side, defined: int, running: int, rounds: int,
           domains: int, load: str) -> str:
    def row(side: Side) -> str:
        return (f"| {side.name} | {side.series} | {side.size / 1024:.0f} | "
                f"{statistics.median(side.wall) * 1000:.0f} | {p95(side.wall) * 1000:.0f} | "
                f"{statistics.mean(side.cpu) * 1000:.0f} | "
                f"{statistics.mean(side.libvirtd) * 1000:.0f} |")

    def ratio(f: float, g: float) -> str:
        return f"{f / g:.2f}" if g > 0 else "-"

    def per_k(values: Sequence[float], side: Side) -> str:
        return f"{statistics.median(values) * 1000 * 1000 / max(side.series, 1):.0f}"

    kv_med, ku_med = statistics.median(kvmops.wall), statistics.median(kumina.wall)
    lines = [
        "## Prometheus scrapes (`bench/metrics_bench.py`)",
        "",
        f"Command: `.venv/bin/python bench/metrics_bench.py --defined {defined} --running "
        f"{running} -n {rounds} --write-readme` (as root). Date: "
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {platform.node()}, {os.cpu_count()} CPUs, "
        f"load {load} at the start (other sessions' work shared the machine). "
        f"{defined} defined minimal VMs and {running} booted tiny guests (TCG, a disk and "
        f"a NIC each) of the bench; {domains} domains on the host in all. {rounds} scrapes "
        "of each exporter, alternating, after two warm-up scrapes each.",
        "",
        "| exporter | series | KiB | scrape median ms | scrape p95 ms | exporter CPU ms "
        "per scrape | libvirtd CPU ms per scrape |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
        row(kvmops),
        row(kumina),
        f"| kvmops / kumina | {ratio(kvmops.series, kumina.series)} | "
        f"{ratio(kvmops.size, kumina.size)} | {ratio(kv_med, ku_med)} | "
        f"{ratio(p95(kvmops.wall), p95(kumina.wall))} | "
        f"{ratio(statistics.mean(kvmops.cpu), statistics.mean(kumina.cpu))} | "
        f"{ratio(statistics.mean(kvmops.libvirtd), statistics.mean(kumina.libvirtd))} |",
        "",
        "Per 1000 series returned: exporter CPU "
        + ", ".join(f"{side.name} {per_k(side.cpu, side)}" for side in (kvmops, kumina))
        + " ms; scrape time "
        + ", ".join(f"{side.name} {per_k(side.wall, side)}" for side in (kvmops, kumina))
        + " ms (medians).",
        "",
        "Series leave out each exporter's own runtime series (go_, python_, process_). "
        "kumina asks libvirt per domain (info, then block and interface stats per device, "
        "the XML for the devices) for the running domains only; kvmops makes one bulk "
        "statistics call (virConnectGetAllDomainStats, NOWAIT where supported) for all "
        "domains under a deadline, reports the defined ones too (state, memory, vCPUs: "
        "hence more series), and adds per-vCPU, balloon, block time and size series. "
        "CPU is utime + stime from /proc/PID/stat around each scrape (all threads); "
        "libvirtd's includes whatever else asked it meanwhile.",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--defined", type=int, default=200)
    parser.add_argument("--running", type=int, default=10)
    parser.add_argument("-n", "--rounds", type=int, default=20)
    parser.add_argument("--write-readme", action="store_true",
                        help="write the table into bench/README.md")
    args = parser.parse_args(argv)
    for tool in ("prometheus-libvirt-exporter",):
        if not shutil.which(tool):
            raise SystemExit(f"{tool} is missing: run scripts/setup-host.sh")
    kvmops, kumina, domains, load = measure(args.defined, args.running, args.rounds)
    section = render(kvmops, kumina, args.defined, args.running, args.rounds, domains, load)
    print(section)
    if args.write_readme:
        write_marked_section(BEGIN, END, section)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
