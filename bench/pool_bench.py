"""Volume data through libvirt streams: ``kvmops volume upload``/``download`` and the
REST API's ``PUT``/``GET .../volumes/{volume}/data`` against ``virsh vol-upload``/
``vol-download`` (the same libvirt calls) and a plain ``cp`` of the same file (the
disk's own speed), on a dir pool in the test image directory.

A file of SIZE MiB of random bytes (128 and 512 by default: the fixed start-up part of a
command weighs less on the larger); N rounds, the three sides alternating so the host's
load hits them alike; medians of wall time, shown as MiB/s, and for kvmops also the
transfer alone (the command's time minus its fixed part, ``kvmops volume info``).
Upload writes into an existing raw volume of the file's size; download reads it back to
a new file, which is compared with the source once per side (a bench that copies wrong
is no bench).

Usage (as root)::

    .venv/bin/python bench/pool_bench.py [-n 5] [--size 128 --size 512] [--write-readme]

The pool is named ``kvmops-test-bench-pool-PID`` (``make clean-test`` removes it after an
interrupted run); it and its files are removed afterwards even on failure.
"""

from __future__ import annotations

import argparse
import filecmp
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path

import httpx
from benchlib import bench_server, write_marked_section

KVMOPS = str(Path(sys.executable).parent / "kvmops")
BASE = Path("/var/lib/kvmops/test-images")
BEGIN, END = "<!-- pool-bench:begin -->", "<!-- pool-bench:end -->"
SIDES = ("kvmops", "api", "virsh", "cp")


def _run(argv: Sequence[str]) -> float:
    """Wall seconds of one command, which must succeed."""
    start = time.perf_counter()
    proc = subprocess.run(list(argv), capture_output=True, text=True, check=False, timeout=600,
                          env={**os.environ, "KVMOPS_IMAGE_DIRS": str(BASE)})
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return wall


def _commands(side: str, pool: str, target: Path, source: Path, dest: Path
              ) -> tuple[list[str], list[str]]:
    vol = "bench.raw"
    if side == "kvmops":
        return ([KVMOPS, "volume", "upload", pool, vol, str(source), "--format", "raw"],
                [KVMOPS, "volume", "download", pool, vol, str(dest), "--overwrite"])
    if side == "virsh":
        return (["virsh", "-q", "vol-upload", "--pool", pool, vol, str(source)],
                ["virsh", "-q", "vol-download", "--pool", pool, vol, str(dest)])
    return (["cp", "--sparse=never", str(source), str(target / vol)],
            ["cp", "--sparse=never", str(target / vol), str(dest)])


def _api(client: httpx.Client | None, step: str, pool: str, source: Path, dest: Path
         ) -> float:
    """Wall seconds of the REST API's upload (the file streamed as the body) or download
    (the response streamed into ``dest``), as a client of a running server sees it."""
    assert client is not None
    url = f"/api/v1/pools/{pool}/volumes/bench.raw/data"
    start = time.perf_counter()
    if step == "upload":
        with open(source, "rb") as fh:
            def body() -> Iterator[bytes]:
                while chunk := fh.read(1024 * 1024):
                    yield chunk

            answer = client.put(url, params={"format": "raw"}, content=body(),
                                headers={"Content-Length": str(source.stat().st_size)})
        if answer.status_code != 200:
            raise SystemExit(f"API upload failed ({answer.status_code}): {answer.text}")
    else:
        with client.stream("GET", url) as answer, open(dest, "wb") as out:
            if answer.status_code != 200:
                raise SystemExit(f"API download failed ({answer.status_code})")
            for chunk in answer.iter_raw():
                out.write(chunk)
    return time.perf_counter() - start


def measure(runs: int, size_mib: int, client: httpx.Client | None = None
            ) -> dict[str, dict[str, list[float]]]:
    pool = f"kvmops-test-bench-pool-{os.getpid()}"
    work = BASE / f"{pool}-work"
    target = BASE / pool
    times: dict[str, dict[str, list[float]]] = {s: {"upload": [], "download": []}
                                                for s in SIDES}
    times["fixed"] = {"info": []}  # a kvmops command that connects and reads the volume
    work.mkdir(parents=True)
    try:
        _run([KVMOPS, "pool", "create", pool, "--type", "dir", "--target", str(target),
              "--build"])
        _run([KVMOPS, "volume", "create", pool, "bench.raw", "--size", f"{size_mib}M",
              "--format", "raw"])
        source = work / "source.raw"
        with open(source, "wb") as fh:
            for _ in range(size_mib):
                fh.write(os.urandom(1024 * 1024))
        for round_no in range(runs):
            times["fixed"]["info"].append(_run([KVMOPS, "volume", "info", pool, "bench.raw"]))
            for side in SIDES:
                dest = work / f"{side}.raw"
                for step in ("upload", "download"):
                    subprocess.run(["sync"], check=False)
                    if side == "api":
                        took = _api(client, step, pool, source, dest)
                    else:
                        upload, download = _commands(side, pool, target, source, dest)
                        took = _run(upload if step == "upload" else download)
                    times[side][step].append(took)
                if round_no == 0 and not filecmp.cmp(source, dest, shallow=False):
                    raise SystemExit(f"{side}: the downloaded file differs from the source")
                dest.unlink()
    finally:
        subprocess.run([KVMOPS, "pool", "delete", pool], capture_output=True, check=False,
                       env={**os.environ, "KVMOPS_IMAGE_DIRS": str(BASE)})
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(target, ignore_errors=True)
    return times


