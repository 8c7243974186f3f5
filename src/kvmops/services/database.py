"""The state database as the faces see it.

The API and the web UI never import ``kvmops.store``: the server opens one handle here
and passes it to the use cases of :mod:`kvmops.services.auth`, :mod:`~kvmops.services.users`,
:mod:`~kvmops.services.jobs` and :mod:`~kvmops.services.audit`, which are the only code
that reads or writes it. A command opens the database it names with :func:`migrated`;
``kvmops serve`` prepares it once with :func:`prepare_for_server` before it starts.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass

from kvmops.store import db as store_db
from kvmops.store.db import Store
from kvmops.store.notify import EventChannel, Receiver

__all__ = ["EventChannel", "PreparedDatabase", "Store", "event_channel", "migrated",
           "open_database", "prepare_for_server", "shared"]


def open_database(url: str | None) -> Store:
    """The database at ``url`` (None: the default SQLite file) for a server's lifetime;
    the caller migrates it (``store.migrate()``) before use and closes it at the end."""
    return Store(url)


def migrated(url: str | None) -> AbstractContextManager[Store]:
    """The database a command names (None: the default), migrated -- a command may be
    the first to use it -- and closed at the end of the block."""
    return store_db.migrated(url)


@dataclass(frozen=True)
class PreparedDatabase:
    url: str  #: without its password: for messages
    initial_admin_password: str | None  #: set only when this start created ``admin``


def prepare_for_server(url: str | None) -> PreparedDatabase:
    """Before a server starts: the schema brought up to date, and on an empty user table
    the user ``admin`` created with a random password (returned once, to be shown)."""
    from kvmops.store import users

    store = Store(url)
    try:
        store.migrate()
        password = users.ensure_initial_admin(store)
    finally:
        store.close()
    return PreparedDatabase(url=store_db.safe_url(store.url), initial_admin_password=password)


def shared(store: Store) -> bool:
    """Several servers may share this database (PostgreSQL): jobs are claimed from the
    queue, events cross instances, the log-in throttle counts in the database. SQLite
    is the embedded database of one server."""
    return not store.is_sqlite


def event_channel(store: Store, origin: str, receive: Receiver) -> EventChannel:
    """Events to and from the other servers on ``store`` (PostgreSQL LISTEN/NOTIFY);
    ``origin`` names this server, ``receive`` gets the others' events. Call start()."""
    return EventChannel(store, origin, receive)
