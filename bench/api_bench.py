"""API benchmark (not a test): GET /api/v1/vms with 200 defined VMs vs GET /api/v1/health,
and 20 concurrent Server-Sent-Events clients.

    .venv/bin/python bench/api_bench.py [--vms 200] [--requests 2000] [--concurrency 8]
                                        [--seconds 30] [--sse 20] [--write-readme]

Starts ``kvmops serve`` on a free loopback port with a temporary SQLite DB,
defines VMs ``kvmops-bench-api-N`` (never started, minimal XML) and removes
them afterwards, also after a failure. Every phase is bounded in requests and
seconds. ``--write-readme`` replaces the "API" section of bench/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import libvirt
from benchlib import MINIMAL_XML, bench_server, defined_vms

REPO = Path(__file__).resolve().parent.parent
PREFIX = "kvmops-bench-api-"


def bench_vms(count: int) -> contextlib.AbstractContextManager[libvirt.virConnect]:
    return defined_vms(PREFIX, count)


def server(workdir: Path) -> contextlib.AbstractContextManager[tuple[str, str]]:
    return bench_server(workdir)


def load(url: str, token: str, path: str, requests: int, concurrency: int, seconds: float
         ) -> dict[str, Any]:
    """``requests`` GETs from ``concurrency`` threads (stops early after ``seconds``)."""
    latencies: list[float] = []
    errors = 0
    lock = threading.Lock()
    remaining = [requests]
    deadline = time.monotonic() + seconds

    def worker() -> None:
        nonlocal errors
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"},
                          timeout=30) as client:
            while time.monotonic() < deadline:
                with lock:
                    if remaining[0] <= 0:
                        return
                    remaining[0] -= 1
                start = time.perf_counter()
                response = client.get(path)
                took = time.perf_counter() - start
                with lock:
                    latencies.append(took)
                    if response.status_code != 200:
                        errors += 1

    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}) as warm:
        for _ in range(5):
            warm.get(path)
    started = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - started
    latencies.sort()
    return {
        "path": path, "requests": len(latencies), "errors": errors,
        "rps": round(len(latencies) / elapsed, 1),
        "p50_ms": round(1000 * statistics.median(latencies), 2),
        "p99_ms": round(1000 * latencies[max(0, int(len(latencies) * 0.99) - 1)], 2),
    }


def sse(url: str, token: str, clients: int, rounds: int, conn: libvirt.virConnect
        ) -> dict[str, Any]:
    """``clients`` SSE streams; each round defines a VM and times the event's arrival
    at every client."""
    arrivals: dict[str, list[float]] = {}
    lock = threading.Lock()
    connected = threading.Barrier(clients + 1, timeout=60)
    stop = threading.Event()

    def client() -> None:
        headers = {"Authorization": f"Bearer {token}"}
        with httpx.stream("GET", url + "/api/v1/events", headers=headers,
                          timeout=httpx.Timeout(60, read=60)) as response:
            event = None
            for line in response.iter_lines():
                if line.startswith(": connected"):
                    connected.wait()
                elif line.startswith("event: "):
                    event = line[7:]
                elif line.startswith("data: ") and event == "domain":
                    data = json.loads(line[6:])
                    if data["event"] == "defined" and data["vm"].startswith(PREFIX + "sse"):
                        with lock:
                            arrivals.setdefault(data["vm"], []).append(time.perf_counter())
                if stop.is_set():
                    return

    threads = [threading.Thread(target=client, daemon=True) for _ in range(clients)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    connected.wait()
    connect_s = time.perf_counter() - started
    sent: dict[str, float] = {}
    for n in range(rounds):
        name = f"{PREFIX}sse{n}"
        sent[name] = time.perf_counter()
        conn.defineXML(MINIMAL_XML.format(name=name))
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with lock:
                if len(arrivals.get(name, [])) >= clients:
                    break
            time.sleep(0.01)
    stop.set()
    for n in range(rounds):  # one more event each wakes the readers so they can end
        with contextlib.suppress(libvirt.libvirtError):
            conn.lookupByName(f"{PREFIX}sse{n}").undefine()
    delays = sorted(1000 * (t - sent[name]) for name, ts in arrivals.items() for t in ts)
    delivered = sum(len(ts) for ts in arrivals.values())
    return {"clients": clients, "rounds": rounds, "connect_all_s": round(connect_s, 2),
            "delivered": f"{delivered}/{clients * rounds}",
            "p50_ms": round(statistics.median(delays), 1) if delays else None,
            "max_ms": round(delays[-1], 1) if delays else None}


def row(label: str, r: dict[str, Any]) -> str:
    return (f"| {label} | {r['requests']} | {r['rps']} | {r['p50_ms']} | {r['p99_ms']} "
            f"| {r['errors']} |")


def readme_section(result: dict[str, Any]) -> str:
    vms, health, during = result["vms"], result["health"], result["vms_with_sse"]
    s = result["sse"]
    return f"""## API

