"""The kernel side of host bridges: read links, addresses, routes and neighbours with
``ip -json``, run the planned ``ip`` steps, and probe whether a next hop still answers.

Everything runs in the network namespace of this process (``ip netns exec NS kvmops ...``
works on a namespace). Calls are bounded by timeouts; a refused ``ip`` command is a
:class:`StateError` naming the command and the kernel's message.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

from kvmops.errors import StateError, UnsupportedError
from kvmops.network.uplink import (
    Link,
    Step,
    UplinkSnapshot,
    parse_addresses,
    parse_bridge_options,
    parse_link,
    parse_routes,
)

IP_TIMEOUT = 15.0
#: Neighbour states that prove the next hop answered (a reply arrived lately).
ANSWERED = ("REACHABLE",)


def _ip_tool() -> str:
    tool = shutil.which("ip") or ("/usr/sbin/ip" if Path("/usr/sbin/ip").exists() else None)
    if tool is None:
        raise UnsupportedError("the 'ip' command (iproute2) is not installed",
                               hint="install iproute2 (apt-get install iproute2)")
    return tool


def ip(*args: str, json_out: bool = False) -> Any:
    """Run ``ip [-json] ARGS``; its parsed JSON (or None)."""
    argv = [_ip_tool(), *(["-json"] if json_out else []), *args]
    try:
        result = subprocess.run(argv, capture_output=True, text=True, timeout=IP_TIMEOUT,
                                check=False)
    except subprocess.TimeoutExpired:
        raise StateError(f"'ip {' '.join(args)}' did not finish in {IP_TIMEOUT:.0f} s",
                         hint="the kernel's network stack is busy: retry") from None
    if result.returncode != 0:
        message = (result.stderr or result.stdout).strip().splitlines()
        raise StateError(f"'ip {' '.join(args)}' failed: "
                         f"{message[-1] if message else 'exit ' + str(result.returncode)}",
                         hint="see 'ip -br link', 'ip addr' and 'ip route' for the state")
    if not json_out:
        return None
    return json.loads(result.stdout) if result.stdout.strip() else []


def link(name: str) -> Link | None:
    """The link ``name`` or None when there is none."""
    if not name or name.startswith("-"):
        return None
    try:
        found = ip("-details", "link", "show", "dev", name, json_out=True)
    except StateError:
        return None
    return parse_link(found[0]) if found else None


def exists(name: str) -> bool:
    return link(name) is not None


def snapshot(name: str) -> UplinkSnapshot:
    """The link, its addresses and every route through it (all tables, both families)."""
    found = ip("-details", "addr", "show", "dev", name, json_out=True)
    if not found:
        raise StateError(f"interface '{name}' vanished while it was read",
                         hint="see 'ip -br link'")
    routes = (parse_routes(ip("-4", "route", "show", "table", "all", "dev", name,
                              json_out=True), "inet", name)
              + parse_routes(ip("-6", "route", "show", "table", "all", "dev", name,
                                json_out=True), "inet6", name))
    return UplinkSnapshot(link=parse_link(found[0]), addresses=parse_addresses(found[0]),
                          routes=routes, taken_at=time.time())


def ports(bridge: str) -> list[str]:
    """The links enslaved to ``bridge``, by name."""
    found = ip("link", "show", "master", bridge, json_out=True)
    return sorted(str(item["ifname"]) for item in found or [])


def bridge_options(bridge: str) -> dict[str, int]:
    found = ip("-details", "link", "show", "dev", bridge, json_out=True)
    return parse_bridge_options(found[0]) if found else {}


def run(step: Step) -> None:
    ip(*step.args)


def route_get(address: str) -> dict[str, Any] | None:
    """The route the kernel would use to reach ``address`` (``ip route get``), or None
    when there is none."""
    try:
        found = ip("route", "get", address, json_out=True)
    except StateError:
        return None
    return found[0] if found else None


def neighbour_state(address: str, dev: str) -> str | None:
    """The neighbour table's state of ``address`` on ``dev`` (REACHABLE, STALE, FAILED,
    INCOMPLETE ...), or None when it has no entry."""
    try:
        found = ip("neigh", "show", "to", address, "dev", dev, json_out=True)
    except StateError:
        return None
    for entry in found or []:
        states = entry.get("state") or []
        return str(states[0]) if states else None
    return None


def _nudge(address: str, dev: str) -> None:
    """Make the kernel resolve ``address``: one UDP datagram to its discard port (9) out of
    ``dev``. Its reply does not matter; the ARP/NDP exchange it causes does."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    target = f"{address}%{dev}" if family == socket.AF_INET6 and address.lower().startswith(
        "fe80") else address
    with contextlib.suppress(OSError), socket.socket(family, socket.SOCK_DGRAM) as sock:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, dev.encode())
        info = socket.getaddrinfo(target, 9, family, socket.SOCK_DGRAM)[0][4]
        sock.sendto(b"kvmops bridge check", info)


def answers(address: str, dev: str, timeout: float) -> bool:
    """Does ``address`` answer ARP/NDP on ``dev`` within ``timeout`` seconds? The kernel
    is asked to resolve it again each second; its neighbour entry must become REACHABLE
    (a reply seen), not only exist."""
    with contextlib.suppress(StateError):
        ip("neigh", "flush", "to", address, "dev", dev)  # no answer from before counts
    deadline = time.monotonic() + timeout
    next_nudge = 0.0
    while True:
        now = time.monotonic()
        if now >= next_nudge:
            _nudge(address, dev)
            next_nudge = now + 1.0
        if neighbour_state(address, dev) in ANSWERED:
            return True
        if now >= deadline:
            return False
        time.sleep(min(0.2, max(0.0, deadline - now)))


def netns_id() -> str:
    """This process's network namespace (its inode): a rollback record is only for the
    namespace where it was made."""
    return str(os.stat("/proc/self/ns/net").st_ino)


def boot_id() -> str:
    """This boot's id: after a reboot a rollback record describes nothing that exists."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
