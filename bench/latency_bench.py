"""Guest write latency during a full backup: push mode vs fleecing, idle as the reference.

fio runs in the tiny guest (its tools disk) on the disk being backed up: 4 KiB random
writes, O_DIRECT, an fsync after each (``--ioengine=psync --direct=1 --fsync=1``), so a
write's completion latency is the disk path's. Each scenario starts a full backup (the
kvmops CLI) and 2 s later fio for ``--seconds``; the backup is sized to outlast fio.

Scenarios, all in the same run (ratios against the idle run of that run):

* idle: no backup;
* local repository, ``--speed 15`` (a throttled backup on this machine's disk), push and
  fleecing;
* slow repository: ext4 on a loop device mounted ``-o sync`` whose writes are limited to
  ``--slow-mbps`` MB/s for QEMU (libvirt's blkiotune) and for the kvmops process (a blkio
  cgroup), i.e. a repository on a slow or remote path; push and fleecing; then
  ``--fleecing auto`` after that push run, to show which mode it picks.

Run as root: ``.venv/bin/python bench/latency_bench.py [--write-readme]``. Everything lives
under /var/lib/kvmops/bench-latency and bench-latency-images (VM prefix
``kvmops-bench-lat-``) and is removed at the end, even on failure. Not part of the tests.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

BASE = Path("/var/lib/kvmops/bench-latency")  # repositories, the slow file system
IMAGES = Path("/var/lib/kvmops/bench-latency-images")  # the VM's disk, the scratch
os.environ["KVMOPS_IMAGE_DIRS"] = str(IMAGES)
os.environ["KVMOPS_BACKUP_DIRS"] = str(BASE)

from kvmops.agent.benchparse import parse_fio  # noqa: E402
from kvmops.config import settings  # noqa: E402
from kvmops.devguest.build import build_guest  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.benchlib import write_marked_section  # noqa: E402

KVMOPS = [sys.executable, "-m", "kvmops.cli.main"]
PREFIX = "kvmops-bench-lat-"
CGROUP = Path("/sys/fs/cgroup/blkio/kvmops-bench-latency")
DATA_MIB = 300
BEGIN, END = "<!-- latency-bench:begin -->", "<!-- latency-bench:end -->"


def sh(*argv: str, check: bool = True) -> str:
    return subprocess.run(argv, check=check, capture_output=True, text=True).stdout


def kvmops(*args: str) -> str:
    proc = subprocess.run([*KVMOPS, *args], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"kvmops {' '.join(args)}: {proc.stderr.strip()}")
    return proc.stdout


@dataclass
class Result:
    name: str
    iops: float
    p50_ms: float
    p99_ms: float
    backup_s: float | None = None
    mode: str = ""  # what the backup's notes say it did


@contextlib.contextmanager
def slow_mount(mbps: int) -> Iterator[tuple[Path, str]]:
    """ext4 on a loop device, mounted -o sync (writes wait for the device); yields the
    mount point and the device's major:minor. The write limit is put on by the caller."""
    image = BASE / "slow.img"
    with open(image, "wb") as fh:
        fh.truncate(1536 << 20)
    loop = sh("losetup", "-f", "--show", str(image)).strip()
    point = BASE / "slow"
    try:
        sh("mkfs.ext4", "-q", "-F", loop)
        point.mkdir(exist_ok=True)
        sh("mount", "-o", "sync", loop, str(point))
        point.chmod(0o755)
        st = os.stat(loop)
        CGROUP.mkdir(exist_ok=True)
        devno = f"{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}"
        (CGROUP / "blkio.throttle.write_bps_device").write_text(f"{devno} {mbps * 1000000}")
        yield point, loop
    finally:
        sh("umount", str(point), check=False)
        sh("losetup", "-d", loop, check=False)
        with contextlib.suppress(OSError):
            CGROUP.rmdir()


