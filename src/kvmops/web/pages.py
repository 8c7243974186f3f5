"""The server-rendered pages. Reads go straight to the services; every state
change is a ``fetch`` from the page to the REST API (session cookie + CSRF
header), so it is checked, audited and job-tracked exactly like an API call."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Form, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.routing import APIRoute

from kvmops.api.deps import CSRF_COOKIE, HOST_PATTERN, SESSION_COOKIE
from kvmops.api.guard import CSP
from kvmops.api.throttle import LoginThrottled, attempt_login, client_address
from kvmops.config import settings
from kvmops.errors import KvmopsError
from kvmops.services import audit, auth, fleet, session
from kvmops.services import networks as net_service
from kvmops.services import users as user_service
from kvmops.services import vms as vm_service
from kvmops.services import web_views as views
from kvmops.services.auth import Principal
from kvmops.services.caller import Caller
from kvmops.web import templates
from kvmops.web.auth import (
    LOGIN_CSRF_COOKIE,
    LoginRequired,
    PageAdmin,
    PageError,
    PageOperator,
    PageUser,
    context,
    login_token_ok,
    login_url,
    new_login_token,
    safe_next,
    session_principal,
)

REPO_COOKIE = "kvmops_repo"
STATE_ORDER = ("running", "paused", "in shutdown", "shut off", "crashed", "pmsuspended",
               "idle", "no state")


class PageRoute(APIRoute):
    """Errors on a page become an HTML page (or the log-in redirect), never JSON."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def page_handler(request: Request) -> Response:
            try:
                return await handler(request)
            except LoginRequired as err:
                return RedirectResponse(login_url(err.next_url), status_code=303)
            except PageError as err:
                return templates.error(request, err.status, err.message)
            except KvmopsError as err:
                return templates.error(request, err.http_status, str(err))
            except RequestValidationError:
                return templates.error(request, 404, "no such page (invalid name in the URL)")

        return page_handler


router = APIRouter(route_class=PageRoute, include_in_schema=False)


def _vm(name: str) -> str:
    return views.check_name(name)


#: ``?host=NAME`` on a VM's pages: the host the VM is on (default: the local host).
HostParam = Query(None, pattern=HOST_PATTERN, max_length=64)


def _on_host(request: Request, user: Principal, host: str | None) -> session.Connection:
    """The connection to host ``host`` (the server's own for the local host): an
    unknown host is a 404 page, one that does not answer a 503 page."""
    ctx = context(request)
    return fleet.connection(_caller(request, user), host, ctx.store, local=ctx.host)


def _local_only(host: str | None, what: str) -> None:
    """Pages that reach a VM through this machine (its VNC or serial console) are for
    the local host's VMs only: a VM of the same name here is not the one asked for."""
    if not fleet.is_local(host):
        raise PageError(501, f"{what} of a VM on another host ('{host}') is not available "
                             "in the web UI; use 'virsh -c URI console' on that host")


def _remote(host: str | None) -> str | None:
    """The host name a VM page carries in its links and API calls (None: local)."""
    return None if fleet.is_local(host) else host


# ------------------------------------------------------------------ log-in
@router.get("/login", response_class=HTMLResponse)
def login_form(request: Request, next: str | None = Query(None, max_length=2048),
               error: str | None = None) -> Response:
    ctx = context(request)
    if session_principal(ctx, request.cookies.get(SESSION_COOKIE)) is not None:
        return RedirectResponse(safe_next(next), status_code=303)
    token = new_login_token()
    response = templates.render(request, "login.html", None, title="Log in",
                                next=safe_next(next), login_token=token, error=error)
    response.set_cookie(LOGIN_CSRF_COOKIE, token, max_age=3600, httponly=True,
                        samesite="strict", path="/login")
    return response


