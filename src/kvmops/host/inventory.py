"""The VM list of one host in a few round trips (for hosts over the network).

``virConnectGetAllDomainStats`` with the cheap groups (state, balloon, vcpu, cpu-total)
gives every VM's figures in one call; two domain listings filtered by libvirt say which
are persistent and which autostart. A per-VM ``virDomainGetInfo`` would be one round
trip per VM: over a network link that, not libvirtd, is what a list of a hundred VMs
waits for.
"""

from __future__ import annotations

from dataclasses import dataclass

import libvirt

from kvmops.host.connection import Host, call
from kvmops.host.domain import Domain, state_name

_GROUPS = (libvirt.VIR_DOMAIN_STATS_STATE | libvirt.VIR_DOMAIN_STATS_BALLOON
           | libvirt.VIR_DOMAIN_STATS_VCPU | libvirt.VIR_DOMAIN_STATS_CPU_TOTAL)
#: Report what is at hand instead of waiting for a VM whose QEMU is busy with a job.
_NOWAIT = getattr(libvirt, "VIR_CONNECT_GET_ALL_DOMAINS_STATS_NOWAIT", 0)


@dataclass
class BulkVm:
    """One VM's list figures (memory in bytes; None when libvirt did not report it)."""

    domain: Domain
    name: str
    uuid: str
    state: str
    vcpus: int
    max_memory: int
    memory: int | None
    cpu_time_ns: int | None
    autostart: bool
    persistent: bool


def _names(host: Host, flags: int, what: str) -> set[str]:
    return {d.name() for d in call(what, host.conn.listAllDomains, flags)}


def bulk_vms(host: Host) -> list[BulkVm]:
    """Every defined or running VM of ``host`` with its list figures: one statistics
    call and two listings, whatever the number of VMs."""
    records = call("reading VM statistics", host.conn.getAllDomainStats, _GROUPS, _NOWAIT)
    persistent = _names(host, libvirt.VIR_CONNECT_LIST_DOMAINS_PERSISTENT,
                        "listing persistent VMs")
    autostart = _names(host, libvirt.VIR_CONNECT_LIST_DOMAINS_AUTOSTART,
                       "listing VMs that autostart")
    found = []
    for raw, stats in records:
        name = raw.name()
        state = state_name(int(stats.get("state.state", -1)))
        running = state not in ("shut off", "no state")
        max_kib = stats.get("balloon.maximum")
        current = stats.get("balloon.current")
        cpu = stats.get("cpu.time")
        vcpus = stats.get("vcpu.current", stats.get("vcpu.maximum", 0))
        found.append(BulkVm(
            domain=Domain(raw), name=name, uuid=raw.UUIDString(), state=state,
            vcpus=int(vcpus), max_memory=int(max_kib or current or 0) * 1024,
            memory=int(current) * 1024 if running and current is not None else None,
            cpu_time_ns=int(cpu) if running and cpu is not None else None,
            autostart=name in autostart, persistent=name in persistent))
    return found
