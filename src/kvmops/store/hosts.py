"""The hosts table (:class:`kvmops.store.models.HostRow`): the remote libvirt hosts
kvmops manages. The local host is not stored (it is the configured URI)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from kvmops.errors import AlreadyExistsError, NotFoundError
from kvmops.records import Record
from kvmops.store.db import Store
from kvmops.store.models import HostRow, utcnow


@dataclass
class StoredHost(Record):
    name: str
    uri: str
    added_at: datetime | None
    added_by: str | None
    last_seen: datetime | None
    labels: dict[str, str] = field(default_factory=dict)


def _stored(row: HostRow) -> StoredHost:
    labels = json.loads(row.labels) if row.labels else {}
    return StoredHost(name=row.name, uri=row.uri, added_at=row.added_at,
                      added_by=row.added_by, last_seen=row.last_seen, labels=labels)


def hosts(store: Store) -> list[StoredHost]:
    with store.session() as db:
        return [_stored(r) for r in db.scalars(select(HostRow).order_by(HostRow.name))]


def get(store: Store, name: str) -> StoredHost:
    with store.session() as db:
        row = db.scalar(select(HostRow).where(HostRow.name == name))
        if row is None:
            raise NotFoundError(f"host '{name}' not found",
                                hint="see 'kvmops host list' for the known hosts")
        return _stored(row)


def add(store: Store, name: str, uri: str, labels: dict[str, str], user: str | None
        ) -> StoredHost:
    try:
        with store.session() as db:
            if db.scalar(select(HostRow).where(HostRow.name == name)) is not None:
                raise AlreadyExistsError(f"host '{name}' already exists",
                                         hint="choose another name, or remove it first")
            row = HostRow(name=name, uri=uri, labels=json.dumps(labels) if labels else None,
                          added_by=user, added_at=utcnow())
            db.add(row)
            db.flush()
            return _stored(row)
    except IntegrityError as err:  # added by someone else at the same moment
        raise AlreadyExistsError(f"host '{name}' already exists",
                                 hint="choose another name, or remove it first") from err


def remove(store: Store, name: str) -> None:
    with store.session() as db:
        row = db.scalar(select(HostRow).where(HostRow.name == name))
        if row is None:
            raise NotFoundError(f"host '{name}' not found",
                                hint="see 'kvmops host list' for the known hosts")
        db.delete(row)


def seen(store: Store, names: list[str], when: datetime) -> None:
    """Record that these hosts answered at ``when``."""
    if not names:
        return
    with store.session() as db:
        for row in db.scalars(select(HostRow).where(HostRow.name.in_(names))):
            row.last_seen = when
