"""Multi-host VM list benchmark (not a test): 2 hosts x 100 defined VMs and one
registered host that nobody answers for, against ``virsh list --all`` of both hosts.

    .venv/bin/python bench/multihost_bench.py [--vms 100] [--repeat 7] [--index 7]
                                              [--write-readme]

Starts the second host (``kvmops dev second-host up --index N --name kvmops-benchN``:
a namespaced libvirtd at ``qemu+tcp://10.250.N.2/system``), defines ``--vms`` minimal
VMs ``kvmops-bench-mh-N`` (never started) on the local libvirtd and as many on the
second host, starts ``kvmops serve`` (SQLite) and registers the second host and a host
``ghost`` at ``10.250.N.77`` (an address on the second host's link where nobody is).
Times, each the median of ``--repeat`` runs:

- reference: ``virsh -c URI list --all`` of the local host, then of the second host;
- ``GET /api/v1/vms?host=all`` (falls back to one ``?host=NAME`` request per host while
  the all-hosts list has not landed) and the web VM list page ``GET /vms``;
- ``kvmops vm list --host all --json`` (the CLI, a process per run);

each first with the two answering hosts only, then with ``ghost`` registered too, next
to the list deadline and to how long asking ``ghost`` alone takes: that shows whether
the unreachable host adds its time-out to the list. Everything it made is removed
afterwards, also after a failure (the VMs, the second host, the server's database).
``--write-readme`` replaces the "Multi-host VM list" section of bench/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import libvirt
from benchlib import MINIMAL_XML, bench_server, remove_vms, write_marked_section

REPO = Path(__file__).resolve().parent.parent
PREFIX = "kvmops-bench-mh-"
H2_NAME = "kvmops-bench7"
HEADING = "## Multi-host VM list (`bench/multihost_bench.py`)"
BEGIN, END = "<!-- multihost-bench:begin -->", "<!-- multihost-bench:end -->"
KVMOPS = [sys.executable, "-m", "kvmops.cli.main"]


def run(argv: list[str], env: dict[str, str] | None = None, timeout: float = 300
        ) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False,
                          cwd=REPO, env={**os.environ, **(env or {})})


@contextlib.contextmanager
def second_host(index: int, name: str = H2_NAME) -> Iterator[str]:
    """The namespaced second libvirtd (its URI), brought down afterwards."""
    try:
        up = run([*KVMOPS, "dev", "second-host", "up", "--index", str(index), "--name", name])
        if up.returncode != 0:
            raise SystemExit(f"second host did not start: {up.stderr.strip()}")
        yield up.stdout.strip().splitlines()[-1]
    finally:
        down = run([*KVMOPS, "dev", "second-host", "down", "--name", name])
        if down.returncode != 0:
            print(f"second host down failed: {down.stderr.strip()}", file=sys.stderr)


@contextlib.contextmanager
def defined_on(uri: str, count: int) -> Iterator[libvirt.virConnect]:
    conn = libvirt.open(uri)
    try:
        remove_vms(conn, PREFIX)
        for n in range(count):
            conn.defineXML(MINIMAL_XML.format(name=f"{PREFIX}{n}"))
        yield conn
    finally:
        remove_vms(conn, PREFIX)
        conn.close()


def timed(fn: Callable[[], Any], repeat: int) -> tuple[float, Any, float]:
    """Median seconds of ``repeat`` calls (after one warm-up call), the last result and
    the warm-up call's seconds."""
    start = time.perf_counter()
    result = fn()
    first = time.perf_counter() - start
    took = []
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        took.append(time.perf_counter() - start)
    return statistics.median(took), result, first


def log_in(url: str) -> dict[str, str]:
    with httpx.Client(base_url=url, timeout=60) as client:
        form = client.get("/login").text
        match = re.search(r'name="token" value="([^"]+)"', form)
        if match is None:
            raise SystemExit("no log-in token in the form")
        response = client.post("/login", data={"username": "bench", "password": "bench-password",
                                               "token": match.group(1), "next": "/vms"})
        if response.status_code != 303:
            raise SystemExit(f"log-in failed: {response.status_code}")
        return dict(client.cookies)


