"""SR-IOV pools, their PFs and the VF allocations in the database (see
:class:`kvmops.store.models.SriovAllocation`: a (PF, VF) pair has one row at most, so
the database itself refuses a VF given twice)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from kvmops.errors import AlreadyExistsError, NotFoundError, StateError
from kvmops.network.sriov import Allocation
from kvmops.records import Record
from kvmops.store.db import Store
from kvmops.store.models import SriovAllocation, SriovPf, SriovPool


@dataclass
class PoolRow(Record):
    name: str
    pfs: list[str]
    created_at: datetime
    created_by: str | None


def _allocation(row: SriovAllocation, pool: str) -> Allocation:
    return Allocation(id=row.id, pool=pool, pf=row.pf, vf=row.vf, pci=row.pci, vm=row.vm,
                      vm_uuid=row.vm_uuid, mac=row.mac, vlan=row.vlan,
                      max_tx_rate=row.max_tx_rate, spoofchk=row.spoofchk, trust=row.trust,
                      created_at=row.created_at, created_by=row.created_by)


def pools(store: Store) -> list[PoolRow]:
    with store.session() as db:
        rows = db.scalars(select(SriovPool).order_by(SriovPool.name)).all()
        pfs = db.scalars(select(SriovPf).where(SriovPf.pool_id.is_not(None))
                         .order_by(SriovPf.name)).all()
        return [PoolRow(name=p.name, pfs=[f.name for f in pfs if f.pool_id == p.id],
                        created_at=p.created_at, created_by=p.created_by) for p in rows]


def pool(store: Store, name: str) -> PoolRow:
    for row in pools(store):
        if row.name == name:
            return row
    raise NotFoundError(f"SR-IOV pool '{name}' not found", hint="see 'kvmops sriov pool list'")


def create_pool(store: Store, name: str, pfs: list[str], user: str | None) -> PoolRow:
    with store.session() as db:
        if db.scalar(select(SriovPool).where(SriovPool.name == name)) is not None:
            raise AlreadyExistsError(f"SR-IOV pool '{name}' already exists",
                                     hint="choose another name, or delete it first")
        row = SriovPool(name=name, created_by=user)
        db.add(row)
        db.flush()
        for pf in pfs:
            known = db.get(SriovPf, pf)
            if known is not None and known.pool_id is not None:
                owner = db.get(SriovPool, known.pool_id)
                raise AlreadyExistsError(
                    f"PF '{pf}' is already in SR-IOV pool '{owner.name if owner else '?'}'",
                    hint="a PF belongs to one pool; delete that pool first")
            if known is None:
                db.add(SriovPf(name=pf, pool_id=row.id))
            else:
                known.pool_id = row.id
    return pool(store, name)


def delete_pool(store: Store, name: str) -> None:
    with store.session() as db:
        row = db.scalar(select(SriovPool).where(SriovPool.name == name))
        if row is None:
            raise NotFoundError(f"SR-IOV pool '{name}' not found",
                                hint="see 'kvmops sriov pool list'")
        used = db.scalars(select(SriovAllocation).where(SriovAllocation.pool_id == row.id)
                          .order_by(SriovAllocation.vm)).all()
        if used:
            vms = sorted({a.vm for a in used})
            raise StateError(f"cannot delete SR-IOV pool '{name}': {len(used)} VF(s) are "
                             f"allocated to VM(s) {', '.join(vms[:5])}"
                             + (" ..." if len(vms) > 5 else ""),
                             hint="remove those NICs first ('kvmops vm nic remove VM MAC')")
        for pf in db.scalars(select(SriovPf).where(SriovPf.pool_id == row.id)).all():
            pf.pool_id = None
        db.delete(row)


def allocations(store: Store, *, pool: str | None = None, vm: str | None = None
                ) -> list[Allocation]:
    with store.session() as db:
        query = (select(SriovAllocation, SriovPool.name)
                 .join(SriovPool, SriovPool.id == SriovAllocation.pool_id)
                 .order_by(SriovAllocation.pf, SriovAllocation.vf))
        if pool is not None:
            query = query.where(SriovPool.name == pool)
        if vm is not None:
            query = query.where(SriovAllocation.vm == vm)
        return [_allocation(row, name) for row, name in db.execute(query).all()]


def add_allocation(store: Store, *, pool: str, pf: str, vf: int, pci: str, vm: str,
                   vm_uuid: str | None, mac: str, vlan: int, max_tx_rate: int,
                   spoofchk: bool, trust: bool, user: str | None) -> Allocation:
    try:
        with store.session() as db:
            pool_row = db.scalar(select(SriovPool).where(SriovPool.name == pool))
            if pool_row is None:
                raise NotFoundError(f"SR-IOV pool '{pool}' not found",
                                    hint="see 'kvmops sriov pool list'")
            row = SriovAllocation(pool_id=pool_row.id, pf=pf, vf=vf, pci=pci, vm=vm,
                                  vm_uuid=vm_uuid, mac=mac, vlan=vlan,
                                  max_tx_rate=max_tx_rate, spoofchk=spoofchk, trust=trust,
                                  created_by=user)
            db.add(row)
            db.flush()
            return _allocation(row, pool)
    except IntegrityError as err:
        raise StateError(f"VF {vf} of PF '{pf}' is already allocated",
                         hint="try again: another request took it first") from err


def delete_allocation(store: Store, allocation_id: int) -> None:
    with store.session() as db:
        row = db.get(SriovAllocation, allocation_id)
        if row is not None:
            db.delete(row)


def pf_counts(store: Store) -> dict[str, int]:
    """PF -> the VF count kvmops set on it (to restore after a reboot)."""
    with store.session() as db:
        return {row.name: row.numvfs for row in db.scalars(select(SriovPf)).all()
                if row.numvfs is not None}


def set_pf_count(store: Store, pf: str, count: int) -> None:
    with store.session() as db:
        row = db.get(SriovPf, pf)
        if row is None:
            db.add(SriovPf(name=pf, numvfs=count))
        else:
            row.numvfs = count