def _table(times: dict[str, dict[str, list[float]]], size_mib: int) -> list[str]:
    fixed = statistics.median(times["fixed"]["info"])
    rows = []
    for step in ("upload", "download"):
        rate = {s: size_mib / statistics.median(times[s][step]) for s in SIDES}
        whole = statistics.median(times["kvmops"][step])
        # Not shown when the fixed part is (nearly) all of it: noise, not a rate.
        stream = size_mib / (whole - fixed) if whole - fixed > 0.1 * whole else None
        virsh = rate["virsh"]
        shown = "-" if stream is None else f"{stream:.0f}"
        ratio = "-" if stream is None else f"{stream / virsh:.2f}"
        rows.append(f"| {size_mib} MiB {step} | {rate['kvmops']:.0f} | {shown} | "
                    f"{rate['api']:.0f} | {virsh:.0f} | {rate['cp']:.0f} | "
                    f"{rate['kvmops'] / virsh:.2f} | {ratio} | {rate['api'] / virsh:.2f} |")
    return rows


def section(results: dict[int, dict[str, dict[str, list[float]]]], runs: int) -> str:
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    load = os.getloadavg()[0]
    sizes = sorted(results)
    rows = [row for size in sizes for row in _table(results[size], size)]
    spread = "; ".join(
        f"{size} MiB: " + ", ".join(f"{s} {step} {min(t[s][step]):.2f}-{max(t[s][step]):.2f} s"
                                    for s in SIDES for step in ("upload", "download"))
        + f", kvmops volume info {statistics.median(t['fixed']['info']):.2f} s"
        for size, t in sorted(results.items()))
    size_args = " ".join(f"--size {size}" for size in sizes)
    return "\n".join([
        "## Volume upload and download (`bench/pool_bench.py`)",
        "",
        f"Command: `.venv/bin/python bench/pool_bench.py -n {runs} {size_args} "
        f"--write-readme` (as root). Date: {when}, "
        f"{os.cpu_count()} CPUs, load {load:.1f} at the end (other work shared the "
        f"machine); a raw volume of the file's size in a dir pool under {BASE}; medians "
        f"of {runs} rounds, the sides alternating.",
        "",
        "| size, step (MiB/s) | kvmops command | kvmops stream (minus its fixed part) | "
        "REST API (PUT/GET .../data) | virsh vol-upload/-download | cp | "
        "kvmops / virsh | stream / virsh | API / virsh |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        *rows,
        "",
        f"Ranges and fixed parts: {spread}. The fixed part is the median of `kvmops volume "
        "info` in the same rounds (Python start-up, imports, the connection, the volume's "
        "XML): the \"stream\" column is the size over (the command's median minus it), "
        "the transfer itself. The API side is a client of a running `kvmops serve` on "
        "loopback (an operator's token; no start-up): the file streamed as the request "
        "body, the response streamed into a file; the server runs each as a job. "
        "kvmops and virsh use the same libvirt calls "
        "(virStorageVolUpload/Download over one stream of 256 KiB packets, libvirt's "
        "packet size); in a profile of a 128 MiB upload nearly all of the transfer is "
        "inside virStreamSend (libvirtd's pace), and neither a reader thread nor larger "
        "sends changed it. kvmops also checks the path policy, the volume's format and "
        "the qcow2 header, refreshes the pool after an upload, shows a progress bar "
        "(redrawn at most every 0.1 s: redrawing it per packet had cost a third of an "
        "upload), and writes a download to a temporary file it fdatasyncs before the "
        "rename (cp and virsh do not sync: kvmops keeps that for a download that is "
        "complete or absent after a crash), with the kernel's write-back started every "
        "8 MiB (posix_fadvise) so that the sync waits for the last few MiB only.",
    ])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, default=5, help="rounds (default 5)")
    parser.add_argument("--size", type=int, action="append",
                        help="MiB, repeatable (default: 128 and 512)")
    parser.add_argument("--write-readme", action="store_true",
                        help="write the figures into bench/README.md")
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("pool_bench.py must run as root (libvirt's system pools)")
    os.environ["KVMOPS_IMAGE_DIRS"] = str(BASE)
    with tempfile.TemporaryDirectory(prefix="kvmops-test-bench-") as tmp, \
            bench_server(Path(tmp), role="operator") as (url, token), \
            httpx.Client(base_url=url, timeout=600,
                         headers={"Authorization": f"Bearer {token}"}) as client:
        results = {size: measure(args.n, size, client) for size in (args.size or [128, 512])}
    text = section(results, args.n)
    print(text)
    if args.write_readme:
        write_marked_section(BEGIN, END, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
