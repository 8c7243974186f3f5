"""ASGI middleware in front of every route: request size limits, authentication
before a body is read, and security headers on every response.

* **Size**: a ``Content-Length`` over the route's limit is answered 413 before one
  byte of the body is read; a body without a length is counted as it arrives and
  cut off at the limit. Limits: log-in forms 16 KiB, guest file pushes the
  transfer limit in base64 plus 64 KiB, volume data the volume's size (checked by its
  route), everything else ``max_body``.
* **Authentication first**: an API request with a body must carry a valid token
  or session before its body is read or parsed (401 otherwise). The principal
  found is kept in the request state for the route's own check.
* **Headers**: a Content-Security-Policy allowing only this origin's scripts and
  styles, ``X-Frame-Options: DENY``, ``X-Content-Type-Options: nosniff`` and
  ``Referrer-Policy: same-origin`` on every response.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

import anyio
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from kvmops.services import auth
from kvmops.services.auth import Principal
from kvmops.services.database import Store

LOGIN_LIMIT = 16 * 1024
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
       "font-src 'self'; connect-src 'self'; object-src 'none'; base-uri 'none'; "
       "form-action 'self'; frame-ancestors 'none'")
SECURITY_HEADERS = [
    (b"content-security-policy", CSP.encode()),
    (b"x-frame-options", b"DENY"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"same-origin"),
]
_PUSH = re.compile(r"^/api/v1/vms/[^/]+/guest/push$")
# Volume data: the route refuses a Content-Length over the volume's own size before it
# reads a byte, and reads no more than that length (kvmops.api.routes.pools).
_VOLUME_DATA = re.compile(r"^/api/v1/pools/[^/]+/volumes/[^/]+/data$")
VOLUME_DATA_LIMIT = 1 << 50
_OPEN_API = frozenset({"/api/v1/login", "/api/v1/health"})
BODY_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
SESSION_COOKIE = "kvmops_session"


class BodyTooLarge(BaseException):
    """Raised from ``receive`` past the limit. A BaseException on purpose: FastAPI turns
    every Exception raised while it reads a body into a 400, and this must reach the
    guard to become a 413."""


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key.lower() == name:
            return str(value.decode("latin-1"))
    return None


def _cookie(scope: Scope, name: str) -> str | None:
    raw = _header(scope, b"cookie")
    if not raw:
        return None
    for part in raw.split(";"):
        key, _, value = part.strip().partition("=")
        if key == name:
            return value
    return None


async def _reply(send: Send, status: int, message: str, kind: str,
                 extra_headers: list[tuple[bytes, bytes]] | None = None) -> None:
    body = json.dumps({"error": message, "kind": kind}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode()),
                            *(extra_headers or [])]})
    await send({"type": "http.response.body", "body": body})


class RequestGuard:
    def __init__(self, app: ASGIApp, store: Callable[[], Store], max_body: int,
                 max_transfer: int) -> None:
        self.app = app
        self.store = store
        self.max_body = max_body
        self.push_limit = (max_transfer * 4) // 3 + 64 * 1024

    def limit(self, path: str) -> int:
        if path in ("/login", "/api/v1/login"):
            return LOGIN_LIMIT
        if _PUSH.match(path):
            return self.push_limit
        if _VOLUME_DATA.match(path):
            return VOLUME_DATA_LIMIT
        return self.max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        limit = self.limit(path)
        length = _header(scope, b"content-length")
        if length is not None:
            try:
                declared = int(length)
            except ValueError:
                await _reply(send, 400, "invalid Content-Length", "BadRequest")
                return
            if declared > limit:
                await _reply(send, 413, f"request body of {declared} bytes is over the "
                                        f"limit of {limit} bytes", "TooLarge")
                return
        if (scope["method"] in BODY_METHODS and path.startswith("/api/")
                and path not in _OPEN_API):
            principal = await anyio.to_thread.run_sync(self._principal, scope)
            if principal is None:
                await _reply(send, 401, "authentication required: log in or send a valid "
                                        "Bearer token", "Unauthorized",
                             [(b"www-authenticate", b"Bearer")])
                return
            scope.setdefault("state", {})["principal"] = principal
            scope["state"]["user"] = principal.name
        received = 0
        started = False

        async def counted_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counted_receive, tracking_send)
        except BodyTooLarge:
            if not started:
                await _reply(send, 413, f"request body is over the limit of {limit} bytes",
                             "TooLarge")

    def _principal(self, scope: Scope) -> Principal | None:
        header = _header(scope, b"authorization")
        if header:
            scheme, _, token = header.partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                return None
            return auth.authenticate_token(self.store(), token.strip())
        cookie = _cookie(scope, SESSION_COOKIE)
        return auth.authenticate_session(self.store(), cookie) if cookie else None


class SecurityHeaders:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                present = {k.lower() for k, _v in message.get("headers", [])}
                headers: list[Any] = list(message.get("headers", []))
                headers += [(k, v) for k, v in SECURITY_HEADERS if k not in present]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, with_headers)
