"""SR-IOV use cases: list the PFs, set a PF's VF count, VF pools (one or more PFs),
give one VF of a pool to a VM's NIC and take it back, and reconcile after a crash.

Why kvmops hands out VFs itself instead of leaving it to a libvirt hostdev network:
libvirt accepts more ``<interface type='network'>`` NICs on such a pool than the PF
has VFs, and the VM then fails to start ("requires exclusive access to interfaces, but
none are available"). Here an allocation picks a free VF under a host-wide lock, keeps
the VM<->VF mapping in the database ((PF, VF) unique) and names the VF by its PCI
address in the VM (``<interface type='hostdev'>``): a VF is never given twice, and the
refusal of one too many names the PF and its VF count.

A VF keeps its MAC, VLAN and ``max_tx_rate`` after the VM stops; kvmops resets them
(mac 00:00:00:00:00:00, vlan 0, max_tx_rate 0, spoofchk on, trust off) when the VF is
released: ``vm nic remove``, ``vm undefine``, and ``sriov reconcile`` for what a crash
left behind.

Roles (API/web): viewers read, operators allocate/release (a NIC change), admins
create/delete pools, set VF counts and reconcile. The command line is root.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from kvmops.errors import KvmopsError, NotFoundError, StateError, ValidationError
from kvmops.host import sriov as host_sriov
from kvmops.host.connection import Host
from kvmops.network.sriov import (
    DRIVER_RATES,
    METHODS,
    RESET,
    Allocation,
    PhysFn,
    VfConfig,
    discover,
    hostdev_network_xml,
    hostdev_nics,
    hostdev_xml,
    interface_xml,
    pci_addresses_in,
    validate_pf_name,
    validate_rate,
    validate_vf_mac,
    validate_vf_vlan,
)
from kvmops.records import Record
from kvmops.services.audit import audited
from kvmops.services.caller import Caller

if TYPE_CHECKING:
    from kvmops.services.nics import NicEntry
    from kvmops.store.db import Store

__all__ = [
    "PfInfo",
    "PoolInfo",
    "ReconcileReport",
    "allocate",
    "check_clone_sharing",
    "create_pool",
    "delete_pool",
    "list_pfs",
    "list_pools",
    "pool_info",
    "pool_xml",
    "reconcile",
    "release_nic",
    "release_vm",
    "set_vfs",
    "use_database",
    "write_fake_tree",
]

T = TypeVar("T")
_POOL_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]{0,63}$")


@dataclass
class PfInfo(Record):
    """One PF of ``kvmops sriov pf list``."""

    name: str
    pci: str
    driver: str | None
    totalvfs: int
    numvfs: int
    link: str
    speed: int | None  # Mbit/s
    pool: str | None
    allocated: int
    rate_range: str | None  # "11..10000" Mbit/s from the driver table; None: unknown
    saved_numvfs: int | None  # the count kvmops restores after a reboot


@dataclass
class PoolInfo(Record):
    """One pool: its PFs, VF counts and (``info``) each allocation (VM <-> VF)."""

    name: str
    pfs: list[str]
    vfs: int  # VFs the pool's PFs have now
    allocated: int
    free: int
    missing_pfs: list[str]  # PFs of the pool that sysfs does not show now
    created_at: datetime
    created_by: str | None
    allocations: list[Allocation] = field(default_factory=list)


@dataclass
class ReconcileReport(Record):
    """What ``kvmops sriov reconcile`` found and fixed."""

    released: list[Allocation]  # allocations whose VM or NIC is gone: VF reset, row removed
    reset: list[str]  # "PF vfN": configured VFs no allocation owns, reset
    reapplied: list[str]  # "PF vfN": allocated VFs whose settings were lost, set again
    numvfs_restored: list[str]  # "PF N": VF counts set again (after a reboot)


# --------------------------------------------------------------------------- plumbing
_server_store: Store | None = None


def use_database(store: Store | None) -> None:
    """The server's open database, for the SR-IOV steps of use cases that take none
    (``vm nic list/remove``, ``vm undefine`` over the API)."""
    global _server_store
    _server_store = store


def _with_store(db: str | Store | None, fn: Callable[[Store], T]) -> T:
    """``fn`` on the server's open database, or on the configured one (migrated first:
    a command may be the first to use it)."""
    if db is None and _server_store is not None:
        db = _server_store
    if db is not None and not isinstance(db, str):
        return fn(db)
    from kvmops.config import settings
    from kvmops.store import migrated

    with migrated(db or settings().db) as store:
        return fn(store)


@contextlib.contextmanager
def _locked() -> Iterator[None]:
    """The host-wide SR-IOV lock: one allocation, release or count change at a time,
    whether it comes from a command or the server."""
    from kvmops.config import settings

    state = settings().state_dir
    state.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(state / "sriov.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _validate_pool_name(name: str) -> str:
    if not _POOL_RE.match(name):
        raise ValidationError(f"invalid SR-IOV pool name '{name}'",
                              hint="use letters, digits, '_', '.', '+', '-' (at most 64, "
                                   "not starting with '-')")
    return name


def _pfs_by_name() -> dict[str, PhysFn]:
    return {pf.name: pf for pf in discover(host_sriov.sysfs_root())}


def _used_pci(host: Host) -> dict[str, str]:
    """PCI address -> VM of every passed-through device of every VM (live and persistent
    definitions): a VF some VM holds outside kvmops is not free either."""
    used: dict[str, str] = {}
    for domain in host.all_domains():
        try:
            xmls = [domain.xml()]
            if domain.is_active() and domain.is_persistent():
                xmls.append(domain.xml(inactive=True))
        except KvmopsError:
            continue
        for xml in xmls:
            for pci in pci_addresses_in(xml):
                used.setdefault(pci, domain.name)
    return used


def _reset(ctl: host_sriov.PfControl, pf: str, vf: int) -> None:
    """Reset a VF, quietly when it no longer exists (VF count lowered, PF gone)."""
    with contextlib.suppress(KvmopsError):
        ctl.set_vf(pf, vf, RESET)


# --------------------------------------------------------------------------- PFs
def list_pfs(caller: Caller, db: str | Store | None = None) -> list[PfInfo]:
    """The SR-IOV capable devices of the sysfs root, with their pool and VFs in use."""
    from kvmops.store import sriov as store_sriov

    def read(store: Store) -> list[PfInfo]:
        owners = {pf: row.name for row in store_sriov.pools(store) for pf in row.pfs}
        used: dict[str, int] = {}
        for a in store_sriov.allocations(store):
            used[a.pf] = used.get(a.pf, 0) + 1
        saved = store_sriov.pf_counts(store)
        return [_pf_info(pf, owners.get(pf.name), used.get(pf.name, 0),
                         saved.get(pf.name)) for pf in _pfs_by_name().values()]

    return _with_store(db, read)


def _pf_info(pf: PhysFn, pool: str | None, allocated: int, saved: int | None) -> PfInfo:
    limits = DRIVER_RATES.get(pf.driver or "")
    return PfInfo(name=pf.name, pci=pf.pci, driver=pf.driver, totalvfs=pf.totalvfs,
                  numvfs=pf.numvfs, link=pf.link, speed=pf.speed, pool=pool,
                  allocated=allocated,
                  rate_range=f"{limits.low}..{limits.high}" if limits else None,
                  saved_numvfs=saved)


@audited("sriov.pf.set-vfs", target="pf")
def set_vfs(caller: Caller, pf: str, count: int, db: str | Store | None = None) -> PfInfo:
    """Make ``count`` VFs on ``pf`` (0..sriov_totalvfs) and remember the count, which
    ``sriov reconcile`` sets again after a reboot. Refused while a VF that would go away
    is allocated."""
    from kvmops.store import sriov as store_sriov

    validate_pf_name(pf)
    ctl = host_sriov.control()
    with _locked():
        found = discover(ctl.root, pf)
        if not found:
            raise NotFoundError(f"PF '{pf}' not found under {ctl.root}",
                                hint="see 'kvmops sriov pf list'")
        phys = found[0]
        if not 0 <= count <= phys.totalvfs:
            raise ValidationError(f"invalid VF count {count} for PF '{pf}'",
                                  hint=f"use 0..{phys.totalvfs} (sriov_totalvfs)")

        def apply(store: Store) -> PfInfo:
            held = [a for a in store_sriov.allocations(store) if a.pf == pf]
            lost = [a for a in held if a.vf >= count]
            if lost:
                vms = sorted({a.vm for a in lost})
                raise StateError(f"cannot set {count} VFs on PF '{pf}': {len(lost)} VF(s) "
                                 f"above that are allocated to VM(s) {', '.join(vms[:5])}",
                                 hint="remove those NICs first ('kvmops vm nic remove')")
            if held and count != phys.numvfs:
                # The kernel removes every VF before making the new count: a VM's VF
                # would vanish under it.
                raise StateError(f"cannot change the VF count of PF '{pf}': {len(held)} "
                                 "of its VFs are allocated",
                                 hint="remove those NICs first ('kvmops vm nic remove')")
            if count != phys.numvfs:
                ctl.set_numvfs(phys, count)
            store_sriov.set_pf_count(store, pf, count)
            owners = {p: row.name for row in store_sriov.pools(store) for p in row.pfs}
            return _pf_info(discover(ctl.root, pf)[0], owners.get(pf), len(held), count)

        return _with_store(db, apply)


# --------------------------------------------------------------------------- pools
def _pool_info(row: object, pfs: dict[str, PhysFn], allocations: list[Allocation]
               ) -> PoolInfo:
    from kvmops.store.sriov import PoolRow

    assert isinstance(row, PoolRow)
    mine = [a for a in allocations if a.pool == row.name]
    present = [pfs[p] for p in row.pfs if p in pfs]
    vfs = sum(len(p.vfs) for p in present)
    return PoolInfo(name=row.name, pfs=row.pfs, vfs=vfs, allocated=len(mine),
                    free=max(vfs - len(mine), 0),
                    missing_pfs=[p for p in row.pfs if p not in pfs],
                    created_at=row.created_at, created_by=row.created_by, allocations=mine)


@audited("sriov.pool.create", target="name")
def create_pool(caller: Caller, name: str, pfs: list[str], db: str | Store | None = None
                ) -> PoolInfo:
    """A pool of the VFs of ``pfs``. The PFs must exist and have VFs now: a pool is
    made (and, at boot, used) only after its VFs exist."""
    from kvmops.store import sriov as store_sriov

    _validate_pool_name(name)
    if not pfs:
        raise ValidationError("a pool needs at least one PF", hint="give --pf NAME")
    if len(set(pfs)) != len(pfs):
        raise ValidationError("a PF is given twice")
    found = _pfs_by_name()
    for pf in pfs:
        validate_pf_name(pf)
        if pf not in found:
            raise NotFoundError(f"PF '{pf}' not found under {host_sriov.sysfs_root()} "
                                f"(pool '{name}')",
                                hint="see 'kvmops sriov pf list' for the SR-IOV devices")
        if found[pf].numvfs == 0:
            raise StateError(f"PF '{pf}' has no VFs (sriov_numvfs 0; pool '{name}')",
                             hint=f"make them first: 'kvmops sriov pf set-vfs {pf} N'")

    def make(store: Store) -> PoolInfo:
        row = store_sriov.create_pool(store, name, pfs, caller.name)
        return _pool_info(row, found, [])

    with _locked():
        return _with_store(db, make)


def list_pools(caller: Caller, db: str | Store | None = None) -> list[PoolInfo]:
    """Every pool with its VF counts (allocations included)."""
    from kvmops.store import sriov as store_sriov

    def read(store: Store) -> list[PoolInfo]:
        pfs = _pfs_by_name()
        allocations = store_sriov.allocations(store)
        return [_pool_info(row, pfs, allocations) for row in store_sriov.pools(store)]

    return _with_store(db, read)


def pool_info(caller: Caller, name: str, db: str | Store | None = None) -> PoolInfo:
    """One pool with the VM <-> VF mapping."""
    from kvmops.store import sriov as store_sriov

    def read(store: Store) -> PoolInfo:
        row = store_sriov.pool(store, name)
        return _pool_info(row, _pfs_by_name(), store_sriov.allocations(store, pool=name))

    return _with_store(db, read)


@audited("sriov.pool.delete", target="name")
def delete_pool(caller: Caller, name: str, db: str | Store | None = None) -> None:
    """Delete a pool none of whose VFs is allocated (the refusal names the VMs)."""
    from kvmops.store import sriov as store_sriov

    with _locked():
        _with_store(db, lambda store: store_sriov.delete_pool(store, name))


def pool_xml(caller: Caller, name: str, method: str, db: str | Store | None = None) -> str:
    """The libvirt XML of a pool's first free VF for ``method`` (interface, hostdev) or
    of the pool as a libvirt hostdev network (network): what kvmops would attach, for a
    VM kvmops does not manage."""
    if method not in METHODS:
        raise ValidationError(f"invalid method '{method}'", hint="use " + ", ".join(METHODS))
    info = pool_info(caller, name, db)
    if method == "network":  # libvirt: one PF per network; POOL-PF for a second PF
        return "\n".join(hostdev_network_xml(name if i == 0 else f"{name}-{pf}", pf)
                         for i, pf in enumerate(info.pfs))
    taken = {(a.pf, a.vf) for a in info.allocations}
    pfs = _pfs_by_name()
    for pf in info.pfs:
        for vf in pfs[pf].vfs if pf in pfs else []:
            if (pf, vf.index) not in taken:
                return (interface_xml(vf.pci, "52:54:00:00:00:01") if method == "interface"
                        else hostdev_xml(vf.pci))
    raise StateError(f"SR-IOV pool '{name}' has no free VF", hint="see 'kvmops sriov pool "
                     f"info {name}'")


# --------------------------------------------------------------------------- allocation
def _refusal(pool: str, pfs: list[PhysFn], missing: list[str], allocated: int) -> StateError:
    have = ", ".join(f"PF '{p.name}' has {len(p.vfs)} VFs" for p in pfs) or "no PF present"
    gone = f" (PF(s) {', '.join(missing)} not found)" if missing else ""
    return StateError(f"no free VF in SR-IOV pool '{pool}': {have}, all in use "
                      f"({allocated} allocated){gone}",
                      hint="remove a VF NIC ('kvmops vm nic remove VM MAC'), raise the VF "
                           "count ('kvmops sriov pf set-vfs PF N') or use another pool")


@audited("vm.nic.add", target="vm")
def allocate(caller: Caller, host: Host, vm: str, pool: str, *, mac: str | None = None,
             vlan: int | None = None, rate: int | None = None, spoofchk: bool = True,
             trust: bool = False, live: bool = True, persistent: bool = True,
             db: str | Store | None = None) -> NicEntry:
    """Give one free VF of ``pool`` to VM ``vm`` as ``<interface type='hostdev'>`` with
    a MAC (and VLAN); set MAC, VLAN, ``max_tx_rate`` (Mbit/s, checked against the PF
    driver's range), spoofchk and trust on the VF through its PF. Under the host-wide
    lock: two requests never get one VF, and one too many is refused."""
    from kvmops.services import nics
    from kvmops.store import sriov as store_sriov
    from kvmops.vm.lifecycle import check_macs_free, macs_in_use, new_mac

    _validate_pool_name(pool)
    vlan = validate_vf_vlan(vlan)
    if rate is not None and rate < 0:
        raise ValidationError(f"invalid VF rate {rate} Mbps", hint="give a positive Mbit/s")
    mac = validate_vf_mac(mac) if mac is not None else None
    domain = host.lookup(vm)
    in_live, in_config = nics._scope(domain, vm, live, persistent, "add a VF NIC to")
    ctl = host_sriov.control()

    def run(store: Store) -> str:
        row = store_sriov.pool(store, pool)
        found = _pfs_by_name()
        pfs = [found[p] for p in row.pfs if p in found]
        held = store_sriov.allocations(store)
        taken = {(a.pf, a.vf) for a in held}
        busy = _used_pci(host)
        choice = next(((pf, vf) for pf in pfs for vf in pf.vfs
                       if (pf.name, vf.index) not in taken and vf.pci not in busy), None)
        if choice is None:
            raise _refusal(pool, pfs, [p for p in row.pfs if p not in found],
                           sum(1 for a in held if a.pool == pool))
        pf, vf = choice
        max_tx = validate_rate(rate, pf.driver, pf.name, pf.speed)
        if mac is not None:
            check_macs_free(host, "", [mac])
        config = VfConfig(mac=mac or new_mac(set(macs_in_use(host))), vlan=vlan,
                          max_tx_rate=max_tx, spoofchk=spoofchk, trust=trust)
        allocation = store_sriov.add_allocation(
            store, pool=pool, pf=pf.name, vf=vf.index, pci=vf.pci, vm=vm,
            vm_uuid=domain.uuid(), mac=config.mac, vlan=vlan, max_tx_rate=max_tx,
            spoofchk=spoofchk, trust=trust, user=caller.name)
        try:
            ctl.set_vf(pf.name, vf.index, config)
            domain.attach_device(interface_xml(vf.pci, config.mac, vlan), live=in_live,
                                 config=in_config,
                                 what=f"adding VF {vf.index} of PF '{pf.name}' to VM '{vm}'")
        except BaseException:
            _reset(ctl, pf.name, vf.index)
            store_sriov.delete_allocation(store, allocation.id)
            raise
        return config.mac

    with _locked():
        new = _with_store(db, run)
    for entry in nics.list_nics(caller, host, vm):
        if entry.mac == new:
            return entry
    raise StateError(f"the VF NIC {new} was added to VM '{vm}' but is not in its XML")


def _release(store: Store, ctl: host_sriov.PfControl, found: list[Allocation]) -> None:
    from kvmops.store import sriov as store_sriov

    for allocation in found:
        _reset(ctl, allocation.pf, allocation.vf)
        store_sriov.delete_allocation(store, allocation.id)


def release_nic(caller: Caller, vm: str, mac: str, db: str | Store | None = None
                ) -> list[Allocation]:
    """The VF of VM ``vm``'s NIC ``mac`` is free again (the NIC was removed): reset it."""
    from kvmops.store import sriov as store_sriov

    def run(store: Store) -> list[Allocation]:
        found = [a for a in store_sriov.allocations(store, vm=vm) if a.mac == mac.lower()]
        _release(store, host_sriov.control(), found)
        return found

    with _locked():
        return _with_store(db, run)


def release_vm(caller: Caller, vm: str, db: str | Store | None = None) -> list[Allocation]:
    """Every VF of VM ``vm`` is free again (the VM was undefined): reset them."""
    from kvmops.store import sriov as store_sriov

    def run(store: Store) -> list[Allocation]:
        found = store_sriov.allocations(store, vm=vm)
        _release(store, host_sriov.control(), found)
        return found

    with _locked():
        return _with_store(db, run)


def _release_stale(store: Store, ctl: host_sriov.PfControl, host: Host) -> list[Allocation]:
    """Release the allocations whose VM is gone, or no longer has the NIC with that VF
    (in its running XML or its definition)."""
    from kvmops.store import sriov as store_sriov

    held: dict[str, set[tuple[str, str]]] = {}  # VM uuid -> (pci, mac) it holds
    names: dict[str, str] = {}
    for domain in host.all_domains():
        try:
            xmls = [domain.xml()]
            if domain.is_active() and domain.is_persistent():
                xmls.append(domain.xml(inactive=True))
            uuid = domain.uuid()
        except KvmopsError:
            continue
        names[domain.name] = uuid
        held[uuid] = {(n.pci or "", n.mac) for x in xmls for n in hostdev_nics(x)}
    stale = [a for a in store_sriov.allocations(store)
             if (a.pci, a.mac) not in held.get(a.vm_uuid or names.get(a.vm, ""), set())]
    _release(store, ctl, stale)
    return stale


@audited("sriov.reconcile", target=None)
def reconcile(caller: Caller, host: Host | None, db: str | Store | None = None
              ) -> ReconcileReport:
    """Repair what a crash or a reboot left: VF counts kvmops set are restored on PFs that
    came back with none (a reboot); allocations whose VM (or NIC) is gone are released
    and their VF reset; configured VFs of pooled PFs that no allocation owns are reset;
    allocated VFs whose settings the PF lost are set again. Without ``host`` (at boot,
    before libvirtd starts the VMs: ``reconcile --boot``) no allocation is released --
    which VMs exist is libvirt's to say."""
    from kvmops.store import sriov as store_sriov

    ctl = host_sriov.control()

    def run(store: Store) -> ReconcileReport:
        report = ReconcileReport(released=[], reset=[], reapplied=[], numvfs_restored=[])
        found = _pfs_by_name()
        for pf, count in sorted(store_sriov.pf_counts(store).items()):
            phys = found.get(pf)
            if phys is not None and phys.numvfs == 0 and count > 0:
                ctl.set_numvfs(phys, min(count, phys.totalvfs))
                report.numvfs_restored.append(f"{pf} {min(count, phys.totalvfs)}")
        found = _pfs_by_name()
        if host is not None:
            report.released = _release_stale(store, ctl, host)
        held = {(a.pf, a.vf): a for a in store_sriov.allocations(store)}
        pooled = {p for row in store_sriov.pools(store) for p in row.pfs}
        for pf in sorted(pooled & set(found)):
            for index, state in sorted(ctl.vf_states(pf).items()):
                owner = held.get((pf, index))
                if owner is None and not state.is_reset:
                    ctl.set_vf(pf, index, RESET)
                    report.reset.append(f"{pf} vf{index}")
                elif owner is not None:
                    want = VfConfig(mac=owner.mac, vlan=owner.vlan,
                                    max_tx_rate=owner.max_tx_rate, spoofchk=owner.spoofchk,
                                    trust=owner.trust)
                    if state != want.state():
                        ctl.set_vf(pf, index, want)
                        report.reapplied.append(f"{pf} vf{index}")
        return report

    with _locked():
        return _with_store(db, run)


# --------------------------------------------------------------------------- vm nic list
def vf_entries(caller: Caller, vm: str, live_xml: str | None, config_xml: str | None,
               db: str | Store | None = None) -> list[NicEntry]:
    """The VF NICs (``<interface type='hostdev'>``) of a VM for ``vm nic list``, each
    with its pool, PF and VF when kvmops allocated it."""
    from kvmops.services.nics import NicEntry

    found: dict[str, NicEntry] = {}
    for xml, in_live in ((live_xml, True), (config_xml, False)):
        for nic in hostdev_nics(xml) if xml else []:
            entry = found.get(nic.mac)
            if entry is None:
                found[nic.mac] = NicEntry(mac=nic.mac, type="hostdev", source=nic.pci or "-",
                                          model="vf", link="up", host_device=None,
                                          live=in_live, config=not in_live,
                                          vlan=str(nic.vlan) if nic.vlan else None)
            elif in_live:
                entry.live = True
            else:
                entry.config = True
    if not found:
        return []
    for a in _allocations_quietly(vm, db):
        entry = found.get(a.mac)
        if entry is not None and entry.source == a.pci:
            entry.pool, entry.pf, entry.vf = a.pool, a.pf, a.vf
            entry.max_tx_rate = a.max_tx_rate
    return list(found.values())


def _allocations_quietly(vm: str, db: str | Store | None) -> list[Allocation]:
    """The VM's allocations, or none when there is no database yet (a listing never
    creates one)."""
    from kvmops.store import sriov as store_sriov

    if db is None and _server_store is not None:
        db = _server_store
    if db is not None and not isinstance(db, str):
        return store_sriov.allocations(db, vm=vm)
    from kvmops.store.direct import state_db

    if state_db(db) is None:
        return []
    try:
        return _with_store(db, lambda store: store_sriov.allocations(store, vm=vm))
    except KvmopsError:
        return []


def write_fake_tree(directory: Path, pf: str, vfs: int, driver: str, *,
                    numvfs: int | None = None, link: str = "up", bus: int | None = None
                    ) -> PhysFn:
    """``kvmops dev fake-sriov``: add a simulated PF with VFs to the tree in
    ``directory`` (:func:`kvmops.host.sriov.write_fake_tree`)."""
    return host_sriov.write_fake_tree(directory, pf, vfs, driver, numvfs=numvfs, link=link,
                                      bus=bus)


def sysfs_source() -> tuple[str, bool]:
    """(the sysfs root PFs are read from, is it a simulated tree?) for the pages."""
    root = host_sriov.sysfs_root()
    return str(root), os.path.realpath(root) != "/sys"


def check_clone_sharing(vm: str, xml: str) -> None:
    """Refuse to clone a VM that holds PCI devices (SR-IOV VFs, other hostdevs): the copy
    would name the same devices, and two VMs would share one VF."""
    held = sorted(pci_addresses_in(xml))
    if held:
        raise StateError(f"cannot clone VM '{vm}': it holds PCI device(s) {', '.join(held)}"
                         " (SR-IOV VFs or host devices) that a copy would share",
                         hint="remove its VF NICs first ('kvmops vm nic remove'), then give "
                              "the copy its own ('kvmops vm nic add COPY --vf-pool POOL')")