`bench/api_bench.py` ({result['date']}, {result['cpus']} CPUs, load average at start
{result['load']}): `kvmops serve` on loopback with SQLite, bearer-token auth,
{result['defined']} defined (not running) VMs; {result['concurrency']} client threads (httpx).

| request | requests | req/s | p50 ms | p99 ms | errors |
| --- | ---: | ---: | ---: | ---: | ---: |
{row("`GET /api/v1/health` (reference, no auth)", health)}
{row("`GET /api/v1/vms`", vms)}
{row(f"`GET /api/v1/vms` with {s['clients']} SSE clients connected", during)}

`/vms` runs at {result['ratio']} of the health endpoint's rate: the list of all VMs with
each VM's `virDomainGetInfo` (the accelerator comes from a per-UUID cache), shared by
concurrent requests and reused for up to 1 s unless a life cycle event invalidated it;
plus the token lookup in the DB on every request.
{s['clients']} SSE clients connected in {s['connect_all_s']} s; a libvirt `defined`
event reached all of them ({s['delivered']} deliveries) with median
{s['p50_ms']} ms and max {s['max_ms']} ms after `defineXML` returned.
"""


def write_readme(section: str) -> None:
    path = REPO / "bench" / "README.md"
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    # up to the next section or the next section's marker (kept)
    pattern = re.compile(r"^## API\n.*?(?=^## |^<!-- |\Z)", re.S | re.M)
    if pattern.search(text):
        text = pattern.sub(section + "\n", text)
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.write_text(text.rstrip("\n") + "\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vms", type=int, default=200)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--sse", type=int, default=20)
    parser.add_argument("--sse-rounds", type=int, default=5)
    parser.add_argument("--write-readme", action="store_true")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="kvmops-api-bench-"))
    try:
        with bench_vms(args.vms) as conn, server(workdir) as (url, token):
            result: dict[str, Any] = {
                "date": time.strftime("%Y-%m-%d"), "cpus": os.cpu_count(),
                "load": round(os.getloadavg()[0], 1), "defined": args.vms,
                "concurrency": args.concurrency}
            result["health"] = load(url, token, "/api/v1/health", args.requests,
                                    args.concurrency, args.seconds)
            result["vms"] = load(url, token, "/api/v1/vms", args.requests, args.concurrency,
                                 args.seconds)
            listed = httpx.get(url + "/api/v1/vms",
                               headers={"Authorization": f"Bearer {token}"}).json()
            assert sum(vm["name"].startswith(PREFIX) for vm in listed) == args.vms
            holder: dict[str, Any] = {}
            sse_thread = threading.Thread(
                target=lambda: holder.update(sse=sse(url, token, args.sse, args.sse_rounds,
                                                     conn)))
            sse_thread.start()
            time.sleep(1.0)
            result["vms_with_sse"] = load(url, token, "/api/v1/vms", args.requests // 2,
                                          args.concurrency, args.seconds / 2)
            sse_thread.join(120)
            result["sse"] = holder.get("sse", {"clients": args.sse, "connect_all_s": None,
                                               "delivered": "0", "p50_ms": None,
                                               "max_ms": None})
            result["ratio"] = f"{result['vms']['rps'] / result['health']['rps']:.0%}"
        print(json.dumps(result, indent=2))
        if args.write_readme:
            write_readme(readme_section(result))
        return 0
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
