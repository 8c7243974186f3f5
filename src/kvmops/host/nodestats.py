"""Host-wide counters for the live charts and ``kvmops top``: the host's CPU time
(busy and total, all CPUs), its memory, and the guest agent channel state of the
running VMs. A few cheap calls per host; the per-VM statistics come from
:mod:`kvmops.host.domstats` (one bulk call)."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass

import libvirt

from kvmops.host.connection import Host
from kvmops.host.errors import translate

_AGENT = re.compile(r"<target\s[^>]*name=['\"]org\.qemu\.guest_agent\.0['\"][^>]*>", re.S)
_STATE = re.compile(r"state=['\"]([a-z]+)['\"]")


@dataclass(frozen=True)
class NodeStats:
    """One reading of a host. CPU times are nanoseconds summed over all host CPUs."""

    cpus: int
    cpu_busy_ns: int | None  # kernel + user
    cpu_total_ns: int | None  # kernel + user + idle + iowait
    memory_total: int  # bytes
    memory_available: int | None  # bytes: free + buffers + cache
    collected_at: float


def node_stats(host: Host) -> NodeStats:
    """The host's CPU count, CPU time counters and memory."""
    try:
        cpus = int(host.conn.getInfo()[2])
        busy = total = None
        try:
            cpu = host.conn.getCPUStats(libvirt.VIR_NODE_CPU_STATS_ALL_CPUS, 0)
        except libvirt.libvirtError:
            cpu = {}
        if "idle" in cpu and "kernel" in cpu and "user" in cpu:
            busy = int(cpu["kernel"]) + int(cpu["user"])
            total = busy + int(cpu["idle"]) + int(cpu.get("iowait", 0))
        return NodeStats(cpus=cpus, cpu_busy_ns=busy, cpu_total_ns=total,
                         memory_total=host.memory_total(),
                         memory_available=host.memory_available(), collected_at=time.time())
    except libvirt.libvirtError as err:
        raise translate(err, f"reading host statistics of {host.uri}") from err


def agent_state(xml: str) -> str | None:
    """``connected`` or ``disconnected`` from a live domain XML's guest agent channel;
    None when the VM has no agent channel."""
    target = _AGENT.search(xml)
    if target is None:
        return None
    state = _STATE.search(target.group(0))
    return state.group(1) if state else "disconnected"


def agent_states(host: Host) -> dict[str, str | None]:
    """The guest agent channel state of each running VM (VMs vanishing meanwhile are
    left out)."""
    states: dict[str, str | None] = {}
    try:
        domains = host.conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE)
    except libvirt.libvirtError as err:
        raise translate(err, f"listing VMs of {host.uri}") from err
    for dom in domains:
        try:
            states[dom.name()] = agent_state(dom.XMLDesc(0))
        except libvirt.libvirtError:
            continue
    return states