@contextlib.contextmanager
def guest_vm(tag: str) -> Iterator[str]:
    guest = build_guest(settings().cache_dir / "guest")
    name = f"{PREFIX}{tag}"
    images = IMAGES
    try:
        kvmops("vm", "create", name, "--memory", "256M", "--vcpus", "1", "--kernel",
               str(guest.kernel), "--initrd", str(guest.initrd), "--cmdline", "console=ttyS0",
               "--disk", "size=512M", "--images-dir", str(images))
        kvmops("vm", "disk", "attach", name, "--image", str(guest.tools), "--format", "raw",
               "--readonly", "--config-only")
        kvmops("vm", "start", name, "--wait-agent", "300")
        yield name
    finally:
        sh("virsh", "destroy", name, check=False)
        sh("virsh", "undefine", name, "--checkpoints-metadata", check=False)


def fio(vm: str, seconds: int) -> dict[str, float]:
    out = kvmops("guest", "exec", vm, "--timeout", str(seconds + 120), "--", "fio",
                 "--name=lat", "--filename=/dev/vda", "--rw=randwrite", "--bs=4k",
                 "--offset=0", f"--size={DATA_MIB}M", f"--runtime={seconds}", "--time_based",
                 "--ioengine=psync", "--direct=1", "--fsync=1", "--output-format=json")
    return parse_fio(out)


