"""vNIC use cases: list a VM's network interfaces, hot-plug one (network or bridge
source, model, MAC unique on the host), hot-unplug one and set its link up or down.

Like the disks: changes go through libvirt's attach/detach/update calls with LIVE
and/or CONFIG, so the running VM and its definition change together (or one of them
alone when asked). A NIC is named by its MAC, the one name that is the same in the
running VM, its definition and the guest.
"""

from __future__ import annotations

import ipaddress
import time
from dataclasses import dataclass, replace
from typing import Any

from lxml import etree

from kvmops.errors import (
    AlreadyExistsError,
    HypervisorError,
    KvmopsError,
    NotFoundError,
    OperationTimeoutError,
    StateError,
    UnsupportedError,
    ValidationError,
)
from kvmops.host.connection import Host
from kvmops.host.domain import Domain, clear_tap_shaping
from kvmops.records import Record
from kvmops.services.audit import audited
from kvmops.services.caller import Caller
from kvmops.vm.domxml import (
    BANDWIDTH_HINT,
    DomainDocument,
    LinkState,
    NicKind,
    NicSpec,
    Rate,
    Vlan,
    nic_xml,
    validate_mac,
    validate_nic_model,
    validate_nic_source,
)
from kvmops.vm.lifecycle import check_macs_free, macs_in_use, new_mac, state_name

__all__ = [
    "BANDWIDTH_HINT",
    "GuestAddress",
    "GuestInterface",
    "NicEntry",
    "NicRemoval",
    "Rate",
    "Vlan",
    "add",
    "guest_addresses",
    "list_nics",
    "merge_addresses",
    "nic_virtualport",
    "remove",
    "set_link",
    "update",
]

_EMPTY = "<domain><name>-</name><devices/></domain>"


@dataclass
class NicEntry(Record):
    """One network interface of ``kvmops vm nic list``."""

    mac: str
    type: str  # network or bridge
    source: str  # the network's or bridge's name
    model: str
    link: str  # up or down
    host_device: str | None  # the host's tap device while the VM runs
    live: bool  # in the running VM
    config: bool  # in the persistent definition
    inbound: str | None = None  # AVG[,PEAK[,BURST]] in KiB/s and KiB; None: no limit
    outbound: str | None = None
    vlan: str | None = None  # "10" (access) or "trunk 10,20[ native 20]"
    # An SR-IOV VF NIC (type hostdev, source its PCI address) kvmops allocated:
    pool: str | None = None  # its VF pool
    pf: str | None = None  # the PF and the VF's index on it
    vf: int | None = None
    max_tx_rate: int | None = None  # Mbit/s set on the VF; 0: no limit
    queues: int | None = None  # virtio multiqueue pairs; None: one
    boot_order: int | None = None  # position in the per-device boot order; None: not booted


@dataclass
class NicRemoval(Record):
    mac: str
    live: bool
    config: bool


def _docs(domain: Domain) -> tuple[DomainDocument, DomainDocument, bool, bool]:
    """(live XML, persistent XML, running?, persistent?); the one the VM lacks is empty."""
    running = domain.is_active()
    persistent = domain.is_persistent()
    live = DomainDocument(domain.xml() if running else _EMPTY)
    config = DomainDocument(domain.xml(inactive=True) if persistent else _EMPTY)
    return live, config, running, persistent


def _entries(live: DomainDocument, config: DomainDocument) -> list[NicEntry]:
    found: dict[str, NicEntry] = {}
    for doc, in_live in ((live, True), (config, False)):
        for nic in doc.nics():
            mac = (nic.mac or "").lower()
            entry = found.get(mac)
            if entry is None:
                found[mac] = NicEntry(mac=mac, type=nic.kind, source=nic.source,
                                      model=nic.model, link=nic.link or "up",
                                      host_device=nic.target_dev, live=in_live,
                                      config=not in_live,
                                      inbound=nic.inbound.text() if nic.inbound else None,
                                      outbound=nic.outbound.text() if nic.outbound else None,
                                      vlan=nic.vlan.text() if nic.vlan else None,
                                      queues=nic.queues, boot_order=nic.boot_order)
            elif in_live:
                entry.live = True
            else:
                entry.config = True
    return list(found.values())


def list_nics(caller: Caller, host: Host, vm: str) -> list[NicEntry]:
    """The VM's network and bridge NICs, the running VM's view first (link state,
    tap device), each marked where it is: running VM, definition or both."""
    live, config, _running, _defined = _docs(host.lookup(vm))
    return _entries(live, config) + _vf_entries(caller, vm, live, config)


