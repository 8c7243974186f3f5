"""Network use cases: create, list, info, start, stop, delete, autostart, DHCP leases.

A network a VM's interface uses is never deleted, and never stopped under a running VM:
the refusal names the VMs. Changes are audited (command line) like every use case.
"""

from __future__ import annotations

import contextlib

from kvmops.errors import (
    AlreadyExistsError,
    KvmopsError,
    NotFoundError,
    StateError,
    ValidationError,
)
from kvmops.host import networks as host_networks
from kvmops.host import ovs
from kvmops.host.connection import Host
from kvmops.host.networks import Lease, NetworkState
from kvmops.network.model import (
    IPV6_MODES,
    MANAGED_MODES,
    MODES,
    NetworkInfo,
    NetworkSpec,
    check_overlaps,
    parse_network,
)
from kvmops.services.audit import audited
from kvmops.services.caller import Caller

__all__ = ["IPV6_MODES", "MODES", "Lease", "NetworkInfo", "NetworkSpec", "create", "delete",
           "info", "leases", "list_networks", "list_with_users", "set_autostart", "start",
           "stop", "used_by"]


def _info(state: NetworkState) -> NetworkInfo:
    return parse_network(state.xml, active=state.active, persistent=state.persistent,
                         autostart=state.autostart)


def list_networks(caller: Caller, host: Host) -> list[NetworkInfo]:
    """Every libvirt network (kvmops' and others'), by name."""
    return [_info(state) for state in host_networks.all_networks(host)]


def used_by(host: Host, net: NetworkInfo, *, running_only: bool = False) -> list[str]:
    """The VMs with an interface on ``net``: ``type='network'`` naming it, or (for a
    bridge libvirt owns) ``type='bridge'`` on its bridge. Both the live XML and the
    definition of a running VM are read (a NIC may be hot-plugged, or only in the
    definition for the next boot)."""
    from kvmops.vm.domxml import DomainDocument  # lxml: loaded when asked

    users = []
    for domain in host.all_domains():
        try:
            active = domain.is_active()
            if running_only and not active:
                continue
            documents = [domain.xml(what=f"reading VM '{domain.name}'")]
            if active and domain.is_persistent():
                documents.append(domain.xml(inactive=True, what=f"reading VM '{domain.name}'"))
        except NotFoundError:
            continue  # removed while we looked
        for xml in documents:
            nics = DomainDocument(xml).spec().nics
            if any((nic.kind == "network" and nic.source == net.name)
                   or (nic.kind == "bridge" and net.mode in MANAGED_MODES
                       and net.bridge is not None and nic.source == net.bridge)
                   for nic in nics):
                users.append(domain.name)
                break
    return sorted(users)


def list_with_users(caller: Caller, host: Host) -> list[NetworkInfo]:
    """Every network with ``used_by`` filled (the web UI's networks page); each VM's
    XML is read once for all networks."""
    from kvmops.vm.domxml import DomainDocument  # lxml: loaded when asked

    nets = list_networks(caller, host)
    for net in nets:
        net.used_by = []
    for domain in host.all_domains():
        try:
            documents = [domain.xml(what=f"reading VM '{domain.name}'")]
            if domain.is_active() and domain.is_persistent():
                documents.append(domain.xml(inactive=True, what=f"reading VM '{domain.name}'"))
        except NotFoundError:
            continue
        nics = [nic for xml in documents for nic in DomainDocument(xml).spec().nics]
        for net in nets:
            if any((nic.kind == "network" and nic.source == net.name)
                   or (nic.kind == "bridge" and net.mode in MANAGED_MODES
                       and net.bridge is not None and nic.source == net.bridge)
                   for nic in nics) and net.used_by is not None:
                net.used_by.append(domain.name)
    for net in nets:
        net.used_by = sorted(net.used_by or [])
    return nets


def info(caller: Caller, host: Host, name: str) -> NetworkInfo:
    """One network, with the VMs that use it (``used_by``); a running network shows
    its live bridge."""
    state = host_networks.network(host, name)
    net = _info(state)
    if state.active and net.bridge is None:
        net.bridge = parse_network(host_networks.live_xml(host, name)).bridge
    net.used_by = used_by(host, net)
    return net


