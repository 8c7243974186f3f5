"""Failed log-ins in the database: the log-in throttle every server on one PostgreSQL
database shares (a guesser gains nothing by spreading attempts over the instances)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import delete, select

from kvmops.store.db import Store
from kvmops.store.models import LoginFailure


def failures(store: Store, name: str, address: str, window: float) -> list[datetime]:
    """Times of the failures of key (name, address) within the window, oldest first."""
    since = datetime.now(UTC) - timedelta(seconds=window)
    with store.session() as db:
        return list(db.scalars(
            select(LoginFailure.time).where(LoginFailure.name == name,
                                            LoginFailure.address == address,
                                            LoginFailure.time > since)
            .order_by(LoginFailure.time)))


def record(store: Store, keys: list[tuple[str, str]], window: float) -> None:
    """One failure for each key; failures older than the window are dropped."""
    now = datetime.now(UTC)
    with store.session() as db:
        db.execute(delete(LoginFailure).where(
            LoginFailure.time <= now - timedelta(seconds=window)))
        db.add_all([LoginFailure(name=name[:64], address=address[:64], time=now)
                    for name, address in keys])


def clear(store: Store, name: str, address: str) -> None:
    with store.session() as db:
        db.execute(delete(LoginFailure).where(LoginFailure.name == name,
                                              LoginFailure.address == address))