class Lists:
    """The ways of listing every host's VMs, each returning (VM count per host, the
    unreachable hosts named)."""

    def __init__(self, url: str, token: str, cookies: dict[str, str], db: str,
                 hosts: list[str]) -> None:
        self.api = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"},
                                timeout=120)
        self.page = httpx.Client(base_url=url, cookies=cookies, timeout=120)
        self.db = db
        self.hosts = hosts
        probe = self.api.get("/api/v1/vms", params={"host": "all"})
        self.all_hosts = probe.status_code == 200 and any(
            vm.get("host") not in (None, "local") for vm in probe.json())

    def close(self) -> None:
        self.api.close()
        self.page.close()

    def api_list(self) -> tuple[dict[str, int], str]:
        counts: dict[str, int] = {}
        gone: list[str] = []
        if self.all_hosts:
            response = self.api.get("/api/v1/vms", params={"host": "all"})
            response.raise_for_status()
            for vm in response.json():
                if vm["name"].startswith(PREFIX):
                    counts[vm["host"]] = counts.get(vm["host"], 0) + 1
            return counts, response.headers.get("X-Kvmops-Unreachable", "")
        for host in self.hosts:  # one request per host (each under its own deadline)
            response = self.api.get("/api/v1/vms", params={"host": host})
            if response.status_code != 200:
                gone.append(f"{host}: {response.status_code}")
                continue
            counts[host] = sum(vm["name"].startswith(PREFIX) for vm in response.json())
        return counts, "; ".join(gone)

    def page_list(self) -> tuple[dict[str, int], str]:
        response = self.page.get("/vms")
        response.raise_for_status()
        counts: dict[str, int] = {}
        for host in re.findall(r'data-vm="' + re.escape(PREFIX) + r'\d+" data-host="([^"]+)"',
                               response.text):
            counts[host] = counts.get(host, 0) + 1
        return counts, "ghost" if "ghost" in response.text else ""

    def cli_list(self) -> tuple[dict[str, int], str]:
        done = run([*KVMOPS, "vm", "list", "--host", "all", "--json"],
                   env={"KVMOPS_DB": self.db})
        if done.returncode != 0:
            raise SystemExit(f"vm list --host all failed: {done.stderr.strip()}")
        counts: dict[str, int] = {}
        for vm in json.loads(done.stdout):
            if vm["name"].startswith(PREFIX):
                counts[vm.get("host", "local")] = counts.get(vm.get("host", "local"), 0) + 1
        return counts, done.stderr.strip().replace("\n", " ")


def virsh_both(uris: list[str]) -> tuple[dict[str, int], str]:
    counts = {}
    for uri in uris:
        done = run(["virsh", "-c", uri, "list", "--all", "--name"])
        counts[uri] = sum(line.startswith(PREFIX) for line in done.stdout.splitlines())
    return counts, ""


def probe_ghost(uri: str) -> tuple[float, str]:
    start = time.perf_counter()
    done = run(["virsh", "-c", uri, "list", "--all"], timeout=120)
    took = time.perf_counter() - start
    return took, (done.stderr.strip().splitlines() or ["(no error)"])[-1]


