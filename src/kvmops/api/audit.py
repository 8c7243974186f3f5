"""ASGI middleware writing one audit row per request that matters.

Recorded: every state-changing request on any path (API and web forms), every refused
request whatever its method (401, 403, 413, 429), every read of a guest through its
agent, and every download of a volume's data. A row holds who (the authenticated
user, or the name given to log-in), from where (the client address), what (the
route's function name, method and path), the target (what the route put in
``request.state.target``, else the ``name``/``user``/``job_id`` path parameter),
when, the status code and the job id of a 202. Bodies are never recorded, so
passwords and tokens never reach the log.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from typing import Any

import anyio
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from kvmops.errors import KvmopsError
from kvmops.services import audit
from kvmops.services.audit import DENIED
from kvmops.services.database import Store

log = logging.getLogger("kvmops.api")
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_GUEST_READ = re.compile(r"^/api/v1/(ui/)?vms/[^/]+/guest")
_VOLUME_READ = re.compile(r"^/api/v1/pools/[^/]+/volumes/[^/]+/data$")  # disk contents
_STATIC = ("/static/", "/favicon")


def client_of(scope: Scope) -> str | None:
    client = scope.get("client")
    return str(client[0]) if client else None


def wanted(method: str, path: str, status: int) -> bool:
    if path.startswith(_STATIC):
        return status in DENIED
    return (method not in SAFE_METHODS or status in DENIED or bool(_GUEST_READ.match(path))
            or bool(_VOLUME_READ.match(path)))


def via_of(path: str) -> str:
    """The face a request came through: the REST API, or the web UI (its pages, forms
    and the ``/api/v1/ui`` calls its scripts make)."""
    return "api" if path.startswith("/api/") and not path.startswith("/api/v1/ui/") \
        else "web"


class AuditMiddleware:
    def __init__(self, app: ASGIApp, store: Callable[[], Store]) -> None:
        self.app = app
        self.store = store

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500
        job_id: str | None = None

        async def send_wrapper(message: Message) -> None:
            nonlocal status, job_id
            if message["type"] == "http.response.start":
                status = int(message["status"])
                for key, value in message.get("headers", []):
                    if key.lower() == b"x-job-id":
                        job_id = value.decode()
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            if wanted(scope["method"], scope["path"], status):
                await anyio.to_thread.run_sync(self._record, scope, status, job_id)

    def _record(self, scope: Scope, status: int, job_id: str | None) -> None:
        state: dict[str, Any] = scope.get("state") or {}
        endpoint = scope.get("endpoint")
        params: dict[str, Any] = scope.get("path_params") or {}
        target = (state.get("target") or params.get("name") or params.get("user")
                  or params.get("job_id"))
        action = getattr(endpoint, "__name__", None) or ("refused" if status in DENIED
                                                         else "unknown")
        try:
            audit.record_request(self.store(), user=state.get("user"), method=scope["method"],
                                 path=scope["path"], action=action,
                                 target=str(target) if target else None, status_code=status,
                                 job_id=job_id, address=client_of(scope),
                                 via=via_of(scope["path"]))
        except KvmopsError as err:
            log.error("cannot write the audit log: %s", err)
