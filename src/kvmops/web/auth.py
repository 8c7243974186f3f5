"""The pages' session check: the API's log-in session cookie, or a redirect to /login.

State-changing requests from the pages go to the API with the session's CSRF
token in ``X-CSRF-Token`` (a ``<meta name="csrf-token">`` on every page); the
log-in form itself, having no session yet, carries a double-submit token.
"""

from __future__ import annotations

import hmac
import secrets
from typing import Annotated
from urllib.parse import quote, urlsplit

from fastapi import Depends, Request, WebSocket
from starlette.requests import HTTPConnection

from kvmops.api.context import ApiContext
from kvmops.api.deps import SESSION_COOKIE
from kvmops.services import auth
from kvmops.services.auth import Principal, Role

LOGIN_CSRF_COOKIE = "kvmops_login_csrf"


class LoginRequired(Exception):
    def __init__(self, next_url: str) -> None:
        super().__init__("log in first")
        self.next_url = next_url


class PageError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def context(conn: HTTPConnection) -> ApiContext:
    ctx: ApiContext = conn.app.state.kvmops
    return ctx


def session_principal(ctx: ApiContext, cookie: str | None) -> Principal | None:
    if not cookie:
        return None
    return auth.authenticate_session(ctx.store, cookie)


def page_user(request: Request) -> Principal:
    principal = session_principal(context(request), request.cookies.get(SESSION_COOKIE))
    if principal is None:
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        raise LoginRequired(target)
    request.state.user = principal.name
    return principal


def need(principal: Principal, role: Role) -> None:
    if not auth.role_allows(principal.role, role):
        raise PageError(403, f"user '{principal.name}' ({principal.role}) may not see this: "
                             f"it needs the {role} role")


def page_admin(principal: Annotated[Principal, Depends(page_user)]) -> Principal:
    need(principal, "admin")
    return principal


def page_operator(principal: Annotated[Principal, Depends(page_user)]) -> Principal:
    need(principal, "operator")
    return principal


PageUser = Annotated[Principal, Depends(page_user)]
PageOperator = Annotated[Principal, Depends(page_operator)]
PageAdmin = Annotated[Principal, Depends(page_admin)]


def login_url(next_url: str) -> str:
    return "/login?next=" + quote(next_url, safe="/")


def safe_next(value: str | None) -> str:
    """Only local paths: never redirect off-site after log-in."""
    if not value or not value.startswith("/") or value.startswith("//"):
        return "/"
    parts = urlsplit(value)
    if parts.scheme or parts.netloc or "\\" in value:
        return "/"
    return value


def new_login_token() -> str:
    return secrets.token_urlsafe(24)


def login_token_ok(cookie: str | None, form_value: str | None) -> bool:
    return bool(cookie and form_value and hmac.compare_digest(cookie, form_value))


def same_origin(websocket: WebSocket) -> bool:
    """A WebSocket from a page of this server. A missing Origin is refused too: browsers
    always send one, and a session cookie alone must not open a console."""
    origin = websocket.headers.get("origin")
    if origin is None:
        return False
    host = websocket.headers.get("host", "")
    parts = urlsplit(origin)
    return parts.netloc == host and parts.scheme in ("http", "https")