@router.post("/login", response_class=HTMLResponse)
def login(request: Request, username: str = Form("", max_length=64),
          password: str = Form("", max_length=1024), token: str = Form("", max_length=128),
          next: str = Form("/", max_length=2048)) -> Response:
    ctx = context(request)
    target = safe_next(next)
    request.state.user = username or None  # for the audit row the middleware writes
    if not login_token_ok(request.cookies.get(LOGIN_CSRF_COOKIE), token):
        return _login_again(request, target, "the log-in form expired; try again", 403)
    try:
        principal = attempt_login(ctx.store, ctx.login_throttle, username, password,
                                  client_address(request))
    except LoginThrottled as err:
        response = _login_again(request, target, str(err), 429)
        response.headers["Retry-After"] = str(err.retry_after)
        return response
    if principal is None:
        return _login_again(request, target, "invalid user name or password", 401)
    session, csrf = auth.start_session(ctx.store, principal, ctx.settings.session_ttl)
    response = RedirectResponse(target, status_code=303)
    secure = _secure(request)
    max_age = int(ctx.settings.session_ttl.total_seconds())
    response.set_cookie(SESSION_COOKIE, session, max_age=max_age, httponly=True,
                        samesite="strict", secure=secure, path="/")
    response.set_cookie(CSRF_COOKIE, csrf, max_age=max_age, httponly=False,
                        samesite="strict", secure=secure, path="/")
    response.delete_cookie(LOGIN_CSRF_COOKIE, path="/login")
    return response


def _login_again(request: Request, target: str, error: str, status: int) -> Response:
    token = new_login_token()
    response = templates.render(request, "login.html", None, title="Log in", next=target,
                                login_token=token, error=error, status_code=status)
    response.set_cookie(LOGIN_CSRF_COOKIE, token, max_age=3600, httponly=True,
                        samesite="strict", path="/login")
    return response


def _secure(request: Request) -> bool:
    configured = context(request).settings.secure_cookies
    if configured is not None:
        return configured
    return request.url.scheme == "https"  # a trusted proxy's X-Forwarded-Proto is in it


@router.post("/logout")
def logout(request: Request, user: PageUser, csrf: str = Form("", max_length=128)
           ) -> Response:
    ctx = context(request)
    if not user.csrf_token or not login_token_ok(user.csrf_token, csrf):
        raise PageError(403, "missing or wrong CSRF token; reload the page and try again")
    cookie = request.cookies.get(SESSION_COOKIE)
    if cookie:
        auth.end_session(ctx.store, cookie)
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path="/")
    response.delete_cookie(CSRF_COOKIE, path="/")
    return response


# ------------------------------------------------------------------ dashboard
def state_counts(states: list[str]) -> list[tuple[str, int]]:
    counts: dict[str, int] = {}
    for state in states:
        counts[state] = counts.get(state, 0) + 1
    known = [(s, counts.pop(s)) for s in STATE_ORDER if s in counts]
    return known + sorted(counts.items())


@router.get("/", response_class=HTMLResponse)
def dashboard(request: Request, user: PageUser) -> Response:
    ctx = context(request)
    host = ctx.host()
    info = views.host_summary(host)
    vms = ctx.vm_list.get(host)
    active = [j for state in ("running", "queued")
              for j in views.list_jobs(ctx.store, state=state, limit=50)]
    recent = views.list_jobs(ctx.store, limit=8)
    health = fleet.health_of_all(_caller(request, user), ctx.store)
    return templates.render(request, "dashboard.html", user, title="Dashboard", host=info,
                            counts=state_counts([vm.state for vm in vms]), total=len(vms),
                            jobs=active, recent=recent, hosts=health)


@router.get("/host", response_class=HTMLResponse)
def host_health(request: Request, user: PageUser) -> Response:
    report = views.doctor(context(request).host())
    return templates.render(request, "host.html", user, title="Host health", report=report)


# ------------------------------------------------------------------ VMs
@router.get("/vms", response_class=HTMLResponse)
def vm_list(request: Request, user: PageUser,
            host: str | None = Query(None, pattern=HOST_PATTERN, max_length=64)
            ) -> Response:
    """The VMs of every host (``?host=NAME``: of one), all hosts asked at once; a host
    that does not answer within the deadline is a banner row, the others are listed."""
    ctx = context(request)
    caller = _caller(request, user)
    chosen = None if host in (None, "", "all") else host
    found = fleet.list_all_vms(caller, db=ctx.store, only=None if chosen is None else [chosen],
                               local=lambda: ctx.vm_list.get(ctx.host()))
    return templates.render(request, "vms.html", user, title="Virtual machines",
                            vms=found.vms, unreachable=found.unreachable,
                            hosts=fleet.host_names(ctx.store), chosen=chosen or "all")


