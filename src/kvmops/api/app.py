"""The app factory: ``create_app(settings) -> FastAPI``.

Start-up (lifespan): migrate the database, mark jobs a previous server left
queued/running as ``interrupted``, subscribe to libvirt life cycle events.
Shutdown: end event streams, cancel running jobs, close connections.

A web UI plugs in as the package ``kvmops.web``: when importable, its
``register(app)`` is called (or its ``router`` is included) after the API
routers; it can use :func:`kvmops.api.context.get_context`, the dependencies
in :mod:`kvmops.api.deps` and the session use cases in :mod:`kvmops.services.auth`.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from types import ModuleType

import anyio
from fastapi import APIRouter, FastAPI
from fastapi.responses import HTMLResponse

import kvmops
from kvmops.api import errors
from kvmops.api.audit import AuditMiddleware
from kvmops.api.context import ApiContext
from kvmops.api.guard import RequestGuard, SecurityHeaders
from kvmops.api.settings import ApiSettings
from kvmops.paths import policy
from kvmops.services import jobs as job_service
from kvmops.services import sampler
from kvmops.services import schedules as schedule_service

log = logging.getLogger("kvmops.api")
API_PREFIX = "/api/v1"


def optional_module(name: str) -> ModuleType | None:
    """Import ``name`` when it exists (other parts of kvmops land independently)."""
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as err:
        if err.name and (name == err.name or name.startswith(err.name + ".")):
            return None
        raise


def _startup(ctx: ApiContext) -> None:
    ctx.store.migrate()
    count = job_service.recover(ctx.store, shared=ctx.shared)
    if count:
        log.warning("%d job(s) of an earlier server run marked interrupted", count)
    ctx.start_scale_out()
    ctx.start_events()
    from kvmops.api.routes.instant import resume_at_startup  # recoveries left pulling

    resume_at_startup(ctx)


DOCS_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>kvmops API</title>
<link rel="stylesheet" href="/static/swagger/swagger-ui.css"></head>
<body><div id="swagger-ui"></div>
<script src="/static/swagger/swagger-ui-bundle.js"></script>
<script src="/static/docs.js"></script></body></html>
"""


def create_app(settings: ApiSettings | None = None) -> FastAPI:
    settings = settings or ApiSettings()
    policy()  # refuse an unsafe configuration (state directory reachable) at once
    ctx = ApiContext(settings)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        await anyio.to_thread.run_sync(_startup, ctx)
        # the live charts' sampler (KVMOPS_SAMPLE_INTERVAL, 0: off)
        live = sampler.start(settings.sample_interval)
        backup_scheduler = schedule_service.start_scheduler(ctx.store)  # KVMOPS_SCHEDULER=0
        try:
            yield
        finally:
            await anyio.to_thread.run_sync(schedule_service.stop_scheduler, backup_scheduler)
            if live is not None:
                await anyio.to_thread.run_sync(sampler.stop)
            await anyio.to_thread.run_sync(ctx.close)

    app = FastAPI(title="kvmops", version=kvmops.__version__, lifespan=lifespan,
                  docs_url=None, redoc_url=None, openapi_url="/openapi.json",
                  description="Operate KVM/QEMU VMs: life cycle, guest agent, monitor, "
                              "backups. Authenticate with `Authorization: Bearer TOKEN` "
                              "(`kvmops user token NAME`) or POST /api/v1/login.")
    app.state.kvmops = ctx
    errors.install(app)
    # Outermost last: headers on everything, the audit sees the guard's refusals too.
    app.add_middleware(RequestGuard, store=lambda: ctx.store, max_body=settings.max_body,
                       max_transfer=settings.max_transfer)
    app.add_middleware(AuditMiddleware, store=lambda: ctx.store)
    app.add_middleware(SecurityHeaders)
    from kvmops.api.routes.metrics import RequestLatency  # kvmops_api_request_duration_seconds

    app.add_middleware(RequestLatency)

    @app.get("/docs", include_in_schema=False, response_class=HTMLResponse)
    async def docs() -> HTMLResponse:
        """Swagger UI, served from this server (no CDN: it works offline, under the CSP)."""
        return HTMLResponse(DOCS_PAGE)

    from kvmops.api.routes import (
        backups,
        guest,
        images,
        jobs,
        monitor,
        networks,
        nics,
        sriov,
        system,
        vm_config,
        vms,
    )

    api = APIRouter(prefix=API_PREFIX)
    for module in (system, vms, vm_config, guest, monitor, backups, jobs, images, networks,
                   nics):
        api.include_router(module.router)
    api.include_router(sriov.router)
    api.include_router(importlib.import_module("kvmops.api.routes.instant").router)
    from kvmops.api.routes import samples  # the live charts' series

    api.include_router(samples.router)
    for extra, router_module in (("kvmops.vm.disks", "kvmops.api.routes.disks"),
                                 ("kvmops.snapshot", "kvmops.api.routes.snapshots")):
        if optional_module(extra) is not None:
            routes = optional_module(router_module)
            if routes is not None:
                api.include_router(routes.router)
    from kvmops.api.routes import pools  # storage pools and volumes

    api.include_router(pools.router)
    from kvmops.api.routes import bridges  # host bridges over an uplink (admin)

    api.include_router(bridges.router)
    from kvmops.api.routes import hosts  # the libvirt hosts this server manages

    api.include_router(hosts.router)
    from kvmops.api.routes import schedules as backup_schedules  # backup schedules

    api.include_router(backup_schedules.router)
    from kvmops.api.routes import migration  # vm migrate (a job) and its preflight

    api.include_router(migration.router)
    from kvmops.api.routes import bench  # guest bench (a job, history), disk iotune

    api.include_router(bench.router)
    from kvmops.api.routes import diagnostics  # vm nmi, reset, screenshot, dump (a job)

    api.include_router(diagnostics.router)
    from kvmops.api.routes import backup_files  # file-level restore: files, restore-file

    api.include_router(backup_files.router)
    from kvmops.api.routes import drills  # restore drills (a job) and their signed log

    api.include_router(drills.router)
    api.include_router(importlib.import_module("kvmops.api.routes.replication").router)
    app.include_router(api)
    from kvmops.api.routes import metrics  # GET /metrics (Prometheus, viewer)

    app.include_router(metrics.router)

    web = optional_module("kvmops.web")
    if web is not None:
        if hasattr(web, "register"):
            web.register(app)
        elif hasattr(web, "router"):
            app.include_router(web.router)
    return app
