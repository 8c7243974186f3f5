"""Users, roles, API tokens and log-in sessions.

Passwords are argon2 hashes; API and session tokens are 256-bit random values
of which only a SHA-256 hash is stored (a token is shown once, when created).
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from sqlalchemy import delete, func, select

from kvmops.errors import AlreadyExistsError, NotFoundError, ValidationError
from kvmops.store.db import Store
from kvmops.store.models import ApiToken, Session, User

Role = Literal["admin", "operator", "viewer"]
ROLES: tuple[Role, ...] = ("viewer", "operator", "admin")  # ascending rights
TOKEN_PREFIX = "kvm_"
MIN_PASSWORD = 8

_hasher = PasswordHasher()
# Verifying against this when a user does not exist keeps log-in timing uniform.
_DUMMY_HASH = _hasher.hash(secrets.token_urlsafe(16))


@dataclass(frozen=True)
class Principal:
    """Who a request runs as."""

    id: int
    name: str
    role: Role
    via: Literal["token", "session"]
    csrf_token: str | None = None


@dataclass(frozen=True)
class UserView:
    name: str
    role: Role
    created_at: datetime
    tokens: int


def role_allows(role: str, needed: Role) -> bool:
    """``role`` has at least the rights of ``needed``."""
    if role not in ROLES:
        return False
    return ROLES.index(role) >= ROLES.index(needed)  # type: ignore[arg-type]


# The same characters as VM names (and no longer): a user name shows in audit rows and
# job records beside VM names.
USER_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]{0,63}$")


def validate_user_name(name: str) -> str:
    if not USER_NAME_RE.match(name):
        raise ValidationError(f"invalid user name '{name}'",
                              hint="use 1-64 letters, digits, '_', '.', '+' or '-'")
    return name


def validate_role(role: str) -> Role:
    if role not in ROLES:
        raise ValidationError(f"invalid role '{role}'", hint="use admin, operator or viewer")
    return role  # type: ignore[return-value]


def validate_password(password: str) -> str:
    if len(password) < MIN_PASSWORD:
        raise ValidationError(f"password too short: at least {MIN_PASSWORD} characters")
    if "\n" in password or "\r" in password:
        raise ValidationError("the password must be one line")
    return password


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_secret() -> str:
    return secrets.token_urlsafe(32)


# ------------------------------------------------------------------ users
def add_user(store: Store, name: str, role: str, password: str | None) -> UserView:
    validate_user_name(name)
    checked_role = validate_role(role)
    hashed = _hasher.hash(validate_password(password)) if password is not None else None
    with store.session() as db:
        if db.scalar(select(User).where(User.name == name)) is not None:
            raise AlreadyExistsError(f"user '{name}' already exists",
                                     hint="choose another name or delete the user first")
        user = User(name=name, role=checked_role, password_hash=hashed)
        db.add(user)
        db.flush()
        return UserView(name=user.name, role=checked_role, created_at=user.created_at,
                        tokens=0)


def set_password(store: Store, name: str, password: str) -> None:
    hashed = _hasher.hash(validate_password(password))
    with store.session() as db:
        user = _user(db, name)
        user.password_hash = hashed
        db.execute(delete(Session).where(Session.user_id == user.id))


def list_users(store: Store) -> list[UserView]:
    with store.session() as db:
        counts = dict(db.execute(select(ApiToken.user_id, func.count())
                                 .group_by(ApiToken.user_id)).tuples().all())
        return [UserView(name=u.name, role=validate_role(u.role), created_at=u.created_at,
                         tokens=int(counts.get(u.id, 0)))
                for u in db.scalars(select(User).order_by(User.name))]


def user_count(store: Store) -> int:
    with store.session() as db:
        return int(db.scalar(select(func.count()).select_from(User)) or 0)


def delete_user(store: Store, name: str) -> None:
    with store.session() as db:
        user = _user(db, name)
        db.execute(delete(ApiToken).where(ApiToken.user_id == user.id))
        db.execute(delete(Session).where(Session.user_id == user.id))
        db.delete(user)


def _user(db: object, name: str) -> User:
    from sqlalchemy.orm import Session as OrmSession

    assert isinstance(db, OrmSession)
    user = db.scalar(select(User).where(User.name == name))
    if user is None:
        raise NotFoundError(f"user '{name}' not found", hint="see 'kvmops user list'")
    return user


def ensure_initial_admin(store: Store) -> str | None:
    """On an empty user table create ``admin`` with a random password; return it (once)."""
    if user_count(store):
        return None
    password = secrets.token_urlsafe(12)
    try:
        add_user(store, "admin", "admin", password)
    except AlreadyExistsError:  # another process won the race
        return None
    return password


# ------------------------------------------------------------------ credentials
def verify_password(store: Store, name: str, password: str) -> Principal | None:
    with store.session() as db:
        user = db.scalar(select(User).where(User.name == name))
        stored = user.password_hash if user is not None else None
        try:
            _hasher.verify(stored or _DUMMY_HASH, password)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return None
        if user is None or stored is None:
            return None
        if _hasher.check_needs_rehash(stored):
            user.password_hash = _hasher.hash(password)
        return Principal(id=user.id, name=user.name, role=validate_role(user.role),
                         via="session")


def new_token(store: Store, name: str) -> str:
    """A new API token for ``name``; only its hash is kept."""
    token = TOKEN_PREFIX + new_secret()
    with store.session() as db:
        user = _user(db, name)
        db.add(ApiToken(user_id=user.id, token_hash=token_hash(token),
                        prefix=token[: len(TOKEN_PREFIX) + 6]))
    return token


def revoke_tokens(store: Store, name: str) -> int:
    with store.session() as db:
        user = _user(db, name)
        result = db.execute(delete(ApiToken).where(ApiToken.user_id == user.id))
        return int(getattr(result, "rowcount", 0) or 0)


def authenticate_token(store: Store, token: str) -> Principal | None:
    with store.session() as db:
        row = db.execute(
            select(User.id, User.name, User.role)
            .join(ApiToken, ApiToken.user_id == User.id)
            .where(ApiToken.token_hash == token_hash(token))
        ).first()
        if row is None:
            return None
        return Principal(id=row[0], name=row[1], role=validate_role(row[2]), via="token")


def create_session(store: Store, principal: Principal, ttl: timedelta
                   ) -> tuple[str, str]:
    """A new log-in session: returns (session token, CSRF token)."""
    token = new_secret()
    csrf = new_secret()
    now = datetime.now(UTC)
    with store.session() as db:
        db.execute(delete(Session).where(Session.expires_at < now))
        db.add(Session(token_hash=token_hash(token), user_id=principal.id, csrf_token=csrf,
                       expires_at=now + ttl))
    return token, csrf


def authenticate_session(store: Store, token: str) -> Principal | None:
    with store.session() as db:
        row = db.execute(
            select(User.id, User.name, User.role, Session.csrf_token, Session.expires_at)
            .join(Session, Session.user_id == User.id)
            .where(Session.token_hash == token_hash(token))
        ).first()
        if row is None or row[4] < datetime.now(UTC):
            return None
        return Principal(id=row[0], name=row[1], role=validate_role(row[2]), via="session",
                         csrf_token=row[3])


def end_session(store: Store, token: str) -> None:
    with store.session() as db:
        db.execute(delete(Session).where(Session.token_hash == token_hash(token)))