def _vf_entries(caller: Caller, vm: str, live: DomainDocument, config: DomainDocument
                ) -> list[NicEntry]:
    """The SR-IOV VF NICs (``<interface type='hostdev'>``), with pool, PF and VF."""
    live_xml, config_xml = live.to_xml(), config.to_xml()
    if "hostdev" not in live_xml and "hostdev" not in config_xml:
        return []
    from kvmops.services import sriov  # the database: only for VMs with VF NICs

    return sriov.vf_entries(caller, vm, live_xml, config_xml)


def _scope(domain: Domain, vm: str, live: bool, persistent: bool, action: str
           ) -> tuple[bool, bool]:
    """(change the running VM?, change the definition?) for an add."""
    if not live and not persistent:
        raise ValidationError("nothing to do: neither the running VM nor its definition")
    running, defined = domain.is_active(), domain.is_persistent()
    if live and not persistent and not running:
        state = state_name(domain)
        raise StateError(f"cannot {action} VM '{vm}' live: it is {state}", actual=state,
                         required="running",
                         hint="start it first, or leave out --live to change its "
                              "definition")
    in_live, in_config = live and running, persistent and defined
    if not in_live and not in_config:
        raise StateError(f"cannot change the definition of VM '{vm}': it is transient",
                         hint="change the running VM only (--live)")
    return in_live, in_config


@audited("vm.nic.add", target="vm")
def add(caller: Caller, host: Host, vm: str, *, network: str | None = None,
        bridge: str | None = None, model: str = "virtio", mac: str | None = None,
        live: bool = True, persistent: bool = True, inbound: Rate | None = None,
        outbound: Rate | None = None, vlan: Vlan | None = None, queues: int | None = None,
        boot_order: int | None = None) -> NicEntry:
    """Add a NIC on libvirt network ``network`` or host bridge ``bridge``: hot-plugged
    into the running VM and kept in its definition (a shut-off VM: the definition)."""
    if (network is None) == (bridge is None):
        raise ValidationError("give exactly one of --network or --bridge")
    validate_nic_model(model)
    NicSpec(kind="network", source="-", model=model, queues=queues,
            boot_order=boot_order).check_queues_and_boot()
    domain = host.lookup(vm)
    in_live, in_config = _scope(domain, vm, live, persistent, "add a NIC to")
    if network is not None:
        if network not in host.network_names():
            raise NotFoundError(f"network '{network}' not found (NIC for VM '{vm}')",
                                hint="see 'kvmops net list'")
        if in_live and not host.network_active(network):
            raise StateError(f"cannot hot-plug a NIC on network '{network}' into VM '{vm}': "
                             "the network is not active",
                             hint=f"start it with 'kvmops net start {network}', or add the "
                                  "NIC with --config-only")
    if mac is not None:
        mac = validate_mac(mac)
        check_macs_free(host, "", [mac])  # the VM's own NICs count too
    else:
        mac = new_mac(set(macs_in_use(host)))
    kind: NicKind = "network" if network is not None else "bridge"
    source = validate_nic_source(kind, network if network is not None else bridge or "")
    virtualport = nic_virtualport(host, vm, kind, source, vlan)
    spec = NicSpec(kind=kind, source=source, model=model, mac=mac, inbound=inbound,
                   outbound=outbound, vlan=vlan, virtualport=virtualport, queues=queues,
                   boot_order=boot_order)
    if boot_order is not None:
        _check_boot_order(domain, vm, boot_order, in_config)
    domain.attach_device(nic_xml(spec), live=in_live, config=in_config,
                         what=f"adding a NIC ({mac}) to VM '{vm}'")
    for entry in list_nics(caller, host, vm):
        if entry.mac == mac:
            return entry
    raise StateError(f"the NIC {mac} was added to VM '{vm}' but is not in its XML")


def _find(live: DomainDocument, config: DomainDocument, vm: str, mac: str
          ) -> tuple[str | None, str | None]:
    mac = validate_mac(mac)
    live_el, config_el = live.nic_device_xml(mac), config.nic_device_xml(mac)
    if live_el is None and config_el is None:
        known = sorted({e.mac for e in _entries(live, config)})
        raise NotFoundError(f"VM '{vm}' has no NIC with MAC {mac}",
                            hint=f"its NICs: {', '.join(known)}" if known else
                            "it has no NICs")
    return live_el, config_el