@router.get("/create", response_class=HTMLResponse)
def create_form(request: Request, user: PageOperator) -> Response:
    ctx = context(request)
    networks: list[str] = []
    with contextlib.suppress(Exception):
        networks = session.network_names(ctx.host())
    return templates.render(request, "create.html", user, title="Create a VM",
                            networks=networks, hosts=fleet.host_names(ctx.store),
                            allowed=views.image_dirs())


@router.get("/vms/{name}", response_class=HTMLResponse)
def vm_detail(request: Request, name: str, user: PageUser, host: str | None = HostParam
              ) -> Response:
    ctx = context(request)
    vm = views.vm_info(_on_host(request, user, host), name)
    recorder = request.app.state.kvmops_web_events
    jobs = views.list_jobs(ctx.store, target=vm.name, limit=10)
    return templates.render(request, "vm.html", user, title=vm.name, vm=vm,
                            events=recorder.recent(vm.name), jobs=jobs,
                            images_dirs=views.image_dirs(), vm_host=_remote(host))


@router.get("/vms/{name}/console", response_class=HTMLResponse)
def console(request: Request, name: str, user: PageOperator,
            host: str | None = HostParam) -> Response:
    _local_only(host, "the console")
    ctx = context(request)
    vm = views.vm_info(ctx.host(), name)
    return templates.render(request, "console.html", user, title=f"{vm.name} console", vm=vm,
                            novnc=request.app.state.kvmops_web_novnc is not None)


@router.get("/vms/{name}/serial", response_class=HTMLResponse)
def serial(request: Request, name: str, user: PageOperator,
           host: str | None = HostParam) -> Response:
    _local_only(host, "the serial console")
    ctx = context(request)
    vm = views.vm_info(ctx.host(), name)
    response = templates.render(request, "serial.html", user, title=f"{vm.name} serial console",
                                vm=vm, xterm=request.app.state.kvmops_web_xterm)
    # xterm.js writes its own <style> elements: this page alone allows inline styles
    # (never inline scripts).
    response.headers["Content-Security-Policy"] = CSP.replace(
        "style-src 'self'", "style-src 'self' 'unsafe-inline'")
    return response


@router.get("/vms/{name}/xml", response_class=HTMLResponse)
def vm_xml(request: Request, name: str, user: PageUser,
           inactive: bool = Query(False), host: str | None = HostParam) -> Response:
    """The domain XML as ``kvmops vm dumpxml`` (``--inactive``: the definition)."""
    conn = _on_host(request, user, host)
    vm = views.vm_info(conn, name)
    xml = vm_service.dumpxml(_caller(request, user), conn, vm.name, inactive=inactive)
    return templates.render(request, "xml.html", user, title=f"{vm.name} XML", vm=vm,
                            xml=xml, inactive=inactive, vm_host=_remote(host))


@router.get("/vms/{name}/guest", response_class=HTMLResponse)
def guest_page(request: Request, name: str, user: PageOperator,
               host: str | None = HostParam) -> Response:
    """Guest agent actions: run a command, freeze and thaw file systems."""
    vm = views.vm_info(_on_host(request, user, host), name)
    return templates.render(request, "guest.html", user, title=f"{vm.name} guest", vm=vm,
                            vm_host=_remote(host))


@router.get("/vms/{name}/snapshots", response_class=HTMLResponse)
def snapshots(request: Request, name: str, user: PageUser, host: str | None = HostParam
              ) -> Response:
    conn = _on_host(request, user, host)
    vm = views.vm_info(conn, name)
    items = views.snapshot_tree(conn, vm.name)
    return templates.render(request, "snapshots.html", user, title=f"{vm.name} snapshots",
                            vm=vm, tree=items, vm_host=_remote(host))


# ------------------------------------------------------------------ backups
def _repo_choice(request: Request, repo: str | None) -> str:
    return (repo or request.cookies.get(REPO_COOKIE) or os.environ.get("KVMOPS_WEB_REPO")
            or str(settings().backup_dir))


def _caller(request: Request, user: Principal) -> Caller:
    return Caller(name=user.name, role=user.role, via="web",
                  address=client_address(request))


