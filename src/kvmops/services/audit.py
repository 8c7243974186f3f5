"""Audit of use cases: one row per state-changing call from the command line.

API and web requests are audited by their middleware (:mod:`kvmops.api.audit`); a
``kvmops`` command has none, so every state-changing service function carries
:func:`audited`, which writes the row -- the OS user (``Caller.local()``), ``via``
cli, the action, its target, the exit code, the job it recorded -- to the state
database when that is reachable (:mod:`kvmops.store.direct`), and nothing otherwise.
The server's faces write their rows and read the log through :func:`record_request`
and :func:`entries`.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from contextvars import ContextVar
from pathlib import PurePath
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

from kvmops.errors import KvmopsError
from kvmops.services.caller import Caller

P = ParamSpec("P")
R = TypeVar("R")
INTERRUPTED_EXIT = 130
INTERNAL_ERROR_EXIT = 70
# Set while an audited use case runs: the ones it calls are part of it, not rows.
_inside: ContextVar[bool] = ContextVar("kvmops_audit_inside", default=False)


def _target(arguments: dict[str, Any], target: str | Callable[[dict[str, Any]], Any] | None
            ) -> str | None:
    if target is None:
        return None
    value = target(arguments) if callable(target) else arguments.get(target)
    if value is None:
        return None
    if isinstance(value, str | int | PurePath):
        return str(value)
    name = getattr(value, "name", None)  # a request model names its VM
    return str(name) if name is not None else str(value)


def _db_url(value: Any) -> str | None:
    """A database named by URL, or by the open store a use case was given."""
    url = getattr(value, "url", value)
    return str(url) if url else None


def record(caller: Caller, action: str, target: str | None, exit_code: int, *,
           job_id: str | None = None, db_url: str | None = None) -> None:
    """Write one audit row of a command (silently nothing without a database)."""
    if caller.via != "cli":
        return
    from kvmops.store.direct import quietly, state_db

    db = state_db(db_url)
    if db is None:
        return
    with quietly(f"audit {action}"):
        db.audit(user=caller.name, command="kvmops " + action.replace(".", " "),
                 action=action, target=target, exit_code=exit_code, via=caller.via,
                 job_id=job_id)


def run_audited(caller: Caller, action: str, target: str | None, fn: Callable[[], R], *,
                db_url: str | None = None) -> R:
    """Run ``fn`` as the use case ``action`` on ``target``; audited when a command
    calls it (and it is not part of another audited use case)."""
    if caller.via != "cli" or _inside.get():
        return fn()
    from kvmops.jobstate import current_job

    token = _inside.set(True)
    job_token = current_job.set(None)
    code = INTERNAL_ERROR_EXIT
    try:
        result = fn()
        code = 0
        return result
    except KvmopsError as err:
        code = err.exit_code
        raise
    except KeyboardInterrupt:
        code = INTERRUPTED_EXIT
        raise
    finally:
        _inside.reset(token)
        job_id = current_job.get()
        current_job.reset(job_token)
        record(caller, action, target, code, job_id=job_id, db_url=db_url)


def audited(action: str, target: str | Callable[[dict[str, Any]], Any] | None = "vm",
            *, db_arg: str | None = None) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Audit a use case called by the command line. ``action`` names it (``vm.start``);
    ``target`` is the parameter naming what it acts on (or a function of the bound
    arguments); ``db_arg`` a parameter naming another database (``user add --db``).
    The caller is the ``caller`` argument, else the ``caller`` of the first one (a
    session object such as :class:`kvmops.services.guest.Guest`)."""

    def decorate(fn: Callable[P, R]) -> Callable[P, R]:
        signature = inspect.signature(fn)

        @functools.wraps(fn)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            bound = signature.bind_partial(*args, **kwargs)
            caller = bound.arguments.get("caller")
            if caller is None and args:
                caller = getattr(args[0], "caller", None)
            if not isinstance(caller, Caller) or caller.via != "cli":
                return fn(*args, **kwargs)
            return run_audited(caller, action, _target(bound.arguments, target),
                               lambda: fn(*args, **kwargs),
                               db_url=_db_url(bound.arguments.get(db_arg)) if db_arg
                               else None)

        return wrapper

    return decorate


# The audit log, as the server's faces write and read it ---------------------------------
# (Loaded on use: the command line's audit above needs no SQLAlchemy.)
if TYPE_CHECKING:
    from kvmops.store.audit import DENIED as DENIED
    from kvmops.store.audit import AuditView as AuditView
    from kvmops.store.db import Store


def __getattr__(name: str) -> Any:
    if name in ("AuditView", "DENIED"):  # the row's JSON form; refused status codes
        from kvmops.store import audit as audit_store

        return getattr(audit_store, name)
    raise AttributeError(f"module 'kvmops.services.audit' has no attribute {name!r}")


def record_request(store: Store, *, user: str | None, method: str, path: str, action: str,
                   target: str | None, status_code: int, job_id: str | None = None,
                   address: str | None = None, via: str | None = None) -> None:
    """One row of a request to the server (an API call, a web form, a console socket):
    ``ok``, ``denied`` or ``failed`` by its status code. Never a body, so no secret."""
    from kvmops.store import audit as audit_store

    audit_store.record(store, user=user, method=method, path=path, action=action,
                       target=target, status_code=status_code, job_id=job_id,
                       address=address, via=via)


def entries(store: Store, *, user: str | None = None, limit: int = 100) -> list[AuditView]:
    """The newest rows first, of one user or all, from every face (CLI rows included)."""
    from kvmops.store import audit as audit_store

    return audit_store.entries(store, user=user, limit=limit)