def measure(lists: Lists, uris: list[str], repeat: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, fn in (("virsh", lambda: virsh_both(uris)), ("api", lists.api_list),
                    ("page", lists.page_list), ("cli", lists.cli_list)):
        seconds, (counts, gone), first = timed(fn, repeat if key != "cli" else
                                               max(3, repeat // 2))
        out[key] = {"s": round(seconds, 3), "counts": counts, "unreachable": gone,
                    "first_s": round(first, 3)}
    return out


def readme_section(r: dict[str, Any]) -> str:
    two, three = r["two"], r["three"]

    def line(label: str, key: str) -> str:
        a, b = two[key]["s"], three[key]["s"]
        ratio_a, ratio_b = a / two["virsh"]["s"], b / two["virsh"]["s"]
        return f"| {label} | {a * 1000:.0f} | {ratio_a:.2f} | {b * 1000:.0f} | {ratio_b:.2f} |"

    api_how = ("`GET /api/v1/vms?host=all`" if r["all_hosts"] else
               "`GET /api/v1/vms?host=NAME`, one request per host (no `?host=all` yet)")
    return f"""{HEADING}
{BEGIN}

{r['date']}, {r['cpus']} CPUs, load average at start {r['load']}: {r['vms']} defined
(never started) VMs on the local libvirtd and {r['vms']} on the second host
(`kvmops dev second-host`, `qemu+tcp://10.250.N.2/system` in a network namespace on this
machine); `kvmops serve` on loopback with SQLite; medians of {r['repeat']} runs (the CLI:
{max(3, r['repeat'] // 2)}) after one warm-up. "+ ghost": a third host registered at an
address on the second host's link where nobody answers (`{r['ghost_uri']}`); asking it
alone (`virsh list`) takes {r['ghost_s']:.1f} s and ends with "{r['ghost_error']}"; the
list deadline per host is {r['deadline']:g} s (API and page), {r['cli_deadline']:g} s (CLI).

| list of both hosts' VMs | ms | / virsh | ms + ghost | / virsh |
| --- | ---: | ---: | ---: | ---: |
{line("reference: `virsh -c URI list --all` of each host in turn", 'virsh')}
{line(api_how, 'api')}
{line("web VM list page `GET /vms`", 'page')}
{line("`kvmops vm list --host all --json` (a process)", 'cli')}

Counted VMs (bench ones): API {three['api']['counts']}, CLI {three['cli']['counts']},
page rows {three['page']['counts']}; the unreachable host named by the API:
"{three['api']['unreachable'][:160]}"; by the CLI: "{three['cli']['unreachable'][:160]}".
{r['verdict']}
<!-- the virsh reference runs with two hosts only in both columns (ghost is not asked) -->
{END}"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vms", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--index", type=int,
                        default=int(os.environ.get("KVMOPS_TEST_H2_INDEX", "7")))
    parser.add_argument("--write-readme", action="store_true")
    args = parser.parse_args()
    local_uri = "qemu:///system"
    ghost_uri = f"qemu+tcp://10.250.{args.index}.77/system"
    workdir = Path(tempfile.mkdtemp(prefix="kvmops-multihost-bench-"))
    result: dict[str, Any] = {"date": time.strftime("%Y-%m-%d"), "cpus": os.cpu_count(),
                              "load": round(os.getloadavg()[0], 1), "vms": args.vms,
                              "repeat": args.repeat, "ghost_uri": ghost_uri}
    try:
        with second_host(args.index, f"kvmops-bench{args.index}") as h2_uri, \
                defined_on(local_uri, args.vms), defined_on(h2_uri, args.vms), \
                bench_server(workdir, role="admin") as (url, token):
            db = f"sqlite:///{workdir / 'bench.db'}"
            admin = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"},
                                 timeout=120)
            added = admin.post("/api/v1/hosts", json={"name": "h2", "uri": h2_uri})
            if added.status_code != 201:
                raise SystemExit(f"host add h2: {added.status_code} {added.text}")
            lists = Lists(url, token, log_in(url), db, ["local", "h2"])
            result["all_hosts"] = lists.all_hosts
            try:
                result["two"] = measure(lists, [local_uri, h2_uri], args.repeat)
                added = admin.post("/api/v1/hosts", json={"name": "ghost", "uri": ghost_uri,
                                                          "check": False})
                if added.status_code != 201:
                    raise SystemExit(f"host add ghost: {added.status_code} {added.text}")
                lists.hosts.append("ghost")
                result["three"] = measure(lists, [local_uri, h2_uri], args.repeat)
            finally:
                lists.close()
                admin.close()
            result["ghost_s"], result["ghost_error"] = probe_ghost(ghost_uri)
        from kvmops.services import hosts as host_service

        try:
            from kvmops.services import fleet  # the API's and page's list (issue 12)

            result["deadline"] = fleet.LIST_DEADLINE_S
        except ImportError:
            result["deadline"] = host_service.DEFAULT_DEADLINE_S
        result["cli_deadline"] = getattr(host_service, "LIST_DEADLINE_S",
                                         host_service.DEFAULT_DEADLINE_S)
        added_s = {k: result["three"][k]["s"] - result["two"][k]["s"]
                   for k in ("api", "page", "cli")}
        worst = max(added_s["api"], added_s["page"])
        result["added_s"] = {k: round(v, 3) for k, v in added_s.items()}
        result["verdict"] = (
            f"With ghost registered the server's lists take at most {worst:+.2f} s more "
            f"(API {added_s['api']:+.2f}, page {added_s['page']:+.2f} s; the CLI "
            f"{added_s['cli']:+.2f} s), against {result['ghost_s']:.1f} s for asking ghost "
            f"alone and a {result['deadline']:g} s deadline (API, page): "
            + ("the unreachable host does not add its time-out to the server's lists"
               if worst < min(result["ghost_s"], result["deadline"]) / 2 else
               "the unreachable host still delays the server's lists (see the figures)")
            + f"; only the first list after ghost was added waited for it (API warm-up "
            f"{result['three']['api']['first_s'] * 1000:.0f} ms: a host never seen gets "
            "the deadline once). The CLI, a process per command with no memory, still "
            "waits for ghost's connection to fail or its deadline.")
        print(json.dumps(result, indent=2, default=str))
        if args.write_readme:
            write_marked_section(BEGIN, END, readme_section(result)
                                 .split(BEGIN + "\n", 1)[1].rsplit("\n" + END, 1)[0])
            _ensure_heading()
        return 0
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _ensure_heading() -> None:
    readme = REPO / "bench" / "README.md"
    text = readme.read_text()
    if HEADING not in text:
        text = text.replace(BEGIN, f"{HEADING}\n{BEGIN}", 1)
        tmp = readme.with_suffix(".md.tmp")
        tmp.write_text(text)
        tmp.replace(readme)


if __name__ == "__main__":
    raise SystemExit(main())
