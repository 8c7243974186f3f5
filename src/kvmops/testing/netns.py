"""Tear-down of the test fixture's namespaced second libvirtd (tests/integration/nshost.py).

The fixture keeps everything of one namespaced host in a state directory
``NSHOST_ROOT/<netns name>/``: the private copies bind-mounted over the daemon's
``/run/libvirt``, ``/var/lib/libvirt``, ``/etc/libvirt``, ``/var/log/libvirt`` and
``/var/cache/libvirt``, and a file ``namespaces`` naming the network namespaces it made
(the host's and its upstream peer's). Removing it kills only the processes inside those
namespaces (libvirtd first, so that it restarts nothing; then QEMU, dnsmasq, virtlogd),
deletes the namespaces and the directory. Both the fixture and ``make clean-test`` (after
a crashed run) use this; nothing outside the test prefix is ever touched, and the host's
own libvirtd is never signalled (it is not in a test namespace).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

TEST_PREFIX = "kvmops-test-"
NSHOST_ROOT = Path("/run/kvmops-test-nshost")
NAMESPACES_FILE = "namespaces"
#: A state directory's list of nftables tables (``inet``) it added in the machine's own
#: namespace (kvmops.testing.secondhost: the guard of a second host's veth), deleted with it.
NFT_TABLES_FILE = "nft-tables"


def netns_pids(name: str) -> list[int]:
    """The processes whose network namespace is ``name`` (none when it does not exist)."""
    proc = subprocess.run(["ip", "netns", "pids", name], capture_output=True, text=True,
                          check=False, timeout=30)
    return [int(p) for p in proc.stdout.split() if p.isdigit()] if proc.returncode == 0 else []


def alive(pid: int) -> bool:
    """Is ``pid`` running (a zombie is not: it has ended, only not reaped yet)?"""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie counts as gone: its parent (the test run) reaps it later.
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][:1] != "Z"
    return False


def _signal_and_wait(pids: list[int], sig: signal.Signals, wait: float) -> list[int]:
    """Send ``sig`` to ``pids``; return the ones still alive after up to ``wait`` s."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
    deadline = time.monotonic() + wait
    left = [pid for pid in pids if alive(pid)]
    while left and time.monotonic() < deadline:
        time.sleep(0.2)
        left = [pid for pid in left if alive(pid)]
    return left


def stop_namespace_processes(names: list[str], first: int | None = None,
                             grace: float = 10.0, prefix: str = TEST_PREFIX) -> None:
    """End every process in the test network namespaces ``names``: ``first`` (the
    namespaced libvirtd) alone first, then the rest with SIGTERM, then SIGKILL.
    ``prefix``: the names' required prefix (``kvmops-`` for a ``dev second-host``)."""
    for name in names:
        if not name.startswith(prefix):
            raise ValueError(f"refusing to stop processes outside a test namespace: {name!r}")
    inside = {pid for name in names for pid in netns_pids(name)}
    if first is not None and first in inside:
        _signal_and_wait([first], signal.SIGTERM, grace)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        rest = sorted(pid for name in names for pid in netns_pids(name) if alive(pid))
        if not rest:
            return
        _signal_and_wait(rest, sig, grace)


def _pidfile(path: Path) -> int | None:
    with contextlib.suppress(OSError, ValueError):
        return int(path.read_text().strip())
    return None


def remove_ns_host(state: Path, prefix: str = TEST_PREFIX) -> list[str]:
    """Kill what runs in the namespaces of the state directory ``state``, delete the
    namespaces (their veths go with them), the nftables tables it lists and the
    directory; return the namespaces deleted. ``prefix``: what every name must start with
    (the test prefix, or ``kvmops-`` for a ``dev second-host``)."""
    if not prefix.startswith("kvmops-") or not state.name.startswith(prefix):
        raise ValueError(f"refusing to remove a namespaced host outside {prefix!r}: {state}")
    listed = state / NAMESPACES_FILE
    names = listed.read_text().split() if listed.is_file() else [state.name]
    names = [name for name in names if name.startswith(prefix)]
    stop_namespace_processes(names, first=_pidfile(state / "run" / "libvirtd.pid"),
                             prefix=prefix)
    tables = state / NFT_TABLES_FILE
    for table in tables.read_text().split() if tables.is_file() else []:
        if table.startswith(prefix):
            subprocess.run(["nft", "delete", "table", "inet", table], capture_output=True,
                           check=False, timeout=30)
    deleted = []
    for name in names:
        if Path("/run/netns", name).exists():
            subprocess.run(["ip", "netns", "delete", name], capture_output=True, check=False,
                           timeout=30)
            deleted.append(name)
    for name in names:  # a second host's ssh client drop-in (secondhost.start_ssh)
        Path("/etc/ssh/ssh_config.d", f"{name}.conf").unlink(missing_ok=True)
    shutil.rmtree(state, ignore_errors=True)
    return deleted


def remove_ns_hosts(prefix: str = TEST_PREFIX) -> list[str]:
    """Remove every namespaced test host whose state directory starts with ``prefix``
    (``make clean-test``); return the namespaces deleted."""
    if not prefix.startswith(TEST_PREFIX):
        raise ValueError(f"refusing to remove hosts outside the test prefix: {prefix!r}")
    if not NSHOST_ROOT.is_dir():
        return []
    deleted = []
    for state in sorted(NSHOST_ROOT.glob(f"{prefix}*")):
        deleted.extend(remove_ns_host(state))
    return deleted