@router.get("/vms/{name}/backups", response_class=HTMLResponse)
def backups(request: Request, name: str, user: PageUser,
            repo: str | None = Query(None, max_length=4096),
            host: str | None = HostParam) -> Response:
    vm = views.vm_info(_on_host(request, user, host), name)
    chosen = _repo_choice(request, repo)
    found = views.backup_points(_caller(request, user), chosen, vm.name)
    response = templates.render(request, "backups.html", user, title=f"{vm.name} backups",
                                vm=vm, repo=chosen, problem=found.problem,
                                timeline=found.timeline, points=found.points,
                                repo_info=found.repo_info, vm_host=_remote(host))
    if repo:
        response.set_cookie(REPO_COOKIE, repo, max_age=365 * 86400, httponly=True,
                            samesite="strict", path="/")
    return response


@router.get("/vms/{name}/backups/fragment", response_class=HTMLResponse)
def backups_fragment(request: Request, name: str, user: PageUser,
                     repo: str = Query(max_length=4096)) -> Response:
    vm_name = _vm(name)
    found = views.backup_points(_caller(request, user), repo, vm_name)
    return templates.render(request, "_backup_points.html", user, vm_name=vm_name, repo=repo,
                            problem=found.problem, timeline=found.timeline,
                            points=found.points)


# ------------------------------------------------------------------ images
@router.get("/images", response_class=HTMLResponse)
def images_page(request: Request, user: PageUser) -> Response:
    """Disk images as ``kvmops image``: inspect, check, create, convert."""
    return templates.render(request, "images.html", user, title="Disk images",
                            dirs=views.image_dirs(), files=views.image_files())


# ------------------------------------------------------------------ storage pools
@router.get("/pools", response_class=HTMLResponse)
def pools_page(request: Request, user: PageUser) -> Response:
    """Storage pools with their volumes, as ``kvmops pool list``/``volume list``;
    operators get start/stop/refresh and the volume forms, admins the pool create and
    delete controls (calls to /api/v1/pools)."""
    from kvmops.services import pools as pool_service

    ctx = context(request)
    caller = _caller(request, user)
    pools = pool_service.list_pools(caller, ctx.host())
    volumes = {p.name: pool_service.list_volumes(caller, ctx.host(), p.name)
               for p in pools if p.active}
    return templates.render(request, "pools.html", user, title="Storage pools", pools=pools,
                            volumes=volumes, types=pool_service.POOL_TYPES,
                            tested=pool_service.TESTED_TYPES,
                            formats=pool_service.VOLUME_FORMATS)


# ------------------------------------------------------------------ networks
@router.get("/networks", response_class=HTMLResponse)
def networks_page(request: Request, user: PageUser) -> Response:
    """libvirt networks as ``kvmops net list`` with the VMs using each; operators get
    the create form and the start/stop/autostart/delete buttons (calls to
    /api/v1/networks)."""
    ctx = context(request)
    nets = net_service.list_with_users(_caller(request, user), ctx.host())
    return templates.render(request, "networks.html", user, title="Networks", networks=nets,
                            modes=net_service.MODES, ipv6_modes=net_service.IPV6_MODES)


@router.get("/networks/{name}", response_class=HTMLResponse)
def network_detail(request: Request, name: str, user: PageUser) -> Response:
    """One network as ``kvmops net info``, with its DHCP leases when active."""
    ctx = context(request)
    host = ctx.host()
    caller = _caller(request, user)
    net = net_service.info(caller, host, views.check_network_name(name))
    leases = net_service.leases(caller, host, net.name) if net.active else []
    expires = {lease.ip: datetime.fromtimestamp(lease.expires, UTC) if lease.expires > 0
               else None for lease in leases}  # 0: no expiry time (shown as a dash)
    return templates.render(request, "networks_detail.html", user, title=net.name, net=net,
                            leases=leases, expires=expires)


# ------------------------------------------------------------------ SR-IOV
@router.get("/sriov", response_class=HTMLResponse)
def sriov_page(request: Request, user: PageUser) -> Response:
    """VF pools with their VM <-> VF mapping and the PFs, as ``kvmops sriov``; admins get
    the create/delete and VF count controls (calls to /api/v1/sriov)."""
    from kvmops.services import sriov  # the SR-IOV model: only for this page

    store = context(request).store
    caller = _caller(request, user)
    root, simulated = sriov.sysfs_source()
    return templates.render(request, "sriov.html", user, title="SR-IOV",
                            pools=sriov.list_pools(caller, store),
                            pfs=sriov.list_pfs(caller, store), root=root, simulated=simulated)


