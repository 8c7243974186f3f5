"""How quickly ``kvmops`` answers, side by side with the ``virsh`` commands it replaces.

Three pairs, each timed in the same run, alternately (kvmops, virsh, kvmops, ...) so
that the host's load hits both alike; the figure is the median of N wall-clock times
(and of the CPU time, user + system, which load disturbs less):

    kvmops vm list                      virsh list --all
    kvmops vm info VM                   virsh dominfo VM
    kvmops guest exec VM -- /bin/true   virsh qemu-agent-command VM '{"execute":"guest-ping"}'

The target is a ratio within 8 (issue 10, item 7). ``kvmops`` runs as installed: the
console script of this environment, byte code cached (one warm-up run each; the
environment's PYTHONDONTWRITEBYTECODE is dropped for it, as pip compiles on install).

Usage (as root; the tiny guest must be built)::

    .venv/bin/python bench/cli_startup.py [-n 21] [--vm NAME] [--write-readme] [--check]

Without ``--vm`` a tiny-guest VM ``kvmops-bench-cli-PID`` is created, booted until its
agent answers, and removed afterwards (also on failure).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from benchlib import write_marked_section

REPO = Path(__file__).resolve().parent.parent
KVMOPS = str(Path(sys.executable).parent / "kvmops")
BEGIN, END = "<!-- cli-bench:begin -->", "<!-- cli-bench:end -->"
TARGET = 8.0


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["COLUMNS"] = "200"
    return env


def _timed(argv: Sequence[str], env: dict[str, str]) -> tuple[float, float]:
    """(wall seconds, CPU seconds of the child) of one run, which must succeed."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env,
                          check=False)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed ({proc.returncode}): "
                         f"{proc.stderr.decode(errors='replace').strip()}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


@dataclass
class Pair:
    label: str
    kvmops: list[str]
    virsh: list[str]
    k_wall: float = 0.0
    v_wall: float = 0.0
    k_cpu: float = 0.0
    v_cpu: float = 0.0

    @property
    def ratio(self) -> float:
        return self.k_wall / self.v_wall

    @property
    def cpu_ratio(self) -> float:
        return self.k_cpu / self.v_cpu if self.v_cpu else float("inf")


def measure(pairs: list[Pair], runs: int) -> None:
    env = _env()
    for pair in pairs:
        _timed(pair.kvmops, env)  # warm-up: byte code written, caches filled
        _timed(pair.virsh, env)
        k_times, v_times = [], []
        for _ in range(runs):
            k_times.append(_timed(pair.kvmops, env))
            v_times.append(_timed(pair.virsh, env))
        pair.k_wall = statistics.median(t[0] for t in k_times)
        pair.v_wall = statistics.median(t[0] for t in v_times)
        pair.k_cpu = statistics.median(t[1] for t in k_times)
        pair.v_cpu = statistics.median(t[1] for t in v_times)


# Where kvmops' time goes: what any Python command line built like kvmops pays before
# kvmops' own code runs: the interpreter, Typer (on Click), the libvirt binding and one
# connection to libvirtd; and the last without Typer, as the quick commands run.
FLOOR = [
    ("python -c pass", ["-c", "pass"]),
    ("kvmops --version (Typer, the lazy command table)", None),
    ("a no-op Typer command with one str option", ["-c", """
import typer, typer.main
app = typer.Typer()
@app.callback()
def root() -> None: pass
@app.command("x")
def x(uri: str | None = typer.Option(None, "--connect")) -> None: pass
typer.main.get_command(app).main(args=["x"], standalone_mode=False)
"""]),
    ("... + import libvirt, open and close a connection", ["-c", """
import typer, typer.main
app = typer.Typer()
@app.callback()
def root() -> None: pass
@app.command("x")
def x(uri: str | None = typer.Option(None, "--connect")) -> None:
    import libvirt
    libvirt.open(uri or "qemu:///system").close()
typer.main.get_command(app).main(args=["x"], standalone_mode=False)
"""]),
    ("python: import libvirt, open and close a connection (no Typer)", ["-c", """
import libvirt
libvirt.open("qemu:///system").close()
"""]),
]


def measure_floor(runs: int) -> list[tuple[str, float, float]]:
    env = _env()
    rows = []
    for label, args in FLOOR:
        argv = [KVMOPS, "--version"] if args is None else [sys.executable, *args]
        _timed(argv, env)
        times = [_timed(argv, env) for _ in range(runs)]
        rows.append((label, statistics.median(t[0] for t in times),
                     statistics.median(t[1] for t in times)))
    return rows


