"""Live migration benchmark (not a test): time and downtime of the tiny guest with a
writer dirtying its memory, ``kvmops vm migrate`` against ``virsh migrate --live`` of the
same guest in the same run.

    .venv/bin/python bench/migration_bench.py [--rounds 2] [--index 7] [--dirty-mib 16]
                                              [--write-readme]

Starts the second host (``kvmops dev second-host up --index N --name kvmops-bench7``),
creates the tiny guest ``kvmops-bench-mig`` (256 MiB, its disk in the second host's
images directory: one file system, so storage is shared) on the local libvirtd, boots
it and starts a writer in it: it rewrites a ``--dirty-mib`` MiB buffer in its RAM root
file system (random data, so QEMU's zero-page shortcut does not apply) over and over
and appends the guest's uptime after each pass; it stops by itself after 3,000 passes
or when ``/tmp/kb-stop`` exists. Each round, the guest goes local -> second host:

- reference: ``virsh migrate --live --unsafe --persistent --undefinesource VM
  qemu+tcp://10.250.N.2/system`` (then back the same way, with the migration URI
  ``tcp://10.250.N.1``, untimed);
- ``kvmops vm migrate VM --to h2 --json`` (then back with virsh, untimed).

For each: the wall time of the command, and from libvirt's completed-job statistics
on the target (``virDomainGetJobStats(VIR_DOMAIN_JOB_STATS_COMPLETED)``) the elapsed
time, the ``downtime``, the data sent and the dirty rate QEMU measured. The writer's
rate is computed from its own pass log; the longest gap between two passes (guest
time) is reported too. Everything is removed afterwards, also on failure (the VM on
either host, the second host with its images directory, the temporary database).
``--write-readme`` replaces the "Live migration" section of bench/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import libvirt
from benchlib import remove_vms, write_marked_section

REPO = Path(__file__).resolve().parent.parent
VM = "kvmops-bench-mig"
H2_NAME = "kvmops-bench7"
HEADING = "## Live migration (`bench/migration_bench.py`)"
BEGIN, END = "<!-- migration-bench:begin -->", "<!-- migration-bench:end -->"
KVMOPS = [sys.executable, "-m", "kvmops.cli.main"]
LOCAL = "qemu:///system"
MAX_PASSES = 3000
libvirt.registerErrorHandler(lambda _ctx, _err: None, None)  # errors are raised, not printed
POOL = "kvmops-bench-mig"


def run(argv: list[str], env: dict[str, str] | None = None, timeout: float = 600
        ) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False,
                          cwd=REPO, env={**os.environ, **(env or {})})


def must(done: subprocess.CompletedProcess[str], what: str) -> str:
    if done.returncode != 0:
        raise SystemExit(f"{what} failed ({done.returncode}): "
                         f"{(done.stderr or done.stdout).strip()[-600:]}")
    return done.stdout


@contextlib.contextmanager
def second_host(index: int) -> Iterator[dict[str, Any]]:
    try:
        info = json.loads(must(run([*KVMOPS, "dev", "second-host", "up", "--index",
                                    str(index), "--name", H2_NAME, "--json"]),
                               "second host up"))
        yield info
    finally:
        down = run([*KVMOPS, "dev", "second-host", "down", "--name", H2_NAME])
        if down.returncode != 0:
            print(f"second host down failed: {down.stderr.strip()}", file=sys.stderr)


def writer_script(mib: int) -> str:
    return (f"dd if=/dev/urandom of=/tmp/kb-src bs=1M count={mib} 2>/dev/null; "
            "rm -f /tmp/kb-stop /tmp/kb-ts; i=0; "
            f"while [ $i -lt {MAX_PASSES} ] && [ ! -e /tmp/kb-stop ]; do "
            "dd if=/tmp/kb-src of=/tmp/kb-dst bs=1M conv=notrunc 2>/dev/null; "
            "cut -d' ' -f1 /proc/uptime >> /tmp/kb-ts; i=$((i+1)); done")


STATES = {libvirt.VIR_DOMAIN_RUNNING: "running", libvirt.VIR_DOMAIN_PAUSED: "paused",
          libvirt.VIR_DOMAIN_SHUTOFF: "shut off"}


def job_stats(uri: str) -> dict[str, Any]:
    """The target's completed-job statistics, and the VM's state there (``state``)."""
    conn = libvirt.open(uri)
    try:
        dom = conn.lookupByName(VM)
        stats: dict[str, Any] = dom.jobStats(libvirt.VIR_DOMAIN_JOB_STATS_COMPLETED)
        state, reason = dom.state()
        stats["state"] = f"{STATES.get(state, state)} (reason {reason})"
        return stats
    except libvirt.libvirtError as err:
        return {"error": str(err)}
    finally:
        conn.close()


def figures(wall: float, stats: dict[str, Any], dirty: float | None) -> dict[str, Any]:
    return {"wall_s": round(wall, 2),
            "elapsed_s": (round(stats["time_elapsed"] / 1000, 2)
                          if "time_elapsed" in stats else None),
            "downtime_ms": stats.get("downtime"),
            "sent_mib": (round(stats["data_processed"] / 2**20, 1)
                         if "data_processed" in stats else None),
            "iterations": stats.get("memory_iteration"),
            "dirty_mib_s": dirty, "state": stats.get("state"),
            "error": stats.get("error")}


class DirtyRate:
    """The highest dirty rate QEMU reports for the running migration job on the source
    (the completed job's statistics do not keep it), polled every 0.2 s."""

    def __init__(self, uri: str) -> None:
        self.uri = uri
        self.max_mib_s: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def __enter__(self) -> DirtyRate:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _poll(self) -> None:
        conn = libvirt.open(self.uri)
        try:
            while not self._stop.wait(0.2):
                with contextlib.suppress(libvirt.libvirtError):
                    stats = conn.lookupByName(VM).jobStats(0)
                    rate = stats.get("memory_dirty_rate")
                    if rate:
                        mib = rate * stats.get("memory_page_size", 4096) / 2**20
                        self.max_mib_s = max(self.max_mib_s or 0.0, round(mib, 1))
        finally:
            conn.close()


def back_to_local(h2_uri: str, h2_address: str) -> None:
    """The guest home again (virsh, client-driven: the machine's libvirtd does not listen,
    so the migration URI names the machine's end of the link)."""
    local_end = h2_address.rsplit(".", 1)[0] + ".1"
    must(run(["virsh", "-c", h2_uri, "migrate", "--live", "--unsafe", "--persistent",
              "--undefinesource", VM, LOCAL, f"tcp://{local_end}"]), "migrate back")


def guest(env: dict[str, str], *cmd: str) -> str:
    """``guest exec`` (retried for a minute: after a migration the agent's channel
    comes back a moment after the guest runs)."""
    deadline = time.monotonic() + 60
    while True:
        done = run([*KVMOPS, "guest", "exec", VM, "--", *cmd], env=env, timeout=120)
        if done.returncode == 0 or time.monotonic() > deadline:
            return must(done, f"guest exec {' '.join(cmd)[:40]}")
        time.sleep(1)


def passes(env: dict[str, str]) -> int | None:
    """How many passes the writer has made (None: the guest agent did not answer within
    a minute): read after each move, it shows whether the guest still runs."""
    try:
        return int(guest(env, "wc", "-l", "/tmp/kb-ts").split()[0])
    except SystemExit:
        return None


def step(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def cleanup(h2_uri: str | None) -> None:
    """The VM (and the bench's pool) off both hosts; the second host only while it is
    up."""
    for uri in [LOCAL] + ([h2_uri] if h2_uri else []):
        with contextlib.suppress(libvirt.libvirtError):
            conn = libvirt.open(uri)
            try:
                remove_vms(conn, VM)
                with contextlib.suppress(libvirt.libvirtError):
                    conn.storagePoolLookupByName(POOL).destroy()
            finally:
                conn.close()


def readme_section(r: dict[str, Any]) -> str:
    def row(label: str, f: dict[str, Any]) -> str:
        alive = f.get("writer_passes")
        return (f"| {label} | {f['wall_s']} | {f['elapsed_s']} | {f['downtime_ms']} | "
                f"{f['sent_mib']} | {f['iterations']} | {f['dirty_mib_s'] or '-'} | "
                f"{'no answer' if alive is None else alive} |")

    rows = []
    for n, rnd in enumerate(r["rounds"], 1):
        rows.append(row(f"{n}: `virsh migrate --live` (reference)", rnd["virsh"]))
        if "kvmops" in rnd:
            rows.append(row(f"{n}: `kvmops vm migrate --to h2`", rnd["kvmops"]))
    table = "\n".join(rows)
    w = r["writer"]
    span = ("over the whole run" if w["whole_run"] else
            "before the first migration (the guest agent did not answer after the last "
            "move back within 60 s, so the log of the whole run was not read)")
    return f"""
{r['date']}, {r['cpus']} CPUs, load average at start {r['load']}: the tiny guest (256 MiB,
1 vCPU, TCG) from the local libvirtd to the second host (`kvmops dev second-host`, a
namespaced libvirtd reached over a veth; shared storage on one file system), with a
writer in the guest rewriting {r['dirty_mib']} MiB of random data in its RAM root file
system without pause: {w['passes']} passes {span}, {w['rate_mib_s']} MiB/s
rewritten (guest time); longest gap between two passes {w['max_gap_ms']} ms, median
{w['median_gap_ms']} ms (the guest's clock stops while it is paused, so the gap does not
measure the downtime).
Figures from libvirt's completed-job statistics on the target ("libvirt s": the job's
elapsed time; "passes": memory iterations; "dirty MiB/s": the highest dirty rate QEMU
reported during the job; "writer": the writer's pass count read through the guest agent
on the target right after the move, i.e. the guest still runs).

| round: command | wall s | libvirt s | downtime ms | sent MiB | passes | dirty MiB/s | writer |
| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |
{table}

{r['summary']}
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--index", type=int,
                        default=int(os.environ.get("KVMOPS_TEST_H2_INDEX", "7")))
    parser.add_argument("--dirty-mib", type=int, default=16)
    parser.add_argument("--write-readme", action="store_true")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="kvmops-migration-bench-"))
    db = f"sqlite:///{workdir / 'bench.db'}"
    guest_dir = Path(os.environ.get("KVMOPS_GUEST_DIR", "/var/cache/kvmops/guest"))
    result: dict[str, Any] = {"date": time.strftime("%Y-%m-%d"), "cpus": os.cpu_count(),
                              "load": round(os.getloadavg()[0], 1),
                              "dirty_mib": args.dirty_mib, "rounds": []}
    h2_uri: str | None = None
    try:
        with second_host(args.index) as info:
            h2_uri, h2_address = info["uri"], info["address"]
            env = {"KVMOPS_DB": db}
            step(f"second host {h2_uri}")
            cleanup(h2_uri)
            must(run([*KVMOPS, "host", "add", "h2", h2_uri], env=env), "host add")
            # shared storage as kvmops recognises it: a pool over the same path on both
            for uri in (LOCAL, h2_uri):
                run(["virsh", "-c", uri, "pool-create-as", POOL, "dir", "--target",
                     info["images_dir"]])
            must(run([*KVMOPS, "vm", "create", VM, "--memory", "256M", "--vcpus", "1",
                      "--kernel", str(guest_dir / "vmlinuz"),
                      "--initrd", str(guest_dir / "initrd.img"),
                      "--cmdline", "console=ttyS0", "--disk", "size=64M",
                      "--images-dir", info["images_dir"]]), "vm create")
            step("guest created; booting")
            must(run([*KVMOPS, "vm", "start", VM, "--wait-agent", "300"], timeout=400),
                 "vm start")
            guest({}, "sh", "-c", f"( {writer_script(args.dirty_mib)} ) "
                                  ">/dev/null 2>&1 </dev/null &")
            time.sleep(8)  # the buffer made, a few passes done
            before = [float(x) for x in guest({}, "cat", "/tmp/kb-ts").split()]
            step(f"writer running: {len(before)} passes so far")
            for _ in range(args.rounds):
                rnd: dict[str, Any] = {}
                start = time.perf_counter()
                with DirtyRate(LOCAL) as dirty:
                    must(run(["virsh", "-c", LOCAL, "migrate", "--live", "--unsafe",
                              "--persistent", "--undefinesource", VM, h2_uri]),
                         "virsh migrate")
                rnd["virsh"] = figures(time.perf_counter() - start, job_stats(h2_uri),
                                       dirty.max_mib_s)
                rnd["virsh"]["writer_passes"] = passes({"KVMOPS_URI": h2_uri})
                step(f"virsh: {rnd['virsh']}")
                back_to_local(h2_uri, h2_address)
                rnd["back_after_virsh_passes"] = passes({})
                step(f"back: {rnd['back_after_virsh_passes']} passes")
                start = time.perf_counter()
                with DirtyRate(LOCAL) as dirty:
                    done = run([*KVMOPS, "vm", "migrate", VM, "--to", "h2", "--json"],
                               env=env)
                wall = time.perf_counter() - start
                if done.returncode == 0:
                    rnd["kvmops"] = figures(wall, job_stats(h2_uri), dirty.max_mib_s)
                    rnd["kvmops"]["writer_passes"] = passes({"KVMOPS_URI": h2_uri})
                    step(f"kvmops: {rnd['kvmops']}")
                    with contextlib.suppress(ValueError):
                        rnd["kvmops_result"] = json.loads(done.stdout)
                    back_to_local(h2_uri, h2_address)
                    rnd["back_after_kvmops_passes"] = passes({})
                    step(f"back: {rnd['back_after_kvmops_passes']} passes")
                else:
                    rnd["kvmops_error"] = (done.stderr or done.stdout).strip()[-400:]
                    step(f"kvmops failed: {rnd['kvmops_error']}")
                result["rounds"].append(rnd)
            try:  # the pass log of the whole run, if the agent answers after the moves
                guest({}, "touch", "/tmp/kb-stop")
                time.sleep(2)
                stamps = [float(x) for x in guest({}, "cat", "/tmp/kb-ts").split()]
                result["agent_after"] = True
            except SystemExit as err:
                step(f"no pass log at the end: {err}")
                stamps, result["agent_after"] = before, False
            cleanup(h2_uri)  # while it is there (its address leads nowhere afterwards)
            h2_uri = None
        gaps = sorted(b - a for a, b in itertools.pairwise(stamps))
        result["writer"] = {
            "passes": len(stamps), "whole_run": result["agent_after"],
            "rate_mib_s": (round(args.dirty_mib * (len(stamps) - 1)
                                 / (stamps[-1] - stamps[0]), 1) if len(stamps) > 1 else None),
            "max_gap_ms": round(gaps[-1] * 1000) if gaps else None,
            "median_gap_ms": round(statistics.median(gaps) * 1000) if gaps else None}
        ratios = [r["kvmops"]["wall_s"] / r["virsh"]["wall_s"] for r in result["rounds"]
                  if "kvmops" in r]
        own = [r["kvmops_result"].get("seconds") for r in result["rounds"]
               if "kvmops_result" in r]
        errors = [r["kvmops_error"] for r in result["rounds"] if "kvmops_error" in r]
        result["summary"] = (
            (f"`kvmops vm migrate` / `virsh migrate` wall time: "
             f"{', '.join(f'{x:.2f}' for x in ratios)}; kvmops's own figure (preflight of "
             f"both hosts, migration, target checked running and persistent, source "
             f"undefined): {', '.join(f'{x} s' for x in own)}; the rest of its wall time "
             "is the CLI process and its connections. QEMU's dirty rate counts distinct "
             "pages dirtied per second (the writer rewrites the same buffer), so it stays "
             "below the writer's rate.") if ratios else
            f"`kvmops vm migrate` did not complete: {errors[0] if errors else 'not run'}")
        print(json.dumps(result, indent=2, default=str))
        if args.write_readme:
            write_marked_section(BEGIN, END, readme_section(result).strip("\n"))
            _ensure_heading()
        return 0
    finally:
        cleanup(None)
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
