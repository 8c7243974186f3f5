"""The kvmops database: users, API tokens, sessions, jobs, audit log, settings.

SQLAlchemy 2.0 models (:mod:`kvmops.store.models`), Alembic migrations shipped
in :mod:`kvmops.store.migrations` and run programmatically by
:meth:`Store.migrate`. SQLite under the state directory by default, PostgreSQL
(psycopg 3) by URL. The package itself loads nothing heavy: the CLI writes its jobs
and audit rows through :mod:`kvmops.store.direct` without SQLAlchemy.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from kvmops.store.db import Store, default_url, migrated, normalize_url

__all__ = ["Store", "default_url", "migrated", "normalize_url"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from kvmops.store import db

        return getattr(db, name)
    raise AttributeError(f"module 'kvmops.store' has no attribute {name!r}")
