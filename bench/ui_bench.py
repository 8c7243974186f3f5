"""Web UI benchmark (not a test): the server-rendered VM list page with 200
defined VMs against ``GET /api/v1/health`` as the in-run reference.

    .venv/bin/python bench/ui_bench.py [--vms 200] [--requests 400] [--concurrency 4]
                                       [--seconds 30] [--write-readme]

Starts ``kvmops serve`` on a free loopback port with a temporary SQLite DB,
logs in through the log-in form (cookie session, as a browser does), defines
VMs ``kvmops-bench-ui-N`` from minimal XML (never started) and removes them
afterwards, also after a failure. Each phase is bounded in requests and
seconds. ``--write-readme`` replaces the "Web UI" section of bench/README.md.
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
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import libvirt
from benchlib import bench_server, defined_vms

REPO = Path(__file__).resolve().parent.parent
PREFIX = "kvmops-bench-ui-"
HEADING = "## Web UI (`bench/ui_bench.py`)"
BEGIN, END = "<!-- ui-bench:begin -->", "<!-- ui-bench:end -->"


def bench_vms(count: int) -> contextlib.AbstractContextManager[libvirt.virConnect]:
    return defined_vms(PREFIX, count)


@contextlib.contextmanager
def server(workdir: Path) -> Iterator[str]:
    with bench_server(workdir) as (url, _token):
        yield url


def log_in(url: str) -> dict[str, str]:
    """Cookies of a session made through the log-in form."""
    with httpx.Client(base_url=url, timeout=30) as client:
        form = client.get("/login").text
        match = re.search(r'name="token" value="([^"]+)"', form)
        if match is None:
            raise SystemExit("no log-in token in the form")
        response = client.post("/login", data={"username": "bench", "password": "bench-password",
                                               "token": match.group(1), "next": "/vms"})
        if response.status_code != 303:
            raise SystemExit(f"log-in failed: {response.status_code}")
        return dict(client.cookies)


def load(url: str, cookies: dict[str, str], path: str, requests: int, concurrency: int,
         seconds: float) -> dict[str, Any]:
    latencies: list[float] = []
    sizes: list[int] = []
    errors = 0
    lock = threading.Lock()
    remaining = [requests]
    deadline = time.monotonic() + seconds

    def worker() -> None:
        nonlocal errors
        with httpx.Client(base_url=url, cookies=cookies, timeout=60) as client:
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
                    sizes.append(len(response.content))
                    if response.status_code != 200:
                        errors += 1

    with httpx.Client(base_url=url, cookies=cookies, timeout=60) as warm:
        for _ in range(3):
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
        "path": path, "concurrency": concurrency, "requests": len(latencies),
        "errors": errors, "rps": round(len(latencies) / elapsed, 1),
        "p50_ms": round(1000 * statistics.median(latencies), 2),
        "p99_ms": round(1000 * latencies[max(0, int(len(latencies) * 0.99) - 1)], 2),
        "kib": round(statistics.median(sizes) / 1024, 2),
    }


def row(label: str, r: dict[str, Any]) -> str:
    return (f"| {label} | {r['concurrency']} | {r['requests']} | {r['rps']} | {r['p50_ms']} "
            f"| {r['p99_ms']} | {r['kib']} | {r['errors']} |")


def readme_section(result: dict[str, Any]) -> str:
    h1, p1, h4, p4 = (result["health_1"], result["page_1"], result["health_n"],
                      result["page_n"])
    return f"""{HEADING}
{BEGIN}

{result['date']}, {result['cpus']} CPUs, load average at start {result['load']}:
`kvmops serve` on loopback with SQLite, a viewer logged in through the log-in
form (cookie session), {result['defined']} defined (not running) VMs
`{PREFIX}N`; httpx clients.

| request | clients | requests | req/s | p50 ms | p99 ms | KiB | errors |
| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |
{row("`GET /api/v1/health` (reference)", h1)}
{row("`GET /vms` (VM list page)", p1)}
{row("`GET /api/v1/health` (reference)", h4)}
{row("`GET /vms` (VM list page)", p4)}

One client: the page takes {result['ratio_1']} the health endpoint's median time
(session lookup in the DB, the VM list with each VM's `virDomainGetInfo` through
the API's list cache, Jinja2 rendering of {result['defined']} rows with their
action buttons). With {p4['concurrency']} clients the page runs at
{result['ratio_n']} of the health endpoint's rate. Compare the ratios across runs
rather than absolute figures (host load varies).
{END}"""


def write_readme(section: str) -> None:
    path = REPO / "bench" / "README.md"
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    pattern = re.compile("^" + re.escape(HEADING) + r"\n.*?" + re.escape(END), re.S | re.M)
    if pattern.search(text):
        text = pattern.sub(lambda _m: section, text)
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.write_text(text.rstrip("\n") + "\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--vms", type=int, default=200)
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--write-readme", action="store_true")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="kvmops-ui-bench-"))
    try:
        with bench_vms(args.vms), server(workdir) as url:
            cookies = log_in(url)
            page = httpx.get(url + "/vms", cookies=cookies, timeout=60).text
            rows = page.count(f'<tr data-vm="{PREFIX}')
            if rows != args.vms:
                raise SystemExit(f"the VM list page shows {rows} bench VMs, not {args.vms}")
            result: dict[str, Any] = {
                "date": time.strftime("%Y-%m-%d"), "cpus": os.cpu_count(),
                "load": round(os.getloadavg()[0], 1), "defined": args.vms}
            n = args.requests
            result["health_1"] = load(url, cookies, "/api/v1/health", n // 2, 1, args.seconds)
            result["page_1"] = load(url, cookies, "/vms", n // 2, 1, args.seconds)
            result["health_n"] = load(url, cookies, "/api/v1/health", n, args.concurrency,
                                      args.seconds)
            result["page_n"] = load(url, cookies, "/vms", n, args.concurrency, args.seconds)
            slower = result["page_1"]["p50_ms"] / result["health_1"]["p50_ms"]
            result["ratio_1"] = f"{slower:.1f} times"
            result["ratio_n"] = f"{result['page_n']['rps'] / result['health_n']['rps']:.0%}"
        print(json.dumps(result, indent=2))
        if args.write_readme:
            write_readme(readme_section(result))
        return 0
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
