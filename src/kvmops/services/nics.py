"""vNIC use cases: list a VM's network interfaces, hot-plug one (network or bridge
source, model, MAC unique on the host), hot-unplug one and set its link up or down.

Like the disks: changes go through libvirt's attach/detach/update calls with LIVE
and/or CONFIG, so the running VM and its definition change together (or one of them
alone when asked). A NIC is named by its MAC, the one name that is the same in the
running VM, its definition and the guest.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from kvmops.errors import (
    KvmopsError,
    NotFoundError,
    OperationTimeoutError,
    StateError,
    ValidationError,
)
from kvmops.host.connection import Host
from kvmops.host.domain import Domain
from kvmops.records import Record
from kvmops.services.audit import audited
from kvmops.services.caller import Caller
from kvmops.vm.domxml import (
    DomainDocument,
    LinkState,
    NicSpec,
    nic_xml,
    validate_mac,
    validate_nic_model,
)
from kvmops.vm.lifecycle import check_macs_free, macs_in_use, new_mac, state_name

__all__ = ["NicEntry", "NicRemoval", "add", "list_nics", "remove", "set_link"]

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
                                      config=not in_live)
            elif in_live:
                entry.live = True
            else:
                entry.config = True
    return list(found.values())


def list_nics(caller: Caller, host: Host, vm: str) -> list[NicEntry]:
    """The VM's network and bridge NICs, the running VM's view first (link state,
    tap device), each marked where it is: running VM, definition or both."""
    live, config, _running, _defined = _docs(host.lookup(vm))
    return _entries(live, config)


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
                         hint="start it first, or leave out --live-only to change its "
                              "definition")
    in_live, in_config = live and running, persistent and defined
    if not in_live and not in_config:
        raise StateError(f"cannot change the definition of VM '{vm}': it is transient",
                         hint="change the running VM only (--live-only)")
    return in_live, in_config


@audited("vm.nic.add", target="vm")
def add(caller: Caller, host: Host, vm: str, *, network: str | None = None,
        bridge: str | None = None, model: str = "virtio", mac: str | None = None,
        live: bool = True, persistent: bool = True) -> NicEntry:
    """Add a NIC on libvirt network ``network`` or host bridge ``bridge``: hot-plugged
    into the running VM and kept in its definition (a shut-off VM: the definition)."""
    if (network is None) == (bridge is None):
        raise ValidationError("give exactly one of --network or --bridge")
    validate_nic_model(model)
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
    spec = NicSpec(kind="network" if network is not None else "bridge",
                   source=network if network is not None else bridge or "", model=model,
                   mac=mac)
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


@audited("vm.nic.remove", target="vm")
def remove(caller: Caller, host: Host, vm: str, mac: str, *, live: bool = True,
           persistent: bool = True, timeout: float = 30.0) -> NicRemoval:
    """Remove the NIC with ``mac`` from the running VM (waiting up to ``timeout`` s for
    the guest to release it) and/or from the definition."""
    domain = host.lookup(vm)
    live_doc, config_doc, _running, _defined = _docs(domain)
    live_el, config_el = _find(live_doc, config_doc, vm, mac)
    mac = validate_mac(mac)
    in_live = live and live_el is not None
    in_config = persistent and config_el is not None
    if not in_live and not in_config:
        where = "running VM" if live else "definition"
        raise NotFoundError(f"NIC {mac} is not in the {where} of VM '{vm}'")
    element = live_el if in_live else config_el
    assert element is not None
    deadline = time.monotonic() + timeout
    domain.detach_device(element, live=in_live, config=in_config,
                         what=f"removing NIC {mac} from VM '{vm}'")
    if in_live:
        _wait_removed(domain, vm, mac, deadline, timeout)
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
    live_el, config_el = _find(live_doc, config_doc, vm, mac)
    mac = validate_mac(mac)
    in_live = live and live_el is not None
    in_config = persistent and config_el is not None
    if not in_live and not in_config:
        where = "running VM" if live else "definition"
        raise NotFoundError(f"NIC {mac} is not in the {where} of VM '{vm}'")
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
