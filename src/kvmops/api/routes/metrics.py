"""``GET /metrics``: Prometheus metrics of every host the server manages (viewer role,
``Authorization: Bearer TOKEN`` -- Prometheus' ``authorization`` scrape setting), plus
the API's own request latency histogram, observed by :class:`RequestLatency`."""

from __future__ import annotations

import threading
import time
from typing import Any

from fastapi import APIRouter, Query, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from kvmops.api.deps import Ctx, Viewer
from kvmops.metrics import api as api_metrics
from kvmops.services.caller import Caller
from kvmops.services.metrics import MetricsSource, registry

router = APIRouter(tags=["metrics"])
_LOCK = threading.Lock()


def _registry(request: Request, ctx: Ctx, deadline: float) -> CollectorRegistry:
    """The app's registry for this deadline (made once: it keeps the agents' answers and
    the manifests read)."""
    with _LOCK:
        found: dict[float, CollectorRegistry] | None = getattr(
            request.app.state, "kvmops_metrics", None)
        if found is None:
            found = request.app.state.kvmops_metrics = {}
        if deadline not in found:
            source = MetricsSource(Caller(name="metrics", via="api"), deadline_s=deadline,
                                   db=ctx.store, store=lambda: ctx.store)
            found[deadline] = registry(source, api_metrics.REQUEST_DURATION)
        return found[deadline]


@router.get("/metrics", response_class=Response,
            responses={200: {"content": {"text/plain": {}},
                             "description": "Prometheus text exposition format"}})
def metrics(_: Viewer, ctx: Ctx, request: Request,
            deadline: float = Query(5.0, ge=0.5, le=60.0,
                                    description="how long each host is waited for (s)")
            ) -> Response:
    """Prometheus metrics: every host's VMs (kumina's series and kvmops' own), backups,
    jobs, doctor results, API latency. A host that does not answer within ``deadline``
    is ``kvmops_host_up 0``; the scrape itself never fails for it."""
    return Response(generate_latest(_registry(request, ctx, deadline)),
                    media_type=CONTENT_TYPE_LATEST)


class RequestLatency:
    """ASGI middleware observing each HTTP request's duration by method, route template
    (``/api/v1/vms/{name}``; ``other`` when no route matched) and status."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = [500]

        async def sent(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, sent)
        finally:
            api_metrics.observe(scope.get("method", "GET"), route_template(scope), status[0],
                                time.perf_counter() - started)


def route_template(scope: Scope) -> str:
    """The matched route's path template with its router's prefix
    (``/api/v1/vms/{name}``), ``other`` when no route matched (a bounded label set)."""
    route: Any = scope.get("route")
    template = getattr(route, "path_format", None) or getattr(route, "path", None)
    if not isinstance(template, str):
        return "other"
    # The route may be the one its router was declared with (no prefix): the prefix is
    # what the request path has before the route's own part.
    own = template
    for key, value in (scope.get("path_params") or {}).items():
        own = own.replace("{" + str(key) + "}", str(value))
    path = str(scope.get("path", ""))
    if own and path.endswith(own) and not template.startswith("/api/"):
        return path[: len(path) - len(own)] + template
    return template