def _cli(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([KVMOPS, *args], capture_output=True, text=True, env=_env(),
                          check=False, timeout=600)
    if check and proc.returncode != 0:
        raise SystemExit(f"kvmops {' '.join(args)} failed: {proc.stderr.strip()}")
    return proc


@contextlib.contextmanager
def bench_vm(name: str | None) -> Iterator[str]:
    """An existing VM (``--vm``), or a booted tiny guest removed afterwards."""
    if name:
        yield name
        return
    from kvmops.config import settings
    from kvmops.devguest.build import build_guest

    guest = build_guest(settings().cache_dir / "guest")
    name = f"kvmops-bench-cli-{os.getpid()}"
    images = settings().images_dir
    try:
        _cli("vm", "create", name, "--memory", "256M", "--vcpus", "1",
             "--kernel", str(guest.kernel), "--initrd", str(guest.initrd),
             "--cmdline", "console=ttyS0", "--images-dir", str(images))
        _cli("vm", "start", name, "--wait-agent", "240")
        yield name
    finally:
        _cli("vm", "destroy", name, check=False)
        _cli("vm", "undefine", name, "--remove-storage", check=False)


def render(pairs: list[Pair], runs: int, vm: str,
           floor: list[tuple[str, float, float]]) -> str:
    load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    date = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        "## CLI start-up (`bench/cli_startup.py`)",
        "",
        f"Command: `.venv/bin/python bench/cli_startup.py -n {runs}` (as root). Date: {date}; "
        f"{os.cpu_count()} CPUs, load average {load}; VM `{vm}` (the tiny guest under TCG). "
        "Median of the runs, kvmops and virsh alternating; kvmops is the installed console "
        "script with cached byte code. Ratio = kvmops / virsh in the same run; target "
        f"within {TARGET:g}x.",
        "",
        "| command | kvmops ms | virsh command | virsh ms | ratio | CPU ms kvmops / virsh "
        "| CPU ratio | within 8x |",
        "|---|---:|---|---:|---:|---:|---:|---|",
    ]
    for p in pairs:
        lines.append(
            f"| `{p.label}` | {p.k_wall * 1000:.0f} | `{' '.join(p.virsh[:2])} ...` "
            f"| {p.v_wall * 1000:.0f} | {p.ratio:.1f} | {p.k_cpu * 1000:.0f} / "
            f"{p.v_cpu * 1000:.0f} | {p.cpu_ratio:.1f} | {'yes' if p.ratio <= TARGET else 'no'} |")
    virsh = statistics.median(p.v_wall for p in pairs)
    virsh_cpu = statistics.median(p.v_cpu for p in pairs)
    lines += [
        "",
        "Where the time goes: what a Python command built like kvmops pays before any of "
        "kvmops' own code, in the same run (x virsh = over the median virsh command):",
        "",
        "| floor | ms | CPU ms | x virsh (wall) | x virsh (CPU) |",
        "|---|---:|---:|---:|---:|",
    ]
    for label, wall, cpu in floor:
        lines.append(f"| {label} | {wall * 1000:.0f} | {cpu * 1000:.0f} | "
                     f"{wall / virsh:.1f} | {cpu / virsh_cpu:.1f} |")
    typer_noop, stack, bare = floor[2], floor[3], floor[4]
    own = statistics.median(p.k_cpu for p in pairs) - bare[2]
    within = [p for p in pairs if p.ratio <= TARGET]
    verdict = ("all three are within 8x" if len(within) == len(pairs) else
               f"{len(within)} of {len(pairs)} are within 8x ("
               + ", ".join(f"`{p.label}` {p.ratio:.1f}x" for p in pairs if p not in within)
               + " is not)")
    lines += [
        "",
        f"Reading: in this run {verdict}. What a Python command line pays before its own "
        f"code: the interpreter {floor[0][1] / virsh:.1f}x virsh (wall), a no-op Typer "
        f"command {typer_noop[1] / virsh:.1f}x, with the libvirt binding and one connection "
        f"{stack[1] / virsh:.1f}x. In their plain forms (only the options shown, `guest "
        "exec` with its `--`) the three commands run without Typer or Click "
        "(`kvmops.cli.quick`; any other command line goes to Typer), so their floor is the "
        f"last row, a bare libvirt connection in Python ({bare[1] / virsh:.1f}x); kvmops' "
        f"own part is a median {own * 1000:.0f} ms of CPU over it (its modules, the libvirt "
        "calls, the agent round trips, the output). Before issue 10 `kvmops vm list` took "
        "0.41 s, 24x `virsh list --all`. "
        "What changed: a lazy command table (`import kvmops.cli.main` loads no command "
        "module); Typer below 0.25 (0.25+ converts every option value through pydantic: "
        "about twice the CPU for a no-op command); no pydantic, Rich or lxml on these paths "
        "(dataclass records, plain-text tables, the accelerator read from the XML root with "
        "expat; `vm info` still parses the definition with lxml and `guest exec` checks the "
        "agent channel with it); the VM list from each VM's `virDomainGetInfo` instead of "
        "the bulk statistics call, which waits on every running VM's QEMU. "
        "`tests/unit/test_cli_imports.py` fails when Typer, Click, pydantic or Rich come "
        "back on these paths. The ratio moves with the host's load (virsh's few "
        "milliseconds are the denominator): measure on a quiet host.",
    ]
    return "\n".join(lines)


def write_readme(section: str) -> None:
    write_marked_section(BEGIN, END, section)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", "--runs", type=int, default=21)
    parser.add_argument("--vm", help="an existing running VM with an answering agent")
    parser.add_argument("--write-readme", action="store_true",
                        help="write the table into bench/README.md")
    parser.add_argument("--check", action="store_true",
                        help="exit 1 when a ratio is above the target")
    args = parser.parse_args(argv)
    with bench_vm(args.vm) as vm:
        pairs = [
            Pair("kvmops vm list", [KVMOPS, "vm", "list"], ["virsh", "list", "--all"]),
            Pair("kvmops vm info VM", [KVMOPS, "vm", "info", vm], ["virsh", "dominfo", vm]),
            Pair("kvmops guest exec VM -- /bin/true",
                 [KVMOPS, "guest", "exec", vm, "--", "/bin/true"],
                 ["virsh", "qemu-agent-command", vm, '{"execute":"guest-ping"}']),
        ]
        measure(pairs, args.runs)
    floor = measure_floor(args.runs)
    section = render(pairs, args.runs, vm if args.vm else "kvmops-bench-cli-PID", floor)
    print(section)
    if args.write_readme:
        write_readme(section)
    return 1 if args.check and any(p.ratio > TARGET for p in pairs) else 0


if __name__ == "__main__":
    raise SystemExit(main())
