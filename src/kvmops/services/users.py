"""User use cases: API users, roles and tokens. The command line names the database the
server uses (``--db``, else the configured one) and each change is audited into it, with
the OS user who made it; the server's faces pass their open database (their requests are
audited by the API's middleware)."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, TypeVar

from kvmops.services.audit import audited
from kvmops.services.caller import Caller

if TYPE_CHECKING:
    from kvmops.store.db import Store
    from kvmops.store.users import UserView

T = TypeVar("T")


def _store(db: str | None) -> AbstractContextManager[Store]:
    from kvmops.store import migrated

    return migrated(db)


def _with_store(db: str | Store | None, fn: Callable[[Store], T]) -> T:
    """``fn`` on the server's open database, or on the one a command names (migrated
    first: a command may be the first to use it)."""
    if db is not None and not isinstance(db, str):
        return fn(db)
    with _store(db) as store:
        return fn(store)


def check_new_user(name: str, role: str) -> None:
    """The name and role, checked before a password is asked for."""
    from kvmops.store import users

    users.validate_user_name(name)
    users.validate_role(role)


@audited("user.add", target="name", db_arg="db")
def add(caller: Caller, db: str | Store | None, name: str, role: str, password: str | None
        ) -> UserView:
    from kvmops.store import users

    check_new_user(name, role)
    return _with_store(db, lambda store: users.add_user(store, name, role, password))


@audited("user.passwd", target="name", db_arg="db")
def set_password(caller: Caller, db: str | Store | None, name: str, password: str) -> None:
    from kvmops.store import users

    _with_store(db, lambda store: users.set_password(store, name, password))


def list_users(caller: Caller, db: str | Store | None) -> list[UserView]:
    from kvmops.store import users

    return _with_store(db, users.list_users)


@audited("user.delete", target="name", db_arg="db")
def delete(caller: Caller, db: str | Store | None, name: str) -> None:
    from kvmops.store import users

    _with_store(db, lambda store: users.delete_user(store, name))


@audited("user.token", target="name", db_arg="db")
def new_token(caller: Caller, db: str | Store | None, name: str) -> str:
    """A new API token (returned once; only its hash is kept)."""
    from kvmops.store import users

    return _with_store(db, lambda store: users.new_token(store, name))


@audited("user.token.revoke", target="name", db_arg="db")
def revoke_tokens(caller: Caller, db: str | Store | None, name: str) -> int:
    from kvmops.store import users

    return _with_store(db, lambda store: users.revoke_tokens(store, name))
