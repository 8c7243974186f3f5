"""Volume data through libvirt streams: ``kvmops volume upload``/``download`` against
``virsh vol-upload``/``vol-download`` (the same libvirt calls) and a plain ``cp`` of the
same file (the disk's own speed), on a dir pool in the test image directory.

A file of SIZE MiB of random bytes; N rounds, the three sides alternating so the host's
load hits them alike; medians of wall time, shown as MiB/s. Upload writes into an
existing raw volume of the file's size; download reads it back to a new file, which is
compared with the source once per side (a bench that copies wrong is no bench).

Usage (as root)::

    .venv/bin/python bench/pool_bench.py [-n 5] [--size 128] [--write-readme]

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
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from benchlib import write_marked_section

KVMOPS = str(Path(sys.executable).parent / "kvmops")
BASE = Path("/var/lib/kvmops/test-images")
BEGIN, END = "<!-- pool-bench:begin -->", "<!-- pool-bench:end -->"
SIDES = ("kvmops", "virsh", "cp")


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


def measure(runs: int, size_mib: int) -> dict[str, dict[str, list[float]]]:
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
                upload, download = _commands(side, pool, target, source, dest)
                subprocess.run(["sync"], check=False)
                times[side]["upload"].append(_run(upload))
                subprocess.run(["sync"], check=False)
                times[side]["download"].append(_run(download))
                if round_no == 0 and not filecmp.cmp(source, dest, shallow=False):
                    raise SystemExit(f"{side}: the downloaded file differs from the source")
                dest.unlink()
    finally:
        subprocess.run([KVMOPS, "pool", "delete", pool], capture_output=True, check=False,
                       env={**os.environ, "KVMOPS_IMAGE_DIRS": str(BASE)})
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(target, ignore_errors=True)
    return times


def section(times: dict[str, dict[str, list[float]]], runs: int, size_mib: int) -> str:
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    load = os.getloadavg()[0]
    rows = []
    for step in ("upload", "download"):
        rate = {s: size_mib / statistics.median(times[s][step]) for s in SIDES}
        rows.append(f"| {step} | {rate['kvmops']:.0f} | {rate['virsh']:.0f} | "
                    f"{rate['cp']:.0f} | {rate['kvmops'] / rate['virsh']:.2f} |")
    spread = ", ".join(f"{s} {step} {min(times[s][step]):.2f}-{max(times[s][step]):.2f} s"
                       for s in SIDES for step in ("upload", "download"))
    return "\n".join([
        "## Volume upload and download (`bench/pool_bench.py`)",
        "",
        f"Command: `.venv/bin/python bench/pool_bench.py -n {runs} --size {size_mib} "
        f"--write-readme` (as root). Date: {when}, "
        f"{os.cpu_count()} CPUs, load {load:.1f}; a raw volume of {size_mib} MiB in a dir "
        f"pool under {BASE}; medians of {runs} rounds, the sides alternating.",
        "",
        "| step (MiB/s) | kvmops (libvirt stream) | virsh vol-upload/-download | cp | "
        "kvmops / virsh |",
        "| --- | ---: | ---: | ---: | ---: |",
        *rows,
        "",
        f"Ranges: {spread}. `kvmops volume info` (start-up, connection, the volume's "
        f"XML) takes a median {statistics.median(times['fixed']['info']):.2f} s in the "
        "same run: the fixed part of every kvmops command. "
        "kvmops and virsh use the same libvirt calls "
        "(virStorageVolUpload/Download over one stream; kvmops sends 256 KiB chunks, "
        "libvirt's packet size); kvmops also starts Python, checks the path policy and "
        "the volume's format, refreshes the pool after an upload, and writes the "
        "download to a temporary file it fsyncs before the rename (cp and virsh do "
        "not fsync).",
    ])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, default=5, help="rounds (default 5)")
    parser.add_argument("--size", type=int, default=128, help="MiB (default 128)")
    parser.add_argument("--write-readme", action="store_true",
                        help="write the figures into bench/README.md")
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("pool_bench.py must run as root (libvirt's system pools)")
    times = measure(args.n, args.size)
    text = section(times, args.n, args.size)
    print(text)
    if args.write_readme:
        write_marked_section(BEGIN, END, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
