"""Who may use the server: log-in sessions, API tokens, passwords and roles.

The use cases of the API's and the web UI's authentication; the faces keep only the
HTTP side (cookies, headers, status codes) and the log-in throttle.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from kvmops.store import users
from kvmops.store.db import Store
from kvmops.store.users import MIN_PASSWORD, ROLES, Principal, Role

__all__ = ["MIN_PASSWORD", "ROLES", "Principal", "Role", "authenticate_session",
           "authenticate_token", "change_password", "check_password", "clear_login_failures",
           "end_session", "login_failures", "record_login_failure", "role_allows",
           "start_session"]


def role_allows(role: str, needed: Role) -> bool:
    """``role`` has at least the rights of ``needed``."""
    return users.role_allows(role, needed)


def authenticate_token(store: Store, token: str) -> Principal | None:
    """The user of an API token (``Authorization: Bearer``), or None."""
    return users.authenticate_token(store, token)


def authenticate_session(store: Store, token: str) -> Principal | None:
    """The user of a live log-in session (its cookie), or None when unknown or expired."""
    return users.authenticate_session(store, token)


def check_password(store: Store, name: str, password: str) -> Principal | None:
    """The user when the password is theirs, else None (timing is the same for a user
    that does not exist)."""
    return users.verify_password(store, name, password)


def start_session(store: Store, principal: Principal, ttl: timedelta) -> tuple[str, str]:
    """A log-in session for ``principal``: (session token, CSRF token)."""
    return users.create_session(store, principal, ttl)


def end_session(store: Store, token: str) -> None:
    """Log out: the session's token no longer authenticates."""
    users.end_session(store, token)


def change_password(store: Store, name: str, old_password: str, new_password: str) -> bool:
    """A user changes their own password, proving the old one (False when it is wrong);
    their log-in sessions end."""
    if users.verify_password(store, name, old_password) is None:
        return False
    users.set_password(store, name, new_password)
    return True


def login_failures(store: Store, name: str, address: str, window: float) -> list[datetime]:
    """Failed log-ins of key (name, address) in the last ``window`` seconds, oldest
    first (the throttle shared by every server on one database)."""
    from kvmops.store import throttle

    return throttle.failures(store, name, address, window)


def record_login_failure(store: Store, keys: list[tuple[str, str]], window: float) -> None:
    from kvmops.store import throttle

    throttle.record(store, keys, window)


def clear_login_failures(store: Store, name: str, address: str) -> None:
    from kvmops.store import throttle

    throttle.clear(store, name, address)
