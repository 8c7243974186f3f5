"""Authentication and authorisation dependencies.

A request is authenticated by ``Authorization: Bearer TOKEN`` (an API token)
or by the session cookie set by ``POST /api/v1/login``. Cookie-authenticated
requests that change state must echo the session's CSRF token in the
``X-CSRF-Token`` header (the log-in response and the readable ``kvmops_csrf``
cookie carry it); bearer requests need no CSRF token. Roles: viewer (read),
operator (life cycle, guest ops, backups), admin (everything).
"""

from __future__ import annotations

import hmac
from collections.abc import Callable, Iterator
from typing import Annotated

from fastapi import Depends, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError

from kvmops.api.context import ApiContext, get_context
from kvmops.api.throttle import client_address
from kvmops.errors import KvmopsError
from kvmops.services import auth, fleet
from kvmops.services.auth import Principal, Role
from kvmops.services.caller import Caller
from kvmops.services.checks import validate_name
from kvmops.services.session import Connection

SESSION_COOKIE = "kvmops_session"
CSRF_COOKIE = "kvmops_csrf"
CSRF_HEADER = "X-CSRF-Token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})

Ctx = Annotated[ApiContext, Depends(get_context)]


def _unauthorized(message: str) -> HTTPException:
    return HTTPException(401, message, headers={"WWW-Authenticate": "Bearer"})


def authenticate(request: Request, ctx: Ctx) -> Principal:
    """The caller, or 401."""
    header = request.headers.get("authorization")
    principal: Principal | None = getattr(request.state, "principal", None)
    if principal is not None:
        pass  # authenticated by the request guard before the body was read
    elif header:
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise _unauthorized("malformed Authorization header; use 'Bearer TOKEN'")
        principal = auth.authenticate_token(ctx.store, token.strip())
        if principal is None:
            raise _unauthorized("invalid API token")
    else:
        cookie = request.cookies.get(SESSION_COOKIE)
        if not cookie:
            raise _unauthorized("authentication required: log in or send a Bearer token")
        principal = auth.authenticate_session(ctx.store, cookie)
        if principal is None:
            raise _unauthorized("session expired or invalid; log in again")
    if principal.via == "session" and request.method not in SAFE_METHODS:
        sent = request.headers.get(CSRF_HEADER, "")
        if not principal.csrf_token or not hmac.compare_digest(sent,
                                                               principal.csrf_token):
            request.state.user = principal.name
            raise HTTPException(403, f"missing or wrong {CSRF_HEADER} header")
    request.state.user = principal.name
    return principal


def require(role: Role) -> Callable[..., Principal]:
    def check(principal: Annotated[Principal, Depends(authenticate)]) -> Principal:
        if not auth.role_allows(principal.role, role):
            raise HTTPException(403, f"user '{principal.name}' ({principal.role}) may not do "
                                     f"this: it needs the {role} role")
        return principal

    check.__name__ = f"require_{role}"
    return check


Viewer = Annotated[Principal, Depends(require("viewer"))]
Operator = Annotated[Principal, Depends(require("operator"))]
Admin = Annotated[Principal, Depends(require("admin"))]


def caller_for(role: Role) -> Callable[..., Caller]:
    """A dependency giving the service layer's Caller, after the role check."""

    def dep(request: Request, principal: Principal) -> Caller:
        return Caller(name=principal.name, role=principal.role,
                      via="web" if principal.via == "session" else "api",
                      address=client_address(request), trusted_paths=False)

    # Real objects, not the strings of postponed annotations: FastAPI could not resolve
    # the closure's ``role`` from a string.
    dep.__annotations__ = {"request": Request,
                           "principal": Annotated[Principal, Depends(require(role))],
                           "return": Caller}
    dep.__name__ = f"caller_{role}"
    return dep


ViewerCaller = Annotated[Caller, Depends(caller_for("viewer"))]
OperatorCaller = Annotated[Caller, Depends(caller_for("operator"))]
AdminCaller = Annotated[Caller, Depends(caller_for("admin"))]


def long_request(ctx: Ctx, principal: Annotated[Principal, Depends(authenticate)]
                 ) -> Iterator[None]:
    """Hold one of the caller's long-request slots for the request (429 beyond)."""
    with ctx.long_requests.hold(principal.name):
        yield


LongRequest = Depends(long_request)


HOST_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"


def host_name(host: Annotated[str | None, Query(
        pattern=HOST_PATTERN, max_length=64,
        description="the host to act on (a name of GET /api/v1/hosts); default: the "
                    "local host")] = None) -> str | None:
    """The ``host`` query parameter (None: the local host)."""
    return host


HostName = Annotated[str | None, Depends(host_name)]


def host_dep(ctx: Ctx, name: HostName) -> Connection:
    """The connection to the host ``?host=`` names (the local one by default): 404 for
    an unknown host, 503 when it does not answer in time."""
    if fleet.is_local(name):
        return ctx.host()
    return fleet.connection(Caller(name="api", via="api"), name, ctx.store)


HostDep = Annotated[Connection, Depends(host_dep)]


def host_uri_dep(ctx: Ctx, name: HostName) -> str | None:
    """The libvirt URI of the host ``?host=`` names (the server's by default; 404 for an
    unknown host): for jobs and sessions that open a connection of their own."""
    if fleet.is_local(name):
        return ctx.settings.uri
    return fleet.uri_of(Caller(name="api", via="api"), name, ctx.store)


HostUri = Annotated[str | None, Depends(host_uri_dep)]


def vm_name(name: str) -> str:
    """The ``{name}`` path parameter, checked like every VM name (422 naming 'name')."""
    try:
        return validate_name(name)
    except KvmopsError as err:
        raise RequestValidationError([{"loc": ("path", "name"), "msg": str(err),
                                       "type": "value_error"}]) from None


VmNameDep = Annotated[str, Depends(vm_name)]
