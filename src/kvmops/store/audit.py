"""The audit log: one row per state-changing request (never secrets)."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel
from sqlalchemy import select

from kvmops.store.db import Store
from kvmops.store.models import AuditEntry


class AuditView(BaseModel):
    id: int
    time: datetime
    user: str | None
    method: str
    path: str
    action: str
    target: str | None
    status_code: int
    result: str
    job_id: str | None
    address: str | None = None
    via: str | None = None  # cli, api or web (None: written before kvmops 0.3)


DENIED = frozenset({401, 403, 413, 429})


def _clean(text: str | None, limit: int) -> str | None:
    if text is None:
        return None
    return text.encode("utf-8", "backslashreplace").decode()[:limit]


def record(store: Store, *, user: str | None, method: str, path: str, action: str,
           target: str | None, status_code: int, job_id: str | None = None,
           address: str | None = None, via: str | None = None) -> None:
    result = "ok" if status_code < 400 else "denied" if status_code in DENIED else "failed"
    with store.session() as db:
        db.add(AuditEntry(user=_clean(user, 64), method=method[:8],
                          path=_clean(path, 512) or "", action=action[:64],
                          target=_clean(target, 255), status_code=status_code,
                          result=result, job_id=job_id, address=_clean(address, 64),
                          via=via))


def entries(store: Store, *, user: str | None = None, limit: int = 100) -> list[AuditView]:
    query = select(AuditEntry).order_by(AuditEntry.id.desc()).limit(limit)
    if user:
        query = query.where(AuditEntry.user == user)
    with store.session() as db:
        return [AuditView(id=e.id, time=e.time, user=e.user, method=e.method, path=e.path,
                          action=e.action, target=e.target, status_code=e.status_code,
                          result=e.result, job_id=e.job_id, address=e.address,
                          via=e.via)
                for e in db.scalars(query)]