def _scopes(live_doc: DomainDocument, config_doc: DomainDocument, vm: str, mac: str,
            live: bool, persistent: bool) -> tuple[str | None, str | None, bool, bool]:
    """NIC ``mac``'s device XML in the running VM and the definition, and which of the two
    a change asked for (``live``/``persistent``) applies to; NotFoundError for neither."""
    live_el, config_el = _find(live_doc, config_doc, vm, mac)
    in_live = live and live_el is not None
    in_config = persistent and config_el is not None
    if not in_live and not in_config:
        where = "running VM" if live else "definition"
        raise NotFoundError(f"NIC {mac} is not in the {where} of VM '{vm}'")
    return live_el, config_el, in_live, in_config


@audited("vm.nic.remove", target="vm")
def remove(caller: Caller, host: Host, vm: str, mac: str, *, live: bool = True,
           persistent: bool = True, timeout: float = 30.0) -> NicRemoval:
    """Remove the NIC with ``mac`` from the running VM (waiting up to ``timeout`` s for
    the guest to release it) and/or from the definition."""
    domain = host.lookup(vm)
    live_doc, config_doc, _running, _defined = _docs(domain)
    mac = validate_mac(mac)
    live_el, config_el, in_live, in_config = _scopes(live_doc, config_doc, vm, mac, live,
                                                     persistent)
    element = live_el if in_live else config_el
    assert element is not None
    deadline = time.monotonic() + timeout
    domain.detach_device(element, live=in_live, config=in_config,
                         what=f"removing NIC {mac} from VM '{vm}'")
    if in_live:
        _wait_removed(domain, vm, mac, deadline, timeout)
    if "hostdev" in element:  # an SR-IOV VF gone from VM and definition is reset, freed
        live_doc, config_doc, _running, _defined = _docs(domain)
        if live_doc.nic_device_xml(mac) is None and config_doc.nic_device_xml(mac) is None:
            from kvmops.services import sriov

            sriov.release_nic(caller, vm, mac)
    return NicRemoval(mac=mac, live=in_live, config=in_config)


def _wait_removed(domain: Domain, vm: str, mac: str, deadline: float, timeout: float
                  ) -> None:
    while True:
        try:
            if not domain.is_active():
                return
            xml = domain.xml()
        except KvmopsError:
            return  # a transient VM that went away has no NICs left
        if DomainDocument(xml).nic_device_xml(mac) is None:
            return
        if time.monotonic() >= deadline:
            raise OperationTimeoutError(
                f"NIC {mac} of VM '{vm}' was not released by the guest within {timeout:g}s",
                hint="libvirt finishes the removal when the guest releases the device; "
                     f"check with 'kvmops vm nic list {vm}'")
        time.sleep(0.25)


@audited("vm.nic.link", target="vm")
def set_link(caller: Caller, host: Host, vm: str, mac: str, state: LinkState, *,
             live: bool = True, persistent: bool = True) -> NicEntry:
    """Set the link of NIC ``mac`` up or down (the guest sees carrier on or off)."""
    if state not in ("up", "down"):
        raise ValidationError(f"invalid link state '{state}'", hint="use up or down")
    domain = host.lookup(vm)
    live_doc, config_doc, _running, _defined = _docs(domain)
    mac = validate_mac(mac)
    _, _, in_live, in_config = _scopes(live_doc, config_doc, vm, mac, live, persistent)
    if in_live:
        domain.update_device(live_doc.set_nic_link(mac, state), live=True, config=False,
                             what=f"setting the link of NIC {mac} of VM '{vm}' {state}")
    if in_config:
        domain.update_device(config_doc.set_nic_link(mac, state), live=False, config=True,
                             what=f"setting the link of NIC {mac} of VM '{vm}' {state} "
                                  "in its definition")
    for entry in list_nics(caller, host, vm):
        if entry.mac == mac:
            return entry
    raise NotFoundError(f"VM '{vm}' has no NIC with MAC {mac}")


def _check_boot_order(domain: Domain, vm: str, order: int, in_config: bool) -> None:
    """libvirt refuses a device ``<boot order>`` beside ``<os><boot dev>``, and two
    devices in one position: say so in one line before it does."""
    hint = ("give the NIC a boot position when creating the VM (vm create --nic "
            "network=NAME,boot=1), where kvmops orders the disks after it")
    doc = DomainDocument(domain.xml(inactive=True) if in_config else domain.xml())
    if doc.boots_by_device_kind():
        raise ValidationError(f"cannot give the new NIC of VM '{vm}' boot order {order}: the "
                              "VM boots by device kind (<os><boot dev>), not per device",
                              hint=hint)
    if order in doc.boot_orders():
        raise AlreadyExistsError(f"boot order {order} is taken by another device of VM '{vm}'",
                            hint="pick a free position (see 'kvmops vm nic list')")


