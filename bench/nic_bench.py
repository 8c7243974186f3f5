"""NIC hot-plug latency: ``kvmops vm nic add``/``remove`` on a running tiny guest, side by
side with ``virsh attach-interface``/``detach-interface`` doing the same.

One tiny guest (the test guest, TCG) on an isolated network; N rounds, kvmops and virsh
alternating (so the host's load hits both alike). Per round and side:

* add: wall time of the command (returns once libvirt attached the device);
* seen: from the start of the add until the guest agent lists the new MAC
  (``guest-network-get-interfaces``, polled every 20 ms in this process): the guest's
  kernel probed the device and made its interface;
* remove: wall time of the removal; kvmops' returns once the device left the live XML
  (the guest released it), virsh's once libvirt's detach call returned.

Usage (as root)::

    .venv/bin/python bench/nic_bench.py [-n 7] [--write-readme]

The guest and network are named ``kvmops-test-bench-nic-PID`` (``make clean-test``
removes them after an interrupted run), on 192.168.245.0/24; removed afterwards even on
failure.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from benchlib import write_marked_section

REPO = Path(__file__).resolve().parent.parent
KVMOPS = str(Path(sys.executable).parent / "kvmops")
GUEST = Path("/var/cache/kvmops/guest")
BEGIN, END = "<!-- nic-bench:begin -->", "<!-- nic-bench:end -->"
IPV4, DHCP = "192.168.245.1/24", "192.168.245.10-192.168.245.50"


def _run(argv: Sequence[str]) -> tuple[float, str]:
    """Wall seconds and stdout of one command, which must succeed."""
    start = time.perf_counter()
    proc = subprocess.run(list(argv), capture_output=True, text=True, check=False, timeout=300)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return wall, proc.stdout


@dataclass
class Side:
    add: list[float] = field(default_factory=list)
    seen: list[float] = field(default_factory=list)
    remove: list[float] = field(default_factory=list)
    startup: list[float] = field(default_factory=list)  # kvmops --version: no libvirt

    def median(self, what: str) -> float:
        return float(statistics.median(getattr(self, what)))


def _guest_macs(domain: object) -> set[str]:
    import libvirt_qemu

    try:
        reply = libvirt_qemu.qemuAgentCommand(
            domain, json.dumps({"execute": "guest-network-get-interfaces"}), 5, 0)
    except Exception:  # a busy or not yet connected agent: poll again
        return set()
    return {str(i.get("hardware-address", "")).lower() for i in json.loads(reply)["return"]}


def _wait_seen(domain: object, mac: str, start: float, timeout: float = 120) -> float:
    while mac not in _guest_macs(domain):
        if time.perf_counter() - start > timeout:
            raise SystemExit(f"NIC {mac} never appeared in the guest")
        time.sleep(0.02)
    return time.perf_counter() - start


def _wait_agent(domain: object, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not _guest_macs(domain):
        if time.monotonic() > deadline:
            raise SystemExit("the bench guest's agent never answered")
        time.sleep(1)


def _mac(n: int, side: int) -> str:
    return f"52:54:00:fe:{side:02x}:{n:02x}"


def measure(vm: str, net: str, runs: int) -> tuple[Side, Side]:
    import libvirt

    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)  # polls fail until up
    conn = libvirt.open("qemu:///system")
    try:
        domain = conn.lookupByName(vm)
        _wait_agent(domain)
        k, v = Side(), Side()
        for n in range(runs + 1):  # round 0 warms up both sides
            mac = _mac(n, 1)
            start = time.perf_counter()
            add, _ = _run([KVMOPS, "vm", "nic", "add", vm, "--network", net, "--mac", mac])
            seen = _wait_seen(domain, mac, start)
            remove, _ = _run([KVMOPS, "vm", "nic", "remove", vm, mac])
            if n:
                k.add.append(add)
                k.seen.append(seen)
                k.remove.append(remove)
                k.startup.append(_run([KVMOPS, "--version"])[0])
            mac = _mac(n, 2)
            start = time.perf_counter()
            add, _ = _run(["virsh", "-q", "attach-interface", vm, "network", net, "--model",
                           "virtio", "--mac", mac, "--live", "--config"])
            seen = _wait_seen(domain, mac, start)
            remove, _ = _run(["virsh", "-q", "detach-interface", vm, "network", "--mac", mac,
                              "--live", "--config"])
            if n:
                v.add.append(add)
                v.seen.append(seen)
                v.remove.append(remove)
            # virsh's detach may return before the guest released the device
            deadline = time.monotonic() + 60
            while mac in _guest_macs(domain) and time.monotonic() < deadline:
                time.sleep(0.05)
        return k, v
    finally:
        conn.close()


def render(k: Side, v: Side, runs: int) -> str:
    load = os.getloadavg()[0]
    lines = [
        "## NIC hot-plug (`bench/nic_bench.py`)",
        "",
        f"Command: `.venv/bin/python bench/nic_bench.py -n {runs} --write-readme` (as root). "
        f"Date: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {platform.node()}, "
        f"{os.cpu_count()} CPUs, load {load:.1f}; the tiny guest under TCG on an isolated "
        f"network; medians of {runs} rounds, kvmops and virsh alternating.",
        "",
        "| step (ms) | kvmops | virsh | kvmops / virsh |",
        "| --- | ---: | ---: | ---: |",
    ]
    for label, what in (("add returns", "add"), ("add until the guest lists the NIC", "seen"),
                        ("remove returns", "remove")):
        kt, vt = k.median(what), v.median(what)
        lines.append(f"| {label} | {kt * 1000:.0f} | {vt * 1000:.0f} | {kt / vt:.2f} |")
    lines += [
        "",
        f"`kvmops --version` (interpreter and command table, no libvirt) takes a median "
        f"{k.median('startup') * 1000:.0f} ms in the same run. Beyond it, kvmops' add "
        "loads the libvirt binding, lxml and the NIC modules, reads every VM's XML (the "
        "MAC must be unique on the host) and writes an audit row (not profiled yet); its "
        "remove waits until the guest released the device, virsh's returns when "
        "libvirt's detach call does (libvirt waits a few seconds "
        "for the guest itself). The guest's part (probing virtio_net, its interface "
        "visible to qemu-ga) is the difference between the first two rows.",
    ]
    return "\n".join(lines)


def write_readme(section: str) -> None:
    write_marked_section(BEGIN, END, section)


def cleanup(vm: str, net: str) -> None:
    """Remove the bench guest and network, whatever state they are in; never fails."""
    for argv in (["virsh", "-q", "destroy", vm],
                 [KVMOPS, "vm", "undefine", vm, "--remove-storage"],
                 ["virsh", "-q", "undefine", vm],
                 ["virsh", "-q", "net-destroy", net], ["virsh", "-q", "net-undefine", net]):
        with contextlib.suppress(Exception):
            subprocess.run(argv, capture_output=True, check=False, timeout=120)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", "--runs", type=int, default=7)
    parser.add_argument("--write-readme", action="store_true",
                        help="write the table into bench/README.md")
    args = parser.parse_args(argv)
    name = f"kvmops-test-bench-nic-{os.getpid()}"
    try:
        _run([KVMOPS, "net", "create", name, "--mode", "isolated", "--ipv4", IPV4,
              "--dhcp", DHCP])
        _run([KVMOPS, "vm", "create", name, "--memory", "256M", "--kernel",
              str(GUEST / "vmlinuz"), "--initrd", str(GUEST / "initrd.img"), "--cmdline",
              "console=ttyS0", "--nic", f"network={name}", "--start"])
        k, v = measure(name, name, args.runs)
    finally:
        cleanup(name, name)
    section = render(k, v, args.runs)
    print(section)
    if args.write_readme:
        write_readme(section)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
