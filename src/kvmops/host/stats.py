"""Every VM's figures in one libvirt call (``virConnectGetAllDomainStats``): state,
vCPUs, memory and CPU time, for VM lists that stay quick with hundreds of VMs."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import libvirt

from kvmops.host.connection import Host, call
from kvmops.host.domain import STATE_NAMES

_STATS = (libvirt.VIR_DOMAIN_STATS_STATE | libvirt.VIR_DOMAIN_STATS_VCPU
          | libvirt.VIR_DOMAIN_STATS_BALLOON | libvirt.VIR_DOMAIN_STATS_CPU_TOTAL)


@dataclass(frozen=True)
class DomainFigures:
    name: str
    uuid: str
    state: str
    running: bool
    vcpus: int
    memory: int  # bytes, the configured maximum
    memory_current: int | None  # bytes, the balloon's size while running
    cpu_time_ns: int | None
    # Read on demand (each is one more call): the persistent definition, the flags.
    inactive_xml: Callable[[], str | None]
    autostart: Callable[[], bool]
    persistent: Callable[[], bool]


def all_domain_figures(host: Host) -> list[DomainFigures]:
    """Figures of every defined or running VM."""
    records = call("reading VM statistics", host.conn.getAllDomainStats, _STATS, 0)
    found = []
    for domain, stats in records:
        code = int(stats.get("state.state", libvirt.VIR_DOMAIN_NOSTATE))
        running = code not in (libvirt.VIR_DOMAIN_SHUTOFF, libvirt.VIR_DOMAIN_NOSTATE)
        current = stats.get("balloon.current")
        found.append(DomainFigures(
            name=str(domain.name()), uuid=str(domain.UUIDString()),
            state=STATE_NAMES.get(code, "unknown"), running=running,
            vcpus=int(stats.get("vcpu.current", 0)),
            memory=int(stats.get("balloon.maximum", 0)) * 1024,
            memory_current=int(current) * 1024 if running and current is not None else None,
            cpu_time_ns=int(stats["cpu.time"]) if running and "cpu.time" in stats else None,
            inactive_xml=_inactive_xml(domain), autostart=_flag(domain, "autostart"),
            persistent=_flag(domain, "isPersistent")))
    return found


def _inactive_xml(domain: libvirt.virDomain) -> Callable[[], str | None]:
    def read() -> str | None:
        try:
            return str(domain.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))
        except libvirt.libvirtError:  # vanished meanwhile
            return None

    return read


def _flag(domain: libvirt.virDomain, method: str) -> Callable[[], bool]:
    def read() -> bool:
        try:
            return bool(getattr(domain, method)())
        except libvirt.libvirtError:  # vanished meanwhile
            return False

    return read
