"""Instant recovery against a full restore: time from the command to the guest agent's
first answer, on the same backup point in the same run.

A tiny guest with a disk of --disk-mib holding --data-mib of random data is backed up
(full + a small incremental) and shut off. Then, with the page cache dropped before
each, the point is restored as a new VM twice per round: ``backup restore --new-vm``
followed by ``vm start --wait-agent`` (the data is copied before the boot), and
``backup restore --instant --new-vm --detach`` (the VM boots on overlays while QEMU
pulls the data), timing the agent's first answer and, for the instant one, the end of
the background copy. Figures go into bench/README.md between the instant-bench markers.

    .venv/bin/python bench/instant_bench.py [--disk-mib 512] [--data-mib 256] [--rounds 2]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchlib import write_marked_section  # type: ignore[import-not-found]

from kvmops.config import settings
from kvmops.devguest.build import build_guest
from kvmops.host.connection import Host
from kvmops.host.domain import Domain
from kvmops.vm.lifecycle import ping_agent

PREFIX = "kvmops-bench-instant-"
BEGIN, END = "<!-- instant-bench:begin -->", "<!-- instant-bench:end -->"


def kvmops(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([sys.executable, "-m", "kvmops.cli.main", *args],
                          capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise SystemExit(f"kvmops {' '.join(args)} failed: {proc.stderr.strip()}")
    return proc


def drop_caches() -> None:
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


def wait_agent(host: Host, vm: str, t0: float, bound: float = 600.0) -> float:
    while not (host.has_domain(vm) and ping_agent(Domain.of(host.lookup(vm)), timeout=2)):
        if time.monotonic() - t0 > bound:
            raise SystemExit(f"VM {vm} did not answer in {bound:.0f}s")
        time.sleep(0.1)
    return time.monotonic() - t0


def remove(host: Host, name: str) -> None:
    with contextlib.suppress(Exception):
        dom = host.lookup(name)
        with contextlib.suppress(Exception):
            if dom.is_active():
                dom.destroy()
    kvmops("vm", "undefine", name, "--remove-storage", check=False)
    kvmops("backup", "instant", "forget", name, check=False)
    with contextlib.suppress(FileNotFoundError):
        (settings().state_dir / "instant" / f"{name}.json").unlink()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--disk-mib", type=int, default=512)
    parser.add_argument("--data-mib", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--no-readme", action="store_true")
    args = parser.parse_args()

    guest = build_guest(settings().cache_dir / "guest")
    images = Path(tempfile.mkdtemp(prefix=PREFIX, dir=settings().images_dir))
    repo_parent = Path(tempfile.mkdtemp(prefix=PREFIX, dir=settings().backup_dir))
    for d in (images, repo_parent):
        d.chmod(0o755)
    repo = repo_parent / "repo"
    src = f"{PREFIX}src"
    made: list[str] = [src]
    instant_agent: list[float] = []
    instant_done: list[float] = []
    full_agent: list[float] = []
    full_copy: list[float] = []
    try:
        with Host() as host:
            for name in ("kernel", "initrd"):  # kept by the rebuild: inside the image dirs
                shutil.copyfile(getattr(guest, name), images / Path(getattr(guest, name)).name)
            kvmops("vm", "create", src, "--memory", "256M", "--vcpus", "1",
                   "--kernel", str(images / Path(guest.kernel).name),
                   "--initrd", str(images / Path(guest.initrd).name),
                   "--cmdline", "console=ttyS0", "--disk", f"size={args.disk_mib}M",
                   "--images-dir", str(images))
            kvmops("vm", "start", src, "--wait-agent", "300")
            kvmops("guest", "exec", src, "--timeout", "600", "--", "/bin/sh", "-c",
                   f"dd if=/dev/urandom of=/dev/vda bs=1M count={args.data_mib} "
                   "conv=fsync 2>/dev/null")
            kvmops("backup", "create", src, "--repo", str(repo), "--full")
            kvmops("guest", "exec", src, "--", "/bin/sh", "-c",
                   "dd if=/dev/urandom of=/dev/vda bs=1M count=8 seek=4 conv=fsync "
                   "2>/dev/null")
            point = json.loads(kvmops("backup", "create", src, "--repo", str(repo),
                                      "--json").stdout)["id"]
            host.lookup(src).destroy()
            for n in range(args.rounds):
                full, fast = f"{PREFIX}full{n}", f"{PREFIX}inst{n}"
                made += [full, fast]
                drop_caches()
                t0 = time.monotonic()
                kvmops("backup", "restore", src, "--repo", str(repo), "--at", point,
                       "--new-vm", full, "--images-dir", str(images))
                full_copy.append(time.monotonic() - t0)
                kvmops("vm", "start", full)
                full_agent.append(wait_agent(host, full, t0))
                remove(host, full)

                drop_caches()
                t0 = time.monotonic()
                kvmops("backup", "restore", src, "--repo", str(repo), "--at", point,
                       "--instant", "--new-vm", fast, "--images-dir", str(images),
                       "--detach")
                instant_agent.append(wait_agent(host, fast, t0))
                kvmops("backup", "instant", "resume", fast)
                instant_done.append(time.monotonic() - t0)
                remove(host, fast)
                print(f"round {n + 1}: full restore + boot {full_agent[-1]:.1f}s "
                      f"(copy {full_copy[-1]:.1f}s), instant {instant_agent[-1]:.1f}s "
                      f"(copy done {instant_done[-1]:.1f}s)", flush=True)
    finally:
        with Host() as host:
            for name in made:
                remove(host, name)
        shutil.rmtree(images, ignore_errors=True)
        shutil.rmtree(repo_parent, ignore_errors=True)

    med = statistics.median
    section = "\n".join([
        "## Instant recovery (`bench/instant_bench.py`)",
        "",
        f"Tiny TCG guest, {args.disk_mib} MiB disk holding {args.data_mib} MiB of random "
        "data, point = full + an 8 MiB incremental; page cache dropped before each restore; "
        f"median of {args.rounds} round(s), both kinds in every round, same point. Time "
        "from the command to the guest agent's first answer.",
        "",
        "| restore | to guest agent | data in the final image |",
        "|---|---:|---:|",
        f"| full (`--new-vm`, then `vm start`) | {med(full_agent):.1f} s | "
        f"after {med(full_copy):.1f} s (before the boot) |",
        f"| instant (`--instant --detach`) | {med(instant_agent):.1f} s | "
        f"by {med(instant_done):.1f} s (background pull, unlimited; checked after the "
        "agent answered) |",
        "",
        f"Instant recovery answered {med(full_agent) / med(instant_agent):.2f}x sooner; "
        "both include the TCG boot. The full restore's copy grows with the data, the "
        "instant one never waits for it.",
    ])
    print(section)
    if not args.no_readme:
        write_marked_section(BEGIN, END, section)


if __name__ == "__main__":
    main()
