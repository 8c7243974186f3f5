"""Password guessing is slowed: a real server with a low log-in limit."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.integration.api_server import ApiServer, add_users, start_server

LIMIT = 3


@pytest.fixture(scope="module")
def strict_api(workdir: Path) -> Iterator[ApiServer]:
    server = start_server(f"sqlite:///{workdir / 'throttle.db'}", workdir,
                          "--login-attempts", str(LIMIT), "--login-window", "300")
    try:
        add_users(server)
        yield server
    finally:
        server.stop()


def _web_login(server: ApiServer, username: str, password: str) -> httpx.Response:
    with httpx.Client(base_url=server.url, timeout=30) as web:
        form = web.get("/login")
        token = re.search(r'name="token" value="([^"]+)"', form.text)
        assert token, form.text
        return web.post("/login", data={"username": username, "password": password,
                                         "token": token.group(1), "next": "/"})


def test_failed_logins_are_throttled_per_user_and_address(strict_api: ApiServer) -> None:
    assert strict_api.admin_password
    with strict_api.client() as client:
        for _ in range(LIMIT):
            bad = client.post("/login", json={"username": "admin", "password": "guess-guess"})
            assert bad.status_code == 401
        # the limit is reached: even the right password is refused, with a time to wait
        refused = client.post("/login", json={"username": "admin",
                                              "password": strict_api.admin_password})
        assert refused.status_code == 429
        assert refused.json()["kind"] == "TooManyRequests"
        assert "too many failed log-ins" in refused.json()["error"]
        assert 1 <= int(refused.headers["Retry-After"]) <= 300
        # another user from the same address is not locked out
        other = client.post("/login", json={"username": "op", "password": "password-op"})
        assert other.status_code == 200
        # API tokens are not affected
    with strict_api.client("admin") as admin:
        assert admin.get("/me").status_code == 200
        audit = admin.get("/audit", params={"limit": 50}).json()
    statuses = [entry["status_code"] for entry in audit if entry["path"].endswith("/login")]
    assert 429 in statuses and statuses.count(401) >= LIMIT
    # the web form shares the throttle and says why
    page = _web_login(strict_api, "admin", strict_api.admin_password)
    assert page.status_code == 429
    assert "too many failed log-ins" in page.text and "Retry-After" in page.headers
    assert _web_login(strict_api, "view", "password-view").status_code == 303