@audited("net.create", target="spec")
def create(caller: Caller, host: Host, spec: NetworkSpec, *, start: bool = True,
           create_bridge: bool = False, datapath: str | None = None) -> NetworkInfo:
    """Define ``spec`` as a persistent network, set its autostart, and start it (unless
    ``start`` is False). A failed start leaves nothing behind. A ``bridge`` network's
    Linux bridge must exist, and an ``ovs`` network's bridge when ``ovs-vsctl`` can
    tell, unless ``create_bridge`` (``ovs`` only): then kvmops creates it, on
    ``datapath`` (default: the kernel's where it has one, else user space's ``netdev``),
    and removes it again with the network."""
    _check_bridge_options(spec, create_bridge, datapath)
    if host_networks.exists(host, spec.name):
        raise AlreadyExistsError(f"network '{spec.name}' already exists",
                                 hint="choose another name, or delete it first "
                                      "('kvmops net delete NAME')")
    check_overlaps(spec, list_networks(caller, host))
    if spec.mode == "bridge" and spec.bridge and not host_networks.is_host_bridge(spec.bridge):
        raise NotFoundError(f"host bridge '{spec.bridge}' does not exist (network "
                            f"'{spec.name}')",
                            hint="name an existing Linux bridge (see 'ip -br link show "
                                 "type bridge'), or use --mode nat|route|isolated for a "
                                 "bridge libvirt creates")
    exists = (host_networks.ovs_bridge_exists(spec.bridge)
              if spec.mode == "ovs" and spec.bridge and not create_bridge else None)
    if exists is False:
        raise NotFoundError(f"Open vSwitch bridge '{spec.bridge}' does not exist (network "
                            f"'{spec.name}')",
                            hint=f"create it first ('ovs-vsctl add-br {spec.bridge}') or name "
                                 "an existing one ('ovs-vsctl list-br'), or add "
                                 "--create-bridge")
    if exists and spec.bridge:
        ovs.check_datapath(spec.bridge)  # a bridge on a datapath the kernel lacks is dead
    made_bridge = False
    if create_bridge and spec.bridge:
        ovs.add_bridge(spec.bridge, datapath=datapath, owner=spec.name)
        made_bridge = True
    try:
        host_networks.define(host, spec.to_xml())
        try:
            if spec.autostart:
                host_networks.set_autostart(host, spec.name, True)
            if start:
                host_networks.start(host, spec.name)
        except KvmopsError:
            with contextlib.suppress(KvmopsError):
                host_networks.undefine(host, spec.name)
            raise
    except KvmopsError:
        if made_bridge and spec.bridge:
            ovs.remove_owned_bridge(spec.bridge, spec.name)
        raise
    return info(caller, host, spec.name)


def _check_bridge_options(spec: NetworkSpec, create_bridge: bool, datapath: str | None
                          ) -> None:
    if (create_bridge or datapath is not None) and spec.mode != "ovs":
        option = "--create-bridge" if create_bridge else "--datapath"
        raise ValidationError(f"{option} is only for --mode ovs (an Open vSwitch bridge "
                              "kvmops creates)", hint=f"leave {option} out")
    if datapath is not None and not create_bridge:
        raise ValidationError("--datapath needs --create-bridge (an existing bridge keeps "
                              "its datapath)", hint="add --create-bridge, or leave "
                                                    "--datapath out")
    if datapath is not None and datapath not in ovs.DATAPATHS:
        raise ValidationError(f"unknown Open vSwitch datapath '{datapath}'",
                              hint=f"use one of {', '.join(ovs.DATAPATHS)}")


def _refuse_if_used(host: Host, net: NetworkInfo, action: str, *, running_only: bool
                    ) -> None:
    users = used_by(host, net, running_only=running_only)
    if users:
        which = "running VM(s)" if running_only else "VM(s)"
        raise StateError(f"cannot {action} network '{net.name}': {which} "
                         f"{', '.join(users)} use it",
                         hint="remove their interfaces on it (or the VMs) first"
                         if not running_only else "shut those VMs down first")


@audited("net.start", target="name")
def start(caller: Caller, host: Host, name: str) -> NetworkInfo:
    state = host_networks.network(host, name)
    if state.active:
        raise StateError(f"network '{name}' is already active", actual="active",
                         required="inactive")
    host_networks.start(host, name)
    return info(caller, host, name)


@audited("net.stop", target="name")
def stop(caller: Caller, host: Host, name: str) -> NetworkInfo:
    """Stop a network no running VM uses (a running VM would lose its link)."""
    state = host_networks.network(host, name)
    if not state.active:
        raise StateError(f"network '{name}' is not active", actual="inactive",
                         required="active")
    net = _info(state)
    _refuse_if_used(host, net, "stop", running_only=True)
    host_networks.stop(host, name)
    if not state.persistent:  # a transient network is gone once stopped
        net.active = False
        return net
    return info(caller, host, name)


@audited("net.delete", target="name")
def delete(caller: Caller, host: Host, name: str) -> None:
    """Stop (when active) and undefine a network that no VM uses."""
    state = host_networks.network(host, name)
    _refuse_if_used(host, _info(state), "delete", running_only=False)
    if state.active:
        host_networks.stop(host, name)
    if state.persistent:
        host_networks.undefine(host, name)
    net = _info(state)
    if net.mode == "ovs" and net.bridge:  # only a bridge kvmops created for it, left empty
        ovs.remove_owned_bridge(net.bridge, name)


@audited("net.autostart", target="name")
def set_autostart(caller: Caller, host: Host, name: str, enabled: bool) -> NetworkInfo:
    """Start the network when libvirtd starts (or no longer: e.g. libvirt's
    ``default``)."""
    state = host_networks.network(host, name)
    if not state.persistent:
        raise StateError(f"network '{name}' is transient: it has no autostart",
                         hint="define it persistently first")
    host_networks.set_autostart(host, name, enabled)
    return info(caller, host, name)


def leases(caller: Caller, host: Host, name: str) -> list[Lease]:
    """The DHCP leases (IPv4 and DHCPv6) dnsmasq handed out on the network."""
    state = host_networks.network(host, name)
    if not state.active:
        raise StateError(f"network '{name}' is not active: it has no leases",
                         hint=f"start it first ('kvmops net start {name}')")
    return host_networks.leases(host, name)