# ------------------------------------------------------------------ hosts
@router.get("/hosts", response_class=HTMLResponse)
def hosts_page(request: Request, user: PageUser) -> Response:
    """Every host with whether it answered in time, as ``kvmops host list``; admins get
    the add/remove controls (calls to /api/v1/hosts)."""
    from kvmops.services import hosts  # the hosts model: only for this page

    found = hosts.list_hosts(_caller(request, user), context(request).store)
    return templates.render(request, "hosts.html", user, title="Hosts", hosts=found,
                            deadline=hosts.DEFAULT_DEADLINE_S)


@router.get("/hosts/{name}", response_class=HTMLResponse)
def host_page(request: Request, name: str, user: PageUser) -> Response:
    """One host: its health as ``kvmops host info`` and its VMs (asked at once, each
    under its deadline: an unreachable host shows why, with no VM list)."""
    from kvmops.services import hosts

    ctx = context(request)
    caller = _caller(request, user)
    hosts.validate_name(name)
    hosts.uri_of(caller, name, ctx.store)  # an unknown host: 404
    jobs: dict[str, Any] = {
        "health": lambda: hosts.host_info(caller, name, ctx.store,
                                          deadline=fleet.LIST_DEADLINE_S),
        "vms": lambda: fleet.list_all_vms(caller, db=ctx.store, only=[name],
                                          local=lambda: ctx.vm_list.get(ctx.host())),
    }
    got = hosts.gather(jobs, fleet.LIST_DEADLINE_S + 0.5)
    health = got["health"].value or hosts.HostHealth(
        name=name, uri=hosts.uri_of(caller, name, ctx.store), local=name == hosts.LOCAL,
        reachable=False, error=got["health"].error)
    listed = got["vms"].value
    return templates.render(request, "host_page.html", user, title=f"Host {name}",
                            h=health, vms=listed.vms if listed else [],
                            unreachable=listed.unreachable if listed else [],
                            vms_error=got["vms"].error, doctor=views.last_doctor(name))


# ------------------------------------------------------------------ jobs
JOB_STATES = ("queued", "running", "succeeded", "failed", "cancelled", "interrupted")


@router.get("/jobs", response_class=HTMLResponse)
def jobs_page(request: Request, user: PageUser,
              state: str | None = Query(None, max_length=16),
              target: str | None = Query(None, max_length=255),
              limit: int = Query(100, ge=1, le=1000)) -> Response:
    """Every job, whoever started it (web, API, CLI): the store behind /api/v1/jobs."""
    ctx = context(request)
    chosen = state if state in JOB_STATES else None
    jobs = views.list_jobs(ctx.store, state=chosen, target=target or None, limit=limit)
    return templates.render(request, "jobs.html", user, title="Jobs", jobs=jobs,
                            states=JOB_STATES, state=chosen or "", target=target or "",
                            limit=limit)


# ------------------------------------------------------------------ account
@router.get("/account", response_class=HTMLResponse)
def account(request: Request, user: PageUser) -> Response:
    """The logged-in user: role, and a form to change their own password."""
    return templates.render(request, "account.html", user, title="Your account")


# ------------------------------------------------------------------ admin
@router.get("/audit", response_class=HTMLResponse)
def audit_log(request: Request, user: PageAdmin,
              who: str | None = Query(None, max_length=64),
              limit: int = Query(200, ge=1, le=1000)) -> Response:
    ctx = context(request)
    entries = audit.entries(ctx.store, user=who or None, limit=limit)
    return templates.render(request, "audit.html", user, title="Audit log", entries=entries,
                            who=who or "", limit=limit)


@router.get("/users", response_class=HTMLResponse)
def users_page(request: Request, user: PageAdmin) -> Response:
    ctx = context(request)
    return templates.render(request, "users.html", user, title="Users",
                            users=user_service.list_users(_caller(request, user), ctx.store))




__all__ = ["router"]
