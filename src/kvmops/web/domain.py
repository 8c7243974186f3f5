"""libvirt reads and actions the pages need beyond the API's services:
guest addresses with their source, OS from the agent, live statistics,
the VNC port from the live XML, key presses."""

from __future__ import annotations

import contextlib
import time
from typing import Any

import libvirt
from pydantic import BaseModel

from kvmops.errors import StateError
from kvmops.host.connection import Host, call
from kvmops.vm.domxml import DomainSpec
from kvmops.web.addresses import GuestAddress, Source, collect

_SOURCE_FLAGS: dict[Source, int] = {
    "agent": libvirt.VIR_DOMAIN_INTERFACE_ADDRESSES_SRC_AGENT,
    "lease": libvirt.VIR_DOMAIN_INTERFACE_ADDRESSES_SRC_LEASE,
    "arp": libvirt.VIR_DOMAIN_INTERFACE_ADDRESSES_SRC_ARP,
}
STATS = (libvirt.VIR_DOMAIN_STATS_STATE | libvirt.VIR_DOMAIN_STATS_CPU_TOTAL
         | libvirt.VIR_DOMAIN_STATS_BALLOON | libvirt.VIR_DOMAIN_STATS_VCPU
         | libvirt.VIR_DOMAIN_STATS_INTERFACE | libvirt.VIR_DOMAIN_STATS_BLOCK)


class GuestDetails(BaseModel):
    active: bool
    addresses: list[GuestAddress]
    os: dict[str, str]
    hostname: str | None
    errors: dict[str, str]


class Stats(BaseModel):
    time: float
    active: bool
    vcpus: int
    cpu_time_ns: int | None
    memory_max: int | None  # bytes
    memory_current: int | None
    memory_rss: int | None
    disk_read_bytes: int
    disk_write_bytes: int
    net_rx_bytes: int
    net_tx_bytes: int


def guest_details(host: Host, name: str) -> GuestDetails:
    domain = host.domain(name)
    if not domain.isActive():
        return GuestDetails(active=False, addresses=[], os={}, hostname=None, errors={})
    errors: dict[str, str] = {}

    def query(source: Source) -> dict[str, Any] | None:
        try:
            result: dict[str, Any] = domain.interfaceAddresses(_SOURCE_FLAGS[source], 0)
            return result
        except libvirt.libvirtError as err:
            errors[source] = (err.get_error_message() or str(err)).splitlines()[0]
            return None

    addresses = collect(query)
    os_info: dict[str, str] = {}
    hostname = None
    try:
        info = domain.guestInfo(libvirt.VIR_DOMAIN_GUEST_INFO_OS
                                | libvirt.VIR_DOMAIN_GUEST_INFO_HOSTNAME, 0)
        os_info = {k[3:]: str(v) for k, v in info.items() if k.startswith("os.")}
        hostname = info.get("hostname")
    except libvirt.libvirtError as err:
        errors["os"] = (err.get_error_message() or str(err)).splitlines()[0]
    return GuestDetails(active=True, addresses=addresses, os=os_info, hostname=hostname,
                        errors=errors)


def _sum(stats: dict[str, Any], prefix: str, suffix: str) -> int:
    count = int(stats.get(f"{prefix}.count", 0))
    return sum(int(stats.get(f"{prefix}.{i}.{suffix}", 0)) for i in range(count))


def stats(host: Host, name: str) -> Stats:
    domain = host.domain(name)
    records = call(f"reading statistics of VM '{name}'", host.conn.domainListGetStats,
                   [domain], STATS, 0)
    now = time.time()
    data: dict[str, Any] = records[0][1] if records else {}
    state = int(data.get("state.state", libvirt.VIR_DOMAIN_NOSTATE))
    active = state not in (libvirt.VIR_DOMAIN_SHUTOFF, libvirt.VIR_DOMAIN_NOSTATE)

    def kib(key: str) -> int | None:
        value = data.get(key)
        return int(value) * 1024 if value is not None and active else None

    return Stats(
        time=now, active=active, vcpus=int(data.get("vcpu.current", 0)),
        cpu_time_ns=int(data["cpu.time"]) if active and "cpu.time" in data else None,
        memory_max=int(data["balloon.maximum"]) * 1024 if "balloon.maximum" in data else None,
        memory_current=kib("balloon.current"), memory_rss=kib("balloon.rss"),
        disk_read_bytes=_sum(data, "block", "rd.bytes"),
        disk_write_bytes=_sum(data, "block", "wr.bytes"),
        net_rx_bytes=_sum(data, "net", "rx.bytes"), net_tx_bytes=_sum(data, "net", "tx.bytes"))


def vnc_port(host: Host, name: str) -> int:
    """The VNC port of a running VM, from its live XML; StateError when none."""
    domain = host.domain(name)
    if not domain.isActive():
        raise StateError(f"VM '{name}' is not running: no console",
                         hint="start it first")
    spec = DomainSpec.from_xml(call(f"reading XML of VM '{name}'", domain.XMLDesc, 0))
    if not spec.vnc or spec.vnc_port is None:
        raise StateError(f"VM '{name}' has no VNC display")
    return spec.vnc_port


def send_keys(host: Host, name: str, keys: list[list[int]], hold_ms: int = 30) -> int:
    domain = host.domain(name)
    if not domain.isActive():
        raise StateError(f"VM '{name}' is not running", hint="start it first")
    for combo in keys:
        call(f"sending keys to VM '{name}'", domain.sendKey,
             libvirt.VIR_KEYCODE_SET_LINUX, hold_ms, combo, len(combo), 0)
        time.sleep(0.01)  # lets QEMU's key queue drain between characters
    return len(keys)


def domain_state_quiet(host: Host, name: str) -> str | None:
    from kvmops.vm.lifecycle import state_name

    with contextlib.suppress(Exception):
        return state_name(host.domain(name))
    return None
