"""Jinja2 environment and page rendering helpers."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from typing import Any

import jinja2
from fastapi import Request
from fastapi.responses import HTMLResponse

import kvmops
from kvmops.services import auth
from kvmops.services.auth import Principal, Role
from kvmops.sizes import format_size

_env = jinja2.Environment(
    loader=jinja2.PackageLoader("kvmops.web", "templates"),
    autoescape=jinja2.select_autoescape(["html"]),
    trim_blocks=True, lstrip_blocks=True, undefined=jinja2.StrictUndefined)


NONE = "\u2013"  # en dash: no value


def _size(value: Any) -> str:
    return NONE if value is None else format_size(int(value))


def _when(value: Any) -> str:
    if value is None:
        return NONE
    moment: Any = value
    if isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            return value
    if isinstance(moment, datetime):
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        return str(moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S"))
    return str(value)


def _iso(value: Any) -> str:
    if isinstance(value, datetime):
        moment = value if value.tzinfo is not None else value.replace(tzinfo=UTC)
        return moment.isoformat()
    return str(value or "")


def _state_class(state: str) -> str:
    return "state-" + state.replace(" ", "-")


_env.filters.update(size=_size, when=_when, iso=_iso, state_class=_state_class)
_env.globals.update(version=kvmops.__version__)


def can(user: Principal | None, role: Role) -> bool:
    return user is not None and auth.role_allows(user.role, role)


# Seconds after a shutdown request before the page says the VM still runs
# (KVMOPS_WEB_SHUTDOWN_WATCH: a test seam, and a knob for slow guests).
SHUTDOWN_WATCH_S = int(os.environ.get("KVMOPS_WEB_SHUTDOWN_WATCH") or 60)


def render(request: Request, name: str, user: Principal | None, status_code: int = 200,
           **values: Any) -> HTMLResponse:
    page = name.removesuffix(".html").lstrip("_")
    values.setdefault("title", "kvmops")
    html = _env.get_template(name).render(
        request=request, user=user, page=page, path=request.url.path,
        operator=can(user, "operator"), admin=can(user, "admin"),
        shutdown_watch=SHUTDOWN_WATCH_S, **values)
    return HTMLResponse(html, status_code=status_code,
                        headers={"Cache-Control": "no-store",
                                 "X-Frame-Options": "DENY",
                                 "X-Content-Type-Options": "nosniff",
                                 "Referrer-Policy": "same-origin"})


def error(request: Request, status: int, message: str) -> HTMLResponse:
    from kvmops.web.auth import context as ctx_of
    from kvmops.web.auth import session_principal

    user = None
    try:
        user = session_principal(ctx_of(request), request.cookies.get("kvmops_session"))
    except Exception:  # the error page must render even when the store is down
        user = None
    return render(request, "error.html", user, status_code=status, title="Error",
                  status=status, message=message)
