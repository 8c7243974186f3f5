"""The authorization matrix, generated from the app's route table.

Every route must carry a role check (a ``require_*``/``caller_*`` dependency for the
API, ``page_*`` for pages) or be in the short list of public routes; a new route
without one fails here. Then each route is called for real on the running server:
without credentials (401, or the log-in redirect for pages), and below its role (403).
"""

from __future__ import annotations

import re
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.routing import APIRoute, APIWebSocketRoute

from kvmops.api import ApiSettings, create_app
from tests.integration.api_server import ApiServer

PUBLIC = {("GET", "/api/v1/health"), ("POST", "/api/v1/login"), ("GET", "/login"),
          ("POST", "/login"), ("GET", "/docs")}
ORDER = ["viewer", "operator", "admin"]
PARAMS = {"name": "kvmops-test-nosuchvm", "snapshot": "s1", "target": "vdb",
          "mac": "52:54:00:00:00:01",
          "job_id": "nonexistent", "user": "nobody", "volume": "v1", "pf": "kvtnopf0",
          "bridge": "kvtnobr0", "run_id": "1", "schedule_id": "1",
          "backup_id": "20260101T000000.000000Z"}
_ROLE_DEP = re.compile(r"^(?:require|caller|page)_(viewer|operator|admin|user)$")


def _dependency_names(dependant: Any) -> Iterator[str]:
    for sub in dependant.dependencies:
        if sub.call is not None:
            yield getattr(sub.call, "__name__", "")
        yield from _dependency_names(sub)


def required_role(route: APIRoute | APIWebSocketRoute) -> str | None:
    roles = [m.group(1) for name in _dependency_names(route.dependant)
             if (m := _ROLE_DEP.match(name))]
    roles = ["viewer" if r == "user" else r for r in roles]
    return max(roles, key=ORDER.index) if roles else None


def _all_routes() -> list[tuple[str, Any]]:
    """(full path, route) of every route, included routers flattened."""
    from kvmops.services import hosts, sriov

    with tempfile.TemporaryDirectory(prefix="kvmops-matrix-") as work:
        app = create_app(ApiSettings(db_url=f"sqlite:///{Path(work)}/x.db", events=False))
        # The app is never started nor closed: forget its database, which goes with the
        # directory (later tests in this worker would find it as the server's).
        for service in (hosts, sriov):
            service.use_database(None)
    found: list[tuple[str, Any]] = []
    for route in app.routes:
        if hasattr(route, "effective_route_contexts"):  # an included router (FastAPI 0.16x)
            for context in route.effective_route_contexts():
                found.append((context.path or context.original_route.path,
                              context.original_route))
        elif hasattr(route, "path"):
            found.append((route.path, route))
    return found


ROUTES = _all_routes()


def route_table() -> list[tuple[str, str, str | None]]:
    table = []
    for path, route in ROUTES:
        if isinstance(route, APIRoute):
            for method in sorted(route.methods - {"HEAD"}):
                table.append((method, path, required_role(route)))
    return table


TABLE = route_table()


def _id(entry: tuple[str, str, str | None]) -> str:
    return f"{entry[0]} {entry[1]}"


def test_the_table_is_complete() -> None:
    paths = {path for _m, path, _r in TABLE}
    assert "/api/v1/vms" in paths and "/vms/{name}/backups" in paths and "/audit" in paths
    assert len(TABLE) > 70


@pytest.mark.parametrize("entry", TABLE, ids=_id)
def test_every_route_checks_a_role(entry: tuple[str, str, str | None]) -> None:
    method, path, role = entry
    assert role is not None or (method, path) in PUBLIC, \
        f"{method} {path} has no role check: add Viewer/Operator/Admin (or a page_* dependency)"


def _url(api: ApiServer, path: str) -> str:
    return api.url + re.sub(r"\{(\w+)\}", lambda m: PARAMS[m.group(1)], path)


def _call(api: ApiServer, method: str, path: str, role: str | None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {api.tokens[role]}"} if role else {}
    body = {} if method in ("POST", "PUT", "PATCH") else None
    return httpx.request(method, _url(api, path), json=body, headers=headers, timeout=60,
                         follow_redirects=False)


GUARDED = [e for e in TABLE if e[2] is not None]


@pytest.mark.parametrize("entry", GUARDED, ids=_id)
def test_no_credentials_is_refused(api: ApiServer, entry: tuple[str, str, str | None]) -> None:
    method, path, _role = entry
    response = _call(api, method, path, None)
    if path.startswith("/api/"):
        assert response.status_code == 401, response.text
    else:
        assert response.status_code in (303, 401), response.text
        if response.status_code == 303:
            assert response.headers["location"].startswith("/login")


@pytest.mark.parametrize("entry", [e for e in GUARDED if e[2] != "viewer"
                                   and e[1].startswith("/api/")], ids=_id)
def test_below_the_role_is_403(api: ApiServer, entry: tuple[str, str, str | None]) -> None:
    method, path, role = entry
    assert role is not None
    below = ORDER[ORDER.index(role) - 1]
    response = _call(api, method, path, below)
    assert response.status_code == 403, response.text


def test_websocket_routes_are_known() -> None:
    sockets = [path for path, route in ROUTES if isinstance(route, APIWebSocketRoute)]
    # The console bridges check the session, the Origin and the operator role themselves
    # (one _admit for both: tests/api/test_hardening.py, tests/integration/test_web_ui.py).
    assert sorted(sockets) == ["/ws/vms/{name}/serial", "/ws/vms/{name}/vnc"], sockets