def nic_virtualport(host: Host, vm: str, kind: str, source: str, vlan: Vlan | None
                    ) -> str | None:
    """The ``<virtualport type>`` a new NIC needs: ``openvswitch`` on an Open vSwitch
    bridge (else libvirt adds the tap as a Linux bridge port, and the VM cannot start);
    a VLAN refused where libvirt cannot honour it (:func:`check_vlan`)."""
    from kvmops.host import networks as host_networks

    if vlan is not None:
        return check_vlan(host, vm, kind, source)
    if kind == "bridge" and host_networks.ovs_bridge_exists(source):
        return "openvswitch"
    return None


def check_vlan(host: Host, vm: str, kind: str, source: str) -> str | None:
    """Refuse a VLAN where libvirt cannot honour it: it needs an Open vSwitch network or
    bridge (or an SR-IOV VF). The ``<virtualport type>`` a bridge NIC needs (a network
    NIC takes it from the network)."""
    from kvmops.host import networks as host_networks

    hint = ("VLAN tags need an Open vSwitch network/bridge (net create --mode ovs) or an "
            "SR-IOV VF (--vf-pool)")
    if kind == "network":
        root = etree.fromstring(host_networks.live_xml(host, source).encode())
        port = root.find("virtualport")
        forward = root.find("forward")
        if (port is not None and port.get("type") == "openvswitch") or (
                forward is not None and forward.get("mode") == "hostdev"):
            return None
        raise ValidationError(f"cannot set a VLAN on the NIC of VM '{vm}': network "
                              f"'{source}' is not an Open vSwitch or SR-IOV network",
                              hint=hint)
    if host_networks.ovs_bridge_exists(source):
        return "openvswitch"
    raise ValidationError(f"cannot set a VLAN on the NIC of VM '{vm}': bridge '{source}' "
                          "is not an Open vSwitch bridge", hint=hint)


#: tc's words when the kernel lacks what libvirt's bandwidth rules use (act_police for
#: outbound policing, sch_sfq under the inbound htb class).
_TC_MISSING = ("Failed to load TC action module", "Specified qdisc kind is unknown")


class _Keep:
    """Leave this setting as it is (``update``)."""


KEEP = _Keep()


@audited("vm.nic.update", target="vm")
def update(caller: Caller, host: Host, vm: str, mac: str, *,
           inbound: Rate | _Keep | None = KEEP, outbound: Rate | _Keep | None = KEEP,
           vlan: Vlan | _Keep | None = KEEP, live: bool = True,
           persistent: bool = True) -> NicEntry:
    """Change the bandwidth limits (None: no limit) and/or VLAN of NIC ``mac``: in the
    running VM at once (libvirt re-applies its tc rules on the tap) and in the definition."""
    domain = host.lookup(vm)
    live_doc, config_doc, _running, _defined = _docs(domain)
    mac = validate_mac(mac)
    _, _, in_live, in_config = _scopes(live_doc, config_doc, vm, mac, live, persistent)
    for doc, applies, scope in ((live_doc, in_live, "the running VM"),
                                (config_doc, in_config, "its definition")):
        if not applies:
            continue
        current = next(n for n in doc.nics() if (n.mac or "").lower() == mac)
        new_vlan = current.vlan if isinstance(vlan, _Keep) else vlan
        if new_vlan is not None and new_vlan != current.vlan:
            check_vlan(host, vm, current.kind, current.source)
        xml = doc.set_nic_qos(
            mac, current.inbound if isinstance(inbound, _Keep) else inbound,
            current.outbound if isinstance(outbound, _Keep) else outbound, new_vlan)
        try:
            domain.update_device(xml, live=doc is live_doc, config=doc is config_doc,
                                 what=f"updating NIC {mac} of VM '{vm}' in {scope}")
        except HypervisorError as err:
            if any(s in str(err) for s in _TC_MISSING):
                if doc is live_doc and current.inbound is None and current.outbound is None:
                    clear_tap_shaping(current.target_dev)  # libvirt leaves its htb root
                raise UnsupportedError(
                    f"cannot limit the bandwidth of NIC {mac} of VM '{vm}' live: this "
                    "host's kernel lacks the tc police action or sfq qdisc libvirt uses",
                    hint="load act_police and sch_sfq (CONFIG_NET_ACT_POLICE, "
                         "CONFIG_NET_SCH_SFQ); nothing was changed") from err
            raise
    for entry in list_nics(caller, host, vm):
        if entry.mac == mac:
            if not in_live:  # show the definition's values, not the running VM's
                _live, config_doc, _r, _d = _docs(domain)
                for nic in config_doc.nics():
                    if (nic.mac or "").lower() == mac:
                        entry.inbound = nic.inbound.text() if nic.inbound else None
                        entry.outbound = nic.outbound.text() if nic.outbound else None
                        entry.vlan = nic.vlan.text() if nic.vlan else None
            return entry
    raise NotFoundError(f"VM '{vm}' has no NIC with MAC {mac}")


