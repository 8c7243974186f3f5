"""The kvmops database: users, API tokens, sessions, jobs, audit log, settings.

SQLAlchemy 2.0 models (:mod:`kvmops.store.models`), Alembic migrations shipped
in :mod:`kvmops.store.migrations` and run programmatically by
:meth:`Store.migrate`. SQLite under the state directory by default, PostgreSQL
(psycopg 3) by URL.
"""

from kvmops.store.db import Store, default_url, normalize_url

__all__ = ["Store", "default_url", "normalize_url"]
