"""Full backups into sealed repositories vs a plain one (issue 14 item 2's target).

A running tiny guest whose 1 GiB disk holds 768 MiB of random (incompressible) data is
backed up in full (``--no-freeze``: the disk holds no file system of the guest's) with
the CLI, as an operator would, into a new repository each time:
plain, ``--compress zstd``, ``--encrypt --key-file K``, and both. The order alternates
over ``--rounds`` rounds and each configuration keeps its best time (the host is shared).
The source disk's pages are dropped from the page cache before each backup
(posix_fadvise DONTNEED on that one file, not the whole cache). Then ``backup verify``
of each last repository. Target: a sealed full at >= 0.8x the plain one's speed.

Run as root: ``.venv/bin/python bench/backup_seal_bench.py [--write-readme]``. Everything
lives under /var/lib/kvmops/bench and the backup directory with the prefix
``kvmops-bench-seal-`` and is removed at the end. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from backup_bench import BASE, cleanup, machine_facts
from benchlib import write_marked_section

from kvmops.backup.seal import Sealing, seal_file
from kvmops.config import settings
from kvmops.devguest.build import build_guest
from kvmops.host.connection import Host
from kvmops.vm import lifecycle
from kvmops.vm.lifecycle import CreateRequest, DiskRequest

MiB = 1 << 20
PREFIX = "kvmops-bench-seal-"
KVMOPS = str(Path(sys.executable).with_name("kvmops"))
BEGIN, END = "<!-- backup-seal-bench:begin -->", "<!-- backup-seal-bench:end -->"
CONFIGS: dict[str, list[str]] = {
    "plain": [],
    "--compress zstd": ["--compress", "zstd"],
    "--encrypt": ["--encrypt"],
    "--compress zstd --encrypt": ["--compress", "zstd", "--encrypt"],
}


def drop_file_cache(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def cli(*args: str, stdin: bytes | None = None) -> float:
    start = time.perf_counter()
    done = subprocess.run([KVMOPS, *args], input=stdin, capture_output=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"kvmops {' '.join(args)}: {done.stderr.decode().strip()}")
    return seconds


def tree_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-mib", type=int, default=768)
    parser.add_argument("--disk-mib", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--write-readme", action="store_true")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("run as root", file=sys.stderr)
        return 2
    tag = str(os.getpid())
    vm = f"{PREFIX}{tag}"
    BASE.mkdir(parents=True, exist_ok=True)
    lifecycle.ensure_qemu_can_reach(BASE)
    work = BASE / f"{PREFIX}{tag}"
    work.mkdir(mode=0o755)
    repos = settings().backup_dirs[0] / f"{PREFIX}{tag}"
    started = time.monotonic()

    def say(message: str) -> None:
        print(f"[{time.monotonic() - started:6.1f}s] {message}", flush=True)

    facts = machine_facts(work)
    load_before = os.getloadavg()
    best: dict[str, float] = {}
    times: dict[str, list[float]] = {}
    stored: dict[str, int] = {}
    verify: dict[str, float] = {}
    seal_alone: dict[str, float] = {}
    with Host() as host:
        try:
            image = build_guest(settings().cache_dir / "guest")
            raw, disk = work / "src.raw", work / "vda.qcow2"
            say(f"{args.data_mib} MiB of random data on a {args.disk_mib} MiB qcow2")
            with open(raw, "wb") as fh:
                subprocess.run(["head", "-c", str(args.data_mib * MiB), "/dev/urandom"],
                               stdout=fh, check=True)
            os.truncate(raw, args.disk_mib * MiB)
            subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw),
                            str(disk)], check=True)
            raw.unlink()
            say("creating and booting the VM")
            lifecycle.create(host, CreateRequest(
                name=vm, memory=256 * MiB, vcpus=1, kernel=image.kernel, initrd=image.initrd,
                cmdline="console=ttyS0", disks=[DiskRequest(path=disk, fmt="qcow2")],
                images_dir=work))
            # The disk holds no file system the guest uses: the backups need its QEMU
            # running, not its boot finished (a TCG boot takes minutes on a loaded host).
            lifecycle.start(host, vm)
            repos.mkdir(parents=True)
            key = work / "repo.key"
            for round_no in range(args.rounds):
                order = list(CONFIGS) if round_no % 2 == 0 else list(reversed(CONFIGS))
                for name in order:
                    repo = repos / f"r{round_no}-{list(CONFIGS).index(name)}"
                    extra = list(CONFIGS[name])
                    if "--encrypt" in extra:
                        extra += ["--key-file", str(key)]
                    drop_file_cache(disk)
                    seconds = cli("backup", "create", vm, "--repo", str(repo), "--full",
                                  "--no-freeze", *extra)
                    say(f"round {round_no + 1}: full backup, {name}: {seconds:.2f} s")
                    best[name] = min(best.get(name, float("inf")), seconds)
                    times.setdefault(name, []).append(seconds)
                    stored[name] = tree_size(repo)
                    if round_no == args.rounds - 1:
                        keys = ["--key-file", str(key)] if "--encrypt" in extra else []
                        verify[name] = cli("backup", "verify", vm, "--repo", str(repo), *keys)
                        say(f"verify, {name}: {verify[name]:.2f} s")
                    if round_no < args.rounds - 1:
                        shutil.rmtree(repo)
            # The sealing step alone, on the plain backup's qcow2 (page cache warm, as the
            # work file is right after QEMU wrote it): what a sealed backup adds.
            plain_file = next((repos / f"r{args.rounds - 1}-0").rglob("vda.qcow2"))
            plain_file.read_bytes()
            for name, sealing in (("--compress zstd", Sealing(compress_level=3)),
                                  ("--encrypt", Sealing(key=os.urandom(32))),
                                  ("--compress zstd --encrypt",
                                   Sealing(compress_level=3, key=os.urandom(32)))):
                start = time.perf_counter()
                seal_file(plain_file, work / "sealed", sealing, "vm/backups/X/vda.qcow2")
                seal_alone[name] = time.perf_counter() - start
                (work / "sealed").unlink()
        finally:
            cleanup(host, vm, work)
            shutil.rmtree(repos, ignore_errors=True)
            # sealed repositories keep a per-VM lock in the work directory of each
            for leftover in settings().backup_work_dir.glob(f"*/{vm}"):
                shutil.rmtree(leftover, ignore_errors=True)
                with contextlib.suppress(OSError):
                    leftover.parent.rmdir()
    load_after = os.getloadavg()
    plain = best["plain"]
    data = args.data_mib * MiB
    lines = [
        "## Full backup into sealed repositories (`bench/backup_seal_bench.py`)",
        "",
        f"Command: `.venv/bin/python bench/backup_seal_bench.py --write-readme` "
        f"({datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}; {facts['cores']} cores, "
        f"{facts['disk']}; {facts['versions']}; load average before/after "
        f"{load_before[0]:.1f} / {load_after[0]:.1f} with other work on the host). A running "
        f"tiny guest (TCG), {args.disk_mib} MiB disk holding {args.data_mib} MiB of random "
        f"data; `kvmops backup create VM --repo NEW --full --no-freeze [options]` timed end "
        f"to end (CLI start-up included), best and median of {args.rounds} alternating rounds, the "
        "source disk "
        "dropped from the page cache before each. Speed ratio = plain time / this time "
        "(target >= 0.8). seal_file alone: sealing the plain backup's qcow2 once more, page "
        "cache warm, as a sealed backup does with its work file.",
        "",
        "| Repository | Full backup (best) | MiB/s | Speed vs plain (best) | Median | Speed vs "
        "plain (median) | Stored | verify | seal_file alone |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name in CONFIGS:
        lines.append(
            f"| {name} | {best[name]:.2f} s | {data / MiB / best[name]:.0f} | "
            f"{plain / best[name]:.2f} | {statistics.median(times[name]):.2f} s | "
            f"{statistics.median(times['plain']) / statistics.median(times[name]):.2f} | "
            f"{stored[name] / MiB:.0f} MiB | "
            f"{verify.get(name, float('nan')):.2f} s | "
            f"{f'{seal_alone[name]:.2f} s' if name in seal_alone else '-'} |")
    section = "\n".join(lines)
    print(section)
    if args.write_readme:
        write_marked_section(BEGIN, END, section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
