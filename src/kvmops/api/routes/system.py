"""Health, host, log-in/out, the current user, users and tokens, audit log."""

from __future__ import annotations

import secrets
from typing import Any, Literal

from fastapi import APIRouter, HTTPException, Query, Request, Response
from pydantic import BaseModel, Field

import kvmops
from kvmops.api.deps import (
    CSRF_COOKIE,
    SESSION_COOKIE,
    Admin,
    AdminCaller,
    Ctx,
    HostDep,
    Viewer,
    ViewerCaller,
)
from kvmops.api.routes.common import Body, Message
from kvmops.api.throttle import LoginThrottled, attempt_login, client_address
from kvmops.services import audit, auth
from kvmops.services import host as host_service
from kvmops.services import users as user_service
from kvmops.services.audit import AuditView
from kvmops.services.host import DoctorReport, HostInfo

router = APIRouter(tags=["system"])


class Health(BaseModel):
    status: Literal["ok"]
    version: str


class LoginBody(Body):
    username: str = Field(min_length=1, max_length=64)
    password: str = Field(min_length=1, max_length=1024)


class Me(BaseModel):
    name: str
    role: str
    via: str
    csrf_token: str | None = None


class UserOut(BaseModel):
    name: str
    role: str
    created_at: Any
    tokens: int


class NewUserBody(Body):
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")
    role: Literal["admin", "operator", "viewer"]
    password: str | None = Field(default=None, min_length=auth.MIN_PASSWORD, max_length=1024)


class PasswordBody(Body):
    old_password: str = Field(min_length=1, max_length=1024)
    new_password: str = Field(min_length=auth.MIN_PASSWORD, max_length=1024)


class TokenOut(BaseModel):
    name: str
    token: str


@router.get("/health", response_model=Health)
async def health() -> Health:
    """Open to all; answered on the event loop, so busy worker threads never delay it."""
    return Health(status="ok", version=kvmops.__version__)


@router.get("/host", response_model=HostInfo)
def host(caller: ViewerCaller, host: HostDep) -> HostInfo:
    return host_service.info(caller, host)


@router.get("/host/doctor", response_model=DoctorReport)
def host_doctor(caller: ViewerCaller, host: HostDep) -> DoctorReport:
    """The host checks of ``kvmops host doctor`` (200 also when checks fail: see ``ok``);
    the probe guests' checks are the last run's (``POST /api/v1/hosts/local/doctor``
    starts them)."""
    return host_service.doctor(caller, host=host, host_name="local", probes=False)


def _secure(request: Request, ctx: Ctx) -> bool:
    if ctx.settings.secure_cookies is not None:
        return ctx.settings.secure_cookies
    # A trusted proxy's X-Forwarded-Proto is already in the scheme (--forwarded-allow-ips).
    return request.url.scheme == "https"


@router.post("/login", response_model=Me)
def login(body: LoginBody, request: Request, response: Response, ctx: Ctx) -> Me:
    request.state.user = body.username
    try:
        principal = attempt_login(ctx.store, ctx.login_throttle, body.username, body.password,
                                  client_address(request))
    except LoginThrottled as err:
        raise HTTPException(429, str(err), headers={"Retry-After": str(err.retry_after)}
                            ) from err
    if principal is None:
        raise HTTPException(401, "invalid user name or password")
    token, csrf = auth.start_session(ctx.store, principal, ctx.settings.session_ttl)
    secure = _secure(request, ctx)
    max_age = int(ctx.settings.session_ttl.total_seconds())
    response.set_cookie(SESSION_COOKIE, token, max_age=max_age, httponly=True,
                        samesite="strict", secure=secure, path="/")
    response.set_cookie(CSRF_COOKIE, csrf, max_age=max_age, httponly=False,
                        samesite="strict", secure=secure, path="/")
    return Me(name=principal.name, role=principal.role, via="session", csrf_token=csrf)


@router.post("/logout", response_model=Message)
def logout(request: Request, response: Response, ctx: Ctx, _: Viewer) -> Message:
    cookie = request.cookies.get(SESSION_COOKIE)
    if cookie:
        auth.end_session(ctx.store, cookie)
    response.delete_cookie(SESSION_COOKIE, path="/")
    response.delete_cookie(CSRF_COOKIE, path="/")
    return Message(message="logged out")


@router.get("/me", response_model=Me)
def me(principal: Viewer) -> Me:
    return Me(name=principal.name, role=principal.role, via=principal.via,
              csrf_token=principal.csrf_token)


@router.post("/me/password", response_model=Message)
def change_password(principal: Viewer, body: PasswordBody, ctx: Ctx) -> Message:
    if not auth.change_password(ctx.store, principal.name, body.old_password,
                                body.new_password):
        raise HTTPException(403, "the old password is wrong")
    return Message(message="password changed; log in again")


@router.get("/users", response_model=list[UserOut])
def list_users(caller: AdminCaller, ctx: Ctx) -> list[UserOut]:
    return [UserOut(name=u.name, role=u.role, created_at=u.created_at, tokens=u.tokens)
            for u in user_service.list_users(caller, ctx.store)]


@router.post("/users", status_code=201, response_model=UserOut)
def add_user(caller: AdminCaller, body: NewUserBody, ctx: Ctx) -> UserOut:
    password = body.password or secrets.token_urlsafe(12)
    u = user_service.add(caller, ctx.store, body.name, body.role, password)
    return UserOut(name=u.name, role=u.role, created_at=u.created_at, tokens=u.tokens)


@router.delete("/users/{user}", response_model=Message)
def delete_user(caller: AdminCaller, user: str, ctx: Ctx) -> Message:
    if user == caller.name:
        raise HTTPException(409, "you cannot delete yourself")
    user_service.delete(caller, ctx.store, user)
    return Message(message=f"user '{user}' deleted")


@router.post("/users/{user}/tokens", status_code=201, response_model=TokenOut)
def new_token(caller: AdminCaller, user: str, ctx: Ctx) -> TokenOut:
    """A new API token (shown once; only its hash is stored)."""
    return TokenOut(name=user, token=user_service.new_token(caller, ctx.store, user))


@router.get("/audit", response_model=list[AuditView])
def audit_log(_: Admin, ctx: Ctx, user: str | None = Query(None, max_length=64),
              limit: int = Query(100, ge=1, le=1000)) -> list[AuditView]:
    return audit.entries(ctx.store, user=user, limit=limit)
