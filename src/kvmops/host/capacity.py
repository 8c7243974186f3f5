"""A host's room for VMs (placement's facts) and what a running VM takes (its needs),
read through libvirt: a handful of calls per host, one ``info()`` per running VM."""

from __future__ import annotations

import contextlib
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field

import libvirt

from kvmops.host.connection import Host, translate


@dataclass
class PoolRoom:
    name: str
    path: str | None
    active: bool
    available: int


@dataclass
class Room:
    """What placement needs to know about one host."""

    cpus: int
    memory_total: int
    memory_free: int
    vcpus_running: int
    vms_running: int
    vms: list[str] = field(default_factory=list)
    networks: dict[str, bool] = field(default_factory=dict)
    pools: list[PoolRoom] = field(default_factory=list)


@dataclass
class VmDisk:
    target: str
    path: str | None
    capacity: int  # bytes (0 when unknown)
    device: str  # disk, cdrom


@dataclass
class VmTake:
    """What a running VM takes of its host."""

    name: str
    running: bool
    memory: int  # bytes (its maximum)
    vcpus: int
    networks: list[str] = field(default_factory=list)
    disks: list[VmDisk] = field(default_factory=list)


def _pool_path(xml: str) -> str | None:
    try:
        node = ET.fromstring(xml).find("./target/path")
    except ET.ParseError:
        return None
    return node.text.strip() if node is not None and node.text else None


def room(host: Host) -> Room:
    """The host's CPUs, memory, running vCPUs, VM names, networks and pools."""
    try:
        conn = host.conn
        domains = conn.listAllDomains(0)
        names: list[str] = []
        vcpus = running = 0
        for dom in domains:
            with contextlib.suppress(libvirt.libvirtError):  # gone while listed
                names.append(str(dom.name()))
                if dom.isActive():
                    vcpus += int(dom.info()[3])
                    running += 1
        networks: dict[str, bool] = {}
        for net in conn.listAllNetworks(0):
            with contextlib.suppress(libvirt.libvirtError):
                networks[str(net.name())] = bool(net.isActive())
        pools: list[PoolRoom] = []
        for pool in conn.listAllStoragePools(0):
            with contextlib.suppress(libvirt.libvirtError):
                active = bool(pool.isActive())
                available = int(pool.info()[3]) if active else 0
                pools.append(PoolRoom(str(pool.name()), _pool_path(str(pool.XMLDesc(0))),
                                      active, available))
        return Room(cpus=host.cpus(), memory_total=host.memory_total(),
                    memory_free=host.memory_available() or 0, vcpus_running=vcpus,
                    vms_running=running, vms=sorted(names), networks=networks,
                    pools=pools)
    except libvirt.libvirtError as err:
        raise translate(err, f"reading the capacity of host {host.uri}") from err


def vm_take(host: Host, name: str) -> VmTake:
    """A VM's memory, vCPUs, networks and disks (paths and sizes) on ``host``."""
    domain = host.lookup(name)
    stats = domain.stats()
    xml = domain.xml(what=f"reading VM '{name}'")
    root = ET.fromstring(xml)
    networks = [str(s.get("network")) for s in root.findall("./devices/interface/source")
                if s.get("network")]
    disks: list[VmDisk] = []
    for disk in root.findall("./devices/disk"):
        target = disk.find("target")
        source = disk.find("source")
        path = source.get("file") or source.get("dev") if source is not None else None
        dev = target.get("dev", "?") if target is not None else "?"
        capacity = 0
        if path and disk.get("device", "disk") == "disk":
            with contextlib.suppress(libvirt.libvirtError):
                capacity = int(domain.raw.blockInfo(dev, 0)[0])
        disks.append(VmDisk(target=dev, path=path, capacity=capacity,
                            device=disk.get("device", "disk")))
    return VmTake(name=name, running=stats.state not in ("shut off", "no state"),
                  memory=stats.max_memory, vcpus=stats.vcpus,
                  networks=list(dict.fromkeys(networks)), disks=disks)


def running_vms(host: Host) -> list[str]:
    """The names of the host's running (or paused) VMs."""
    return sorted(d.name for d in host.all_domains() if d.is_active())


__all__ = ["PoolRoom", "Room", "VmDisk", "VmTake", "room", "running_vms",
           "vm_take"]