# ---------------------------------------------------------------------- guest addresses
@dataclass
class GuestAddress(Record):
    """One address of a guest's interface, with where kvmops learnt it."""

    address: str
    prefix: int | None
    family: str  # ipv4 or ipv6
    source: str  # agent (the guest said so) or lease (a libvirt network's DHCP server did)
    type: str | None = None  # the agent's ip-address-type, as ``guest ip`` gave it before
    # The network's DHCP server has a lease for it (DHCPv4, or DHCPv6: for IPv6 this
    # tells a leased address from a SLAAC or static one, which the agent cannot).
    leased: bool = False


@dataclass
class GuestInterface(Record):
    """One interface of ``kvmops guest ip``: the guest's name for it (None when only a
    lease knows it), its MAC and its addresses."""

    name: str | None
    mac: str | None
    addresses: list[GuestAddress]


def merge_addresses(agent: list[GuestInterface], leases: dict[str, list[GuestAddress]]
                    ) -> list[GuestInterface]:
    """The agent's interfaces with the DHCP leases of their MACs added (an address the
    agent reported already stays the agent's); a leased MAC the agent does not show (no
    agent, or not up yet) becomes an interface without a name. An agent's address that
    a lease also names is marked ``leased``."""
    merged = [GuestInterface(i.name, (i.mac or "").lower() or None, list(i.addresses))
              for i in agent]
    by_mac = {i.mac: i for i in merged if i.mac}
    for mac, found in leases.items():
        iface = by_mac.get(mac.lower())
        if iface is None:
            iface = GuestInterface(None, mac.lower(), [])
            merged.append(iface)
            by_mac[mac.lower()] = iface
        leased = {_canonical(a.address) for a in found}
        iface.addresses[:] = [replace(a, leased=True) if _canonical(a.address) in leased
                              else a for a in iface.addresses]
        known = {_canonical(a.address) for a in iface.addresses}
        iface.addresses.extend(a for a in found if _canonical(a.address) not in known)
    return merged


def _canonical(address: str) -> str:
    """One spelling per address (leases and the agent may write IPv6 differently)."""
    try:
        return str(ipaddress.ip_address(address))
    except ValueError:
        return address


def agent_interfaces(interfaces: list[Any]) -> list[GuestInterface]:
    """The agent's guest-network-get-interfaces answer (kvmops.agent.guest.Interface)."""
    return [GuestInterface(
        name=i.name, mac=i.mac,
        addresses=[GuestAddress(address=a.address, prefix=a.prefix,
                                family="ipv6" if a.type == "ipv6" else "ipv4",
                                source="agent", type=a.type) for a in i.addresses])
        for i in interfaces]


def lease_addresses(host: Host, vm: str) -> dict[str, list[GuestAddress]]:
    """MAC -> the DHCP leases of the VM's NICs on active libvirt networks."""
    from kvmops.host import networks as host_networks  # here: only guest ip needs it

    domain = host.lookup(vm)
    xml = domain.xml() if domain.is_active() else domain.xml(inactive=True)
    nics = [n for n in DomainDocument(xml).nics() if n.kind == "network" and n.mac]
    found: dict[str, list[GuestAddress]] = {n.mac.lower(): [] for n in nics if n.mac}
    for network in dict.fromkeys(n.source for n in nics):
        if not host.network_active(network):
            continue
        for lease in host_networks.leases(host, network):
            mac = (lease.mac or "").lower()
            if mac in found:
                found[mac].append(GuestAddress(address=lease.ip, prefix=lease.prefix,
                                               family=lease.family, source="lease",
                                               leased=True))
    return {mac: addrs for mac, addrs in found.items() if addrs}


def guest_addresses(caller: Caller, host: Host, vm: str, agent: list[Any] | None
                    ) -> list[GuestInterface]:
    """``kvmops guest ip VM``: the agent's interfaces (``agent``: its answer, None when
    it does not answer) merged with the DHCP leases of the VM's networks."""
    return merge_addresses(agent_interfaces(agent or []), lease_addresses(host, vm))