def measure(name: str, vm: str, seconds: int, backup: list[str] | None = None,
            slow: bool = False) -> Result:
    """fio during the backup (started 2 s before it); the backup must outlast fio."""
    proc = None
    started = time.monotonic()
    if backup is not None:
        enter = f"echo $$ > {CGROUP}/cgroup.procs; " if slow else ""
        cmd = " ".join(f"'{a}'" for a in [*KVMOPS, "backup", "create", vm, *backup,
                                          "--json"])
        proc = subprocess.Popen(["sh", "-c", f"{enter}exec {cmd}"], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        time.sleep(2)
    metrics = fio(vm, seconds)
    result = Result(name, metrics["write_iops"], metrics["write_clat_p50_us"] / 1000,
                    metrics["write_clat_p99_us"] / 1000)
    if proc is not None:
        out, err = proc.communicate()
        if proc.returncode != 0:
            raise RuntimeError(f"backup ({name}) failed: {err.strip()}")
        result.backup_s = time.monotonic() - started
        notes = json.loads(out).get("notes", [])
        result.mode = "fleecing" if any(n.startswith("fleecing:") for n in notes) else "push"
        if result.backup_s < seconds + 2:
            print(f"warning: the {name} backup ended before fio ({result.backup_s:.1f} s)")
    print(f"{name:42} iops {result.iops:7.1f}  p50 {result.p50_ms:8.2f} ms  "
          f"p99 {result.p99_ms:9.2f} ms  backup {result.backup_s or 0:5.1f} s {result.mode}")
    return result


def run(seconds: int, slow_mbps: int) -> tuple[list[Result], str]:
    for d in (BASE, IMAGES):
        if d.exists():
            shutil.rmtree(d)
        d.mkdir(parents=True)
        d.chmod(0o755)
    tag = f"{os.getpid():x}"
    results: list[Result] = []
    with slow_mount(slow_mbps) as (slow, loop), guest_vm(tag) as vm:
        kvmops("guest", "exec", vm, "--timeout", "600", "--", "/bin/sh", "-c",
               f"dd if=/dev/urandom of=/dev/vda bs=1M count={DATA_MIB} conv=fsync")
        sh("virsh", "blkiotune", vm, "--device-write-bytes-sec",
           f"{loop},{slow_mbps * 1000000}", "--live")
        local, scratch = BASE / "repo", IMAGES / "scratch"
        for d in (local, scratch):
            d.mkdir(mode=0o755)
        common = ["--full", "--disk", "vda", "--no-freeze"]
        speed = ["--speed", "15"]
        results.append(measure("idle", vm, seconds))
        for name, repo, extra, is_slow in (
                ("local repo, --speed 15, push", local, [*speed, "--no-fleecing"], False),
                ("local repo, --speed 15, fleecing", local,
                 [*speed, "--fleecing", "--scratch-dir", str(scratch)], False),
                (f"slow repo ({slow_mbps} MB/s, sync), push", slow / "r", ["--no-fleecing"],
                 True),
                (f"slow repo ({slow_mbps} MB/s, sync), fleecing", slow / "r",
                 ["--fleecing", "--scratch-dir", str(scratch)], True),
                (f"slow repo ({slow_mbps} MB/s, sync), auto", slow / "r",
                 ["--scratch-dir", str(scratch)], True)):
            if name.endswith("auto"):  # auto acts on the last *push* run's measurement
                shutil.rmtree(slow / "r", ignore_errors=True)
                results.append(measure(f"{name.removesuffix(', auto')}, push (again)", vm,
                                       seconds, ["--repo", str(repo), *common,
                                                 "--no-fleecing"], is_slow))
            elif repo.exists():
                shutil.rmtree(repo)
            results.append(measure(name, vm, seconds, ["--repo", str(repo), *common, *extra],
                                   is_slow))
    for d in (BASE, IMAGES):
        shutil.rmtree(d, ignore_errors=True)
    return results, os.uname().nodename


def render(results: list[Result], seconds: int, slow_mbps: int) -> str:
    idle = results[0]
    rows = ["| scenario | backup mode | write IOPS | p50 ms | p99 ms | p50 / idle | "
            "p99 / idle | backup s |", "|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        rows.append(f"| {r.name} | {r.mode or '-'} | {r.iops:.1f} | {r.p50_ms:.2f} | "
                    f"{r.p99_ms:.2f} | {r.p50_ms / idle.p50_ms:.2f} | "
                    f"{r.p99_ms / idle.p99_ms:.2f} | "
                    f"{'-' if r.backup_s is None else f'{r.backup_s:.1f}'} |")
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    load = Path("/proc/loadavg").read_text().split()[0]
    return "\n".join([
        "## Guest write latency during a backup: push mode vs fleecing",
        "",
        f"`bench/latency_bench.py` ({when}, {os.cpu_count()} cores, TCG guest, load "
        f"average {load} at the end). fio in the guest on the disk being backed up: 4 KiB "
        f"random writes, O_DIRECT, fsync after each, {seconds} s, started 2 s into a full "
        f"backup of {DATA_MIB} MiB of data; ratios against the idle run of the same run. "
        f"The slow repository is ext4 on a loop device mounted `-o sync` with writes "
        f"limited to {slow_mbps} MB/s for QEMU (blkiotune) and kvmops (blkio cgroup).",
        "",
        *rows,
        "",
    ])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=15)
    parser.add_argument("--slow-mbps", type=int, default=10)
    parser.add_argument("--write-readme", action="store_true")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("run as root")
    results, _host = run(args.seconds, args.slow_mbps)
    section = render(results, args.seconds, args.slow_mbps)
    print(section)
    if args.write_readme:
        write_marked_section(BEGIN, END, section + "\n" + ANALYSIS)


ANALYSIS = """When fleecing helps: only when copy-before-write would wait on something slow. With
a local repository the push job's copy-before-write writes land in the page cache and
cost about what the fleecing image's writes cost, and fleecing adds the copy through the
NBD socket (QEMU's main loop, shared with a TCG guest on 2 cores), so a throttled
(`--speed`) backup into a local repository slows the guest's writes alike or a little less
in push mode: there fleecing buys nothing. With a repository whose writes are slow (a
network file system, a busy or throttled disk), each push-mode copy-before-write queues
behind the backup's own writes and the guest's writes stall for seconds (a few writes per
second complete), while with fleecing they go to the local scratch image and stay within
a small factor of idle. `--fleecing auto` picks fleecing there from the slowdown the
previous push run measured (QEMU's write counters; the "auto" row follows a second push
run into that repository), or at once for a network or FUSE file system. The p99 of a
TCG guest on a loaded 2-core machine is noisy (tens of ms idle): compare rows of one run."""


if __name__ == "__main__":
    main()
