"""The state database as the server's faces see it.

The API and the web UI never import ``kvmops.store``: the server opens one handle here
and passes it to the use cases of :mod:`kvmops.services.auth`, :mod:`~kvmops.services.users`,
:mod:`~kvmops.services.jobs` and :mod:`~kvmops.services.audit`, which are the only code
that reads or writes it. (The command line opens its own, inside those use cases.)
"""

from __future__ import annotations

from kvmops.store.db import Store

__all__ = ["Store", "open_database"]


def open_database(url: str | None) -> Store:
    """The database at ``url`` (None: the default SQLite file) for a server's lifetime;
    the caller migrates it (``store.migrate()``) before use and closes it at the end."""
    return Store(url)
