"""The web UI: server-rendered pages (Jinja2 + a little plain JS) served by the
API's own FastAPI app, on the same origin and port, behind the same log-in
session. ``kvmops.api.app.create_app`` calls :func:`register`.

- pages (:mod:`kvmops.web.pages`): log-in, dashboard, VMs, VM detail, console,
  snapshots, backups, audit log, users; actions are ``fetch`` calls to the API
- ``/api/v1/ui/...`` (:mod:`kvmops.web.ui_api`): stats, guest IPs/OS, send-text
- ``/ws/vms/{name}/vnc`` and ``/serial`` (:mod:`kvmops.web.console`): the console bridges
- ``/static``: CSS/JS of the package, and noVNC (``@novnc/novnc`` installed by
  ``scripts/setup-host.sh`` into ``static/novnc``, or ``KVMOPS_NOVNC_DIR``)
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

STATIC_DIR = Path(__file__).resolve().parent / "static"


def novnc_dir() -> Path | None:
    """Where noVNC's ES modules are (a directory holding ``core/rfb.js``)."""
    candidates = [os.environ.get("KVMOPS_NOVNC_DIR"), str(STATIC_DIR / "novnc")]
    for candidate in candidates:
        if candidate and (Path(candidate) / "core" / "rfb.js").is_file():
            return Path(candidate)
    return None


def register(app: FastAPI) -> None:
    from kvmops.web import console, pages, ui_api
    from kvmops.web.recorder import EventRecorder

    recorder = EventRecorder()
    app.state.kvmops_web_events = recorder
    found = novnc_dir()
    app.state.kvmops_web_novnc = found
    app.state.kvmops_web_xterm = (STATIC_DIR / "xterm" / "xterm.js").is_file()
    app.include_router(ui_api.router)
    app.include_router(console.router)
    app.include_router(pages.router)
    if found is not None and found != STATIC_DIR / "novnc":
        app.mount("/static/novnc", StaticFiles(directory=found), name="novnc")
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    inner = app.router.lifespan_context

    @asynccontextmanager
    async def lifespan(a: FastAPI) -> AsyncIterator[Any]:
        async with inner(a) as state:
            recorder.start(app.state.kvmops.hub)
            try:
                yield state
            finally:
                await recorder.stop()

    app.router.lifespan_context = lifespan
