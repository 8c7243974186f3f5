"""The server as an attacker on the network meets it: no proxy headers believed, bodies
refused before they are read, authentication before parsing, security headers on every
response, console sockets only from the server's own pages, no 5xx for bad input."""

from __future__ import annotations

import socket
from typing import Any

import httpx
import pytest

from tests.conftest import SESSION_PREFIX
from tests.integration.api_server import ApiServer


def raw_request(api: ApiServer, head: str, body: bytes = b"") -> str:
    """Send a hand-made request (headers, maybe part of a body); return the status line
    and headers of the answer, which must come without the rest of the body."""
    host, port = api.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as conn:
        conn.sendall(head.replace("\n", "\r\n").encode() + b"\r\n" + body)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = conn.recv(4096)
            if not chunk:
                break
            data += chunk
    return data.decode("latin-1")


def test_a_huge_body_is_refused_before_it_is_read(api: ApiServer) -> None:
    answer = raw_request(api, "POST /api/v1/vms HTTP/1.1\nHost: x\nContent-Type: "
                              "application/json\nContent-Length: 314572800\n")
    assert answer.startswith("HTTP/1.1 413"), answer
    token = api.tokens["operator"]
    answer = raw_request(api, f"POST /api/v1/vms HTTP/1.1\nHost: x\nAuthorization: Bearer "
                              f"{token}\nContent-Type: application/json\n"
                              f"Content-Length: 2000000\n")
    assert answer.startswith("HTTP/1.1 413"), answer


def test_authentication_comes_before_the_body(api: ApiServer) -> None:
    """No credentials: 401 at once, although the announced body never arrives."""
    answer = raw_request(api, "POST /api/v1/vms HTTP/1.1\nHost: x\nContent-Type: "
                              "application/json\nContent-Length: 1000\n", b"{")
    assert answer.startswith("HTTP/1.1 401"), answer
    answer = raw_request(api, "POST /api/v1/vms HTTP/1.1\nHost: x\nAuthorization: Bearer "
                              "kvmops_wrong\nContent-Length: 1000\n", b"{")
    assert answer.startswith("HTTP/1.1 401"), answer


def test_a_chunked_body_is_cut_off_at_the_limit(api: ApiServer) -> None:
    def chunks() -> Any:
        for _ in range(40):
            yield b"x" * 65536

    with api.client("operator") as client:
        response = client.post("/vms", content=chunks(),
                               headers={"Content-Type": "application/json"})
    assert response.status_code == 413, response.text


def test_forwarded_for_is_not_believed(api: ApiServer) -> None:
    """The log-in throttle counts the peer's address, whatever X-Forwarded-For claims."""
    user = f"{SESSION_PREFIX}xff"
    statuses = []
    for attempt in range(7):
        response = httpx.post(api.url + "/api/v1/login",
                              json={"username": user, "password": "wrong"},
                              headers={"X-Forwarded-For": f"203.0.113.{attempt}"}, timeout=30)
        statuses.append(response.status_code)
    assert statuses[:5] == [401] * 5 and statuses[5:] == [429, 429], statuses
    with api.client("admin") as admin:
        rows = admin.get("/audit", params={"user": user}).json()
    assert rows and {r["address"] for r in rows} == {"127.0.0.1"}


@pytest.mark.parametrize("path", ["/api/v1/health", "/docs", "/login", "/static/app.css",
                                  "/api/v1/nowhere", "/openapi.json", "/api/v1/vms"])
def test_security_headers_on_every_response(api: ApiServer, path: str) -> None:
    response = httpx.get(api.url + path, timeout=30)
    headers = response.headers
    assert "default-src 'self'" in headers["content-security-policy"]
    assert "frame-ancestors 'none'" in headers["content-security-policy"]
    assert headers["x-frame-options"] == "DENY"
    assert headers["x-content-type-options"] == "nosniff"


def test_docs_are_served_locally(api: ApiServer) -> None:
    page = httpx.get(api.url + "/docs", timeout=30)
    assert page.status_code == 200 and "cdn" not in page.text.lower()
    assert "<script>" not in page.text  # no inline script: the CSP forbids them
    for asset in ("/static/swagger/swagger-ui-bundle.js", "/static/swagger/swagger-ui.css",
                  "/static/docs.js"):
        assert httpx.get(api.url + asset, timeout=30).status_code == 200, asset


@pytest.mark.parametrize("path", ["/api/v1/vms/%ED%A0%80", "/api/v1/vms/%ED%A0%80/xml",
                                  "/api/v1/vms/a%00b", "/api/v1/jobs/%ED%A0%80"])
def test_undecodable_names_are_4xx(api: ApiServer, path: str) -> None:
    with api.client("viewer") as client:
        response = client.get(api.url + path)
    assert 400 <= response.status_code < 500, response.text


def _session_cookie(api: ApiServer) -> str:
    response = httpx.post(api.url + "/api/v1/login",
                          json={"username": "op", "password": "password-op"}, timeout=30)
    assert response.status_code == 200, response.text
    return str(response.cookies["kvmops_session"])


@pytest.mark.parametrize("origin", [None, "http://evil.example"])
def test_console_socket_without_our_origin_is_refused(api: ApiServer,
                                                      origin: str | None) -> None:
    from websockets.exceptions import ConnectionClosed
    from websockets.sync.client import connect

    url = api.url.replace("http://", "ws://") + f"/ws/vms/{SESSION_PREFIX}none/vnc"
    headers = {"Cookie": f"kvmops_session={_session_cookie(api)}"}
    with connect(url, additional_headers=headers, origin=origin,  # type: ignore[arg-type]
                 open_timeout=30) as ws, pytest.raises(ConnectionClosed) as closed:
        ws.recv(timeout=30)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 4403
    with api.client("admin") as admin:
        rows = admin.get("/audit", params={"user": "op", "limit": 20}).json()
    assert any(r["action"] == "console" and r["result"] == "denied" for r in rows)


def test_web_log_in_with_a_bad_form_token_is_audited(api: ApiServer) -> None:
    response = httpx.post(api.url + "/login", data={"username": "view", "password": "x",
                                                    "token": "forged"}, timeout=30)
    assert response.status_code == 403
    with api.client("admin") as admin:
        rows = admin.get("/audit", params={"user": "view", "limit": 20}).json()
    assert any(r["path"] == "/login" and r["status_code"] == 403 and r["result"] == "denied"
               for r in rows)


def test_web_log_in_and_log_out_are_audited_with_the_address(api: ApiServer) -> None:
    import re

    with httpx.Client(base_url=api.url, timeout=30, follow_redirects=False) as browser:
        form = browser.get("/login").text
        token = re.search(r'name="token" value="([^"]+)"', form)
        assert token is not None
        logged_in = browser.post("/login", data={"username": "view", "password": "password-view",
                                                 "token": token.group(1), "next": "/"})
        assert logged_in.status_code == 303, logged_in.text
        csrf = browser.cookies["kvmops_csrf"]
        assert browser.post("/logout", data={"csrf": csrf}).status_code == 303
    with api.client("admin") as admin:
        rows = admin.get("/audit", params={"user": "view", "limit": 50}).json()
    actions = {(r["action"], r["result"], r["address"]) for r in rows}
    assert ("login", "ok", "127.0.0.1") in actions and ("logout", "ok", "127.0.0.1") in actions
