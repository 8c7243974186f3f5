"""What the web UI tests share: a ``kvmops serve`` with its own database and users, a
headless Chromium page that fails the test on a page error, and the log-in form."""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from tests.conftest import run_cli
from tests.integration.api_server import ApiServer, start_server

CHROMIUM = Path("/usr/bin/chromium")
LAPTOP = {"width": 1280, "height": 800}


@contextlib.contextmanager
def web_server(prefix: str, users: Sequence[tuple[str, str, str]], *args: str,
               extra_env: dict[str, str] | None = None) -> Iterator[ApiServer]:
    """A server on a fresh SQLite database with ``users`` (name, role, password); its log
    must hold no traceback when it stops."""
    workdir = Path(tempfile.mkdtemp(prefix=prefix))
    db = f"sqlite:///{workdir}/kvmops.sqlite"
    server = start_server(db, workdir, *args, extra_env=extra_env)
    try:
        for name, role, secret in users:
            added = run_cli("user", "add", name, "--role", role, "--password-stdin", "--db",
                            db, input=secret + "\n")
            assert added.code == 0, added.stderr
        yield server
    finally:
        server.stop()
        log = server.log.read_text()
        shutil.rmtree(workdir, ignore_errors=True)
        assert "Traceback" not in log, log


@contextlib.contextmanager
def chromium_page(viewport: dict[str, int] = LAPTOP) -> Iterator[Any]:
    """A page of a headless Chromium; a JavaScript error on it fails the test."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=str(CHROMIUM), headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update",
                  "--disable-sync"])
        context = browser.new_context(viewport=viewport)
        context.set_default_timeout(60_000)
        page = context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda err: errors.append(str(err)))
        try:
            yield page
        finally:
            context.close()
            browser.close()
        assert not errors, errors


def log_in(page: Any, url: str, name: str, password: str) -> None:
    page.goto(url + "/login")
    page.fill("input[name=username]", name)
    page.fill("input[name=password]", password)
    page.click("button[type=submit]")
    page.wait_for_url(url + "/")
