"""libvirt virtual networks behind typed calls: define, start, stop, undefine, autostart,
list with state, XML, DHCP leases. Errors translated in :mod:`kvmops.host.errors`."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import libvirt

from kvmops.errors import NotFoundError
from kvmops.host.connection import Host
from kvmops.host.errors import call, translate

_LEASE_FAMILY = {libvirt.VIR_IP_ADDR_TYPE_IPV4: "ipv4", libvirt.VIR_IP_ADDR_TYPE_IPV6: "ipv6"}


@dataclass(frozen=True)
class NetworkState:
    """One network: its definition (the persistent one when there is one) and state."""

    name: str
    active: bool
    persistent: bool
    autostart: bool
    xml: str


@dataclass(frozen=True)
class Lease:
    """One DHCP lease dnsmasq handed out on a network."""

    mac: str | None
    ip: str
    prefix: int | None
    family: str
    hostname: str | None
    client_id: str | None
    expires: int  # seconds since the epoch


def _lookup(host: Host, name: str) -> Any:
    try:
        return host.conn.networkLookupByName(name)
    except libvirt.libvirtError as err:
        if err.get_error_code() == libvirt.VIR_ERR_NO_NETWORK:
            raise NotFoundError(f"network '{name}' not found on {host.uri}",
                                hint="see 'kvmops net list'") from err
        raise translate(err, f"looking up network '{name}'") from err


def _state(net: Any) -> NetworkState:
    name = str(net.name())
    persistent = bool(call(f"reading network '{name}'", net.isPersistent))
    flags = libvirt.VIR_NETWORK_XML_INACTIVE if persistent else 0
    return NetworkState(
        name=name,
        active=bool(call(f"reading network '{name}'", net.isActive)),
        persistent=persistent,
        autostart=bool(call(f"reading network '{name}'", net.autostart)) if persistent
        else False,
        xml=str(call(f"reading the XML of network '{name}'", net.XMLDesc, flags)))


def all_networks(host: Host) -> list[NetworkState]:
    """Every network, active or not, persistent or transient, by name."""
    nets = call("listing networks", host.conn.listAllNetworks, 0)
    found = []
    for net in nets:
        try:
            found.append(_state(net))
        except NotFoundError:
            continue  # removed while listed
    return sorted(found, key=lambda n: n.name)


def network(host: Host, name: str) -> NetworkState:
    return _state(_lookup(host, name))


def exists(host: Host, name: str) -> bool:
    try:
        _lookup(host, name)
    except NotFoundError:
        return False
    return True


def live_xml(host: Host, name: str) -> str:
    """The running network's XML (with the bridge libvirt picked), else its definition."""
    net = _lookup(host, name)
    return str(call(f"reading the XML of network '{name}'", net.XMLDesc, 0))


def define(host: Host, xml: str) -> str:
    """Define a persistent network from its XML; its name."""
    flags = getattr(libvirt, "VIR_NETWORK_DEFINE_VALIDATE", 0)
    net = call("defining network", host.conn.networkDefineXMLFlags, xml, flags) \
        if hasattr(host.conn, "networkDefineXMLFlags") \
        else call("defining network", host.conn.networkDefineXML, xml)
    return str(net.name())


def start(host: Host, name: str) -> None:
    net = _lookup(host, name)
    call(f"starting network '{name}'", net.create)


def stop(host: Host, name: str) -> None:
    net = _lookup(host, name)
    call(f"stopping network '{name}'", net.destroy)


def undefine(host: Host, name: str) -> None:
    net = _lookup(host, name)
    call(f"undefining network '{name}'", net.undefine)


def set_autostart(host: Host, name: str, enabled: bool) -> None:
    net = _lookup(host, name)
    call(f"setting autostart of network '{name}'", net.setAutostart, 1 if enabled else 0)


def leases(host: Host, name: str) -> list[Lease]:
    """The network's current DHCP leases (IPv4 and DHCPv6), as dnsmasq reports them."""
    net = _lookup(host, name)
    found = []
    for item in call(f"reading the DHCP leases of network '{name}'", net.DHCPLeases) or []:
        prefix = item.get("prefix")
        found.append(Lease(
            mac=item.get("mac") or None, ip=str(item.get("ipaddr", "")),
            prefix=int(prefix) if prefix is not None else None,
            family=_LEASE_FAMILY.get(item.get("type"), "ipv4"),
            hostname=item.get("hostname") or None, client_id=item.get("clientid") or None,
            expires=int(item.get("expirytime") or 0)))
    return sorted(found, key=lambda lease: (lease.family, lease.ip))


def ovs_bridge_exists(name: str) -> bool | None:
    """Does Open vSwitch have bridge ``name``? None when it cannot say (no ``ovs-vsctl``,
    or its database does not answer)."""
    tool = shutil.which("ovs-vsctl")
    if tool is None:
        return None
    if not name or name.startswith("-"):
        return False  # not an interface name, and never an option to ovs-vsctl
    try:
        result = subprocess.run([tool, "--timeout=5", "br-exists", name], capture_output=True,
                                text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return {0: True, 2: False}.get(result.returncode)


def is_host_bridge(name: str, sysfs: Path = Path("/sys/class/net")) -> bool:
    """Is ``name`` a Linux bridge on this host (a ``bridge`` directory in sysfs)?"""
    return (sysfs / name / "bridge").is_dir()
