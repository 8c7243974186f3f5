"""The VM list of the API: one bulk libvirt call for every VM's figures.

``virConnectGetAllDomainStats`` returns state, vCPUs, memory and CPU time of
all domains at once. The hypervisor type (kvm/qemu: the accelerator) is not
among the statistics; it comes from each domain's XML once and is cached by
UUID until a life cycle event says the domain was (re)defined or undefined.
"""

from __future__ import annotations

import threading
import time

import libvirt
from pydantic import BaseModel

from kvmops.host.accel import Accelerator
from kvmops.host.connection import Host, call
from kvmops.vm.domxml import DomainSpec
from kvmops.vm.lifecycle import STATE_NAMES

STATS = (libvirt.VIR_DOMAIN_STATS_STATE | libvirt.VIR_DOMAIN_STATS_VCPU
         | libvirt.VIR_DOMAIN_STATS_BALLOON | libvirt.VIR_DOMAIN_STATS_CPU_TOTAL)


class VmListItem(BaseModel):
    name: str
    uuid: str
    state: str
    vcpus: int
    memory: int  # bytes, configured maximum
    memory_current: int | None  # bytes, current balloon size when running
    cpu_time_ns: int | None
    accelerator: str


class DomainTypeCache:
    """UUID -> accelerator; entries live ``ttl`` seconds or until invalidated."""

    def __init__(self, ttl: float = 300.0) -> None:
        self.ttl = ttl
        self._lock = threading.Lock()
        self._items: dict[str, tuple[str, float]] = {}

    def get(self, domain: libvirt.virDomain) -> str:
        uuid = domain.UUIDString()
        now = time.monotonic()
        with self._lock:
            hit = self._items.get(uuid)
        if hit is not None and now - hit[1] < self.ttl:
            return hit[0]
        try:
            xml = domain.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
            accel = Accelerator.from_domain_type(DomainSpec.from_xml(xml).domain_type).value
        except libvirt.libvirtError:  # vanished meanwhile
            return "unknown"
        with self._lock:
            self._items[uuid] = (accel, now)
        return accel

    def invalidate(self, uuid: str | None = None) -> None:
        with self._lock:
            if uuid is None:
                self._items.clear()
            else:
                self._items.pop(uuid, None)


def list_vms(host: Host, cache: DomainTypeCache) -> list[VmListItem]:
    records = call("reading VM statistics", host.conn.getAllDomainStats, STATS, 0)
    items = []
    for domain, stats in records:
        state = int(stats.get("state.state", libvirt.VIR_DOMAIN_NOSTATE))
        running = state not in (libvirt.VIR_DOMAIN_SHUTOFF, libvirt.VIR_DOMAIN_NOSTATE)
        current = stats.get("balloon.current")
        items.append(VmListItem(
            name=domain.name(),
            uuid=domain.UUIDString(),
            state=STATE_NAMES.get(state, "unknown"),
            vcpus=int(stats.get("vcpu.current", 0)),
            memory=int(stats.get("balloon.maximum", 0)) * 1024,
            memory_current=int(current) * 1024 if running and current is not None else None,
            cpu_time_ns=int(stats["cpu.time"]) if running and "cpu.time" in stats else None,
            accelerator=cache.get(domain),
        ))
    return sorted(items, key=lambda vm: vm.name)


class VmListCache:
    """Single-flight, short-lived cache of the list.

    ``getAllDomainStats`` costs libvirtd ~0.5 ms per domain; concurrent requests
    share one call, and a result younger than ``max_age`` seconds is reused
    unless a life cycle event (define, start, stop ...) invalidated it, so states
    are never stale; only CPU time figures may be up to ``max_age`` old.
    """

    def __init__(self, types: DomainTypeCache, max_age: float = 1.0) -> None:
        self.types = types
        self.max_age = max_age
        self._lock = threading.Lock()
        self._generation = 0
        self._cached: tuple[int, float, list[VmListItem]] | None = None

    def invalidate(self) -> None:
        self._generation += 1

    def get(self, host: Host) -> list[VmListItem]:
        with self._lock:
            cached = self._cached
            if (cached is not None and cached[0] == self._generation
                    and time.monotonic() - cached[1] < self.max_age):
                return cached[2]
            generation = self._generation
            items = list_vms(host, self.types)
            self._cached = (generation, time.monotonic(), items)
            return items
