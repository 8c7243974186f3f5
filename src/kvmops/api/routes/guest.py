"""Guest agent operations (operator and up): exec, small file transfer as base64,
SSH keys, passwords, file-system freeze/thaw/status, info."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Literal

from fastapi import APIRouter, Query, Response
from pydantic import BaseModel, Field, field_validator

from kvmops.api.deps import Ctx, HostUri, LongRequest, Operator, VmNameDep
from kvmops.api.routes.common import Body, JobAccepted, Message, accepted
from kvmops.services.caller import Caller
from kvmops.services.guest import Guest, open_guest

router = APIRouter(prefix="/vms/{name}/guest", tags=["guest"], dependencies=[LongRequest])


@contextmanager
def _agent(uri: str | None, name: str) -> Iterator[Guest]:
    """The guest agent of VM ``name`` on the host ``?host=`` names (``uri``)."""
    # The request is audited by the middleware; the use case only needs the face.
    with open_guest(Caller(name="api", via="api"), name, uri=uri) as guest:
        yield guest


def _b64(value: str, field: str) -> bytes:
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"{field} is not valid base64") from None


class ExecBody(Body):
    argv: list[str] = Field(min_length=1, max_length=256)
    stdin_b64: str | None = None
    env: list[str] | None = None
    timeout: float = Field(default=60.0, gt=0, le=3600)
    background: bool = Field(default=False, description="run as a job (202 with a job id) "
                             "instead of holding the request until the command ends")

    @field_validator("argv")
    @classmethod
    def absolute_program(cls, argv: list[str]) -> list[str]:
        if not argv[0]:
            raise ValueError("argv[0] must name a program")
        if any("\x00" in a for a in argv):
            raise ValueError("arguments must not contain NUL")
        return argv

    @field_validator("stdin_b64")
    @classmethod
    def stdin_base64(cls, value: str | None) -> str | None:
        if value is not None:
            _b64(value, "stdin_b64")
        return value


class ExecOut(BaseModel):
    pid: int
    exit_code: int | None
    signal: int | None
    stdout_b64: str
    stderr_b64: str
    stdout: str
    stderr: str
    stdout_truncated: bool
    stderr_truncated: bool


class GuestPath(Body):
    path: str = Field(min_length=2, max_length=4096, pattern=r"^/[^\x00]*[^/]$")


class PushBody(GuestPath):
    content_b64: str
    mode: str | None = Field(default=None, pattern=r"^[0-7]{3,4}$")
    owner: str | None = Field(default=None, max_length=64)

    @field_validator("content_b64")
    @classmethod
    def content_base64(cls, value: str) -> str:
        _b64(value, "content_b64")
        return value


class PullOut(BaseModel):
    path: str
    size: int
    content_b64: str


class SshKeysBody(Body):
    user: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z_][A-Za-z0-9_.-]*\$?$")
    keys: list[str] = Field(min_length=1, max_length=100)


class PasswordBody(Body):
    user: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z_][A-Za-z0-9_.-]*\$?$")
    password: str = Field(min_length=1, max_length=1024)
    crypted: bool = False


class FreezeBody(Body):
    mountpoints: list[str] | None = None
    timeout: float = Field(default=60.0, gt=0, le=600)


@router.get("/ping", response_model=Message)
def ping(_: Operator, name: VmNameDep, uri: HostUri) -> Message:
    with _agent(uri, name) as ch:
        ch.ping()
    return Message(message=f"guest agent of VM '{name}' answers")


@router.get("/info")
def info(_: Operator, name: VmNameDep, uri: HostUri) -> dict[str, Any]:
    with _agent(uri, name) as ch:
        return {"agent": ch.info().model_dump(mode="json", by_alias=True),
                "os": ch.osinfo().model_dump(mode="json", by_alias=True),
                "hostname": ch.hostname()}


@router.get("/interfaces")
def interfaces(_: Operator, name: VmNameDep, uri: HostUri) -> list[dict[str, Any]]:
    with _agent(uri, name) as ch:
        return [i.model_dump(mode="json", by_alias=True) for i in ch.interfaces()]


@router.post("/exec", response_model=ExecOut | JobAccepted,
             responses={202: {"model": JobAccepted, "description": "background: a job"}})
def exec_(user: Operator, name: VmNameDep, body: ExecBody, ctx: Ctx, uri: HostUri,
          response: Response) -> ExecOut | JobAccepted:
    if body.background:
        return accepted(ctx.runner.submit("guest.exec", name, user.name,
                                          lambda _job: _run_exec(ctx, uri, name, body)), response)
    return _run_exec(ctx, uri, name, body)


def _run_exec(ctx: Any, uri: str | None, name: str, body: ExecBody) -> ExecOut:
    stdin = _b64(body.stdin_b64, "stdin_b64") if body.stdin_b64 else None
    with _agent(uri, name) as ch:
        res = ch.exec(body.argv, stdin=stdin, timeout=body.timeout, env=body.env)
    return ExecOut(pid=res.pid, exit_code=res.exit_code, signal=res.signal,
                   stdout_b64=base64.b64encode(res.stdout).decode(),
                   stderr_b64=base64.b64encode(res.stderr).decode(),
                   stdout=res.stdout.decode(errors="replace"),
                   stderr=res.stderr.decode(errors="replace"),
                   stdout_truncated=res.stdout_truncated, stderr_truncated=res.stderr_truncated)


@router.post("/push")
def push(_: Operator, name: VmNameDep, body: PushBody, ctx: Ctx, uri: HostUri) -> dict[str, Any]:
    data = _b64(body.content_b64, "content_b64")
    if len(data) > ctx.settings.max_transfer:
        from kvmops.errors import ValidationError

        raise ValidationError(f"content_b64: {len(data)} bytes is more than the "
                              f"{ctx.settings.max_transfer} bytes allowed through the API",
                              hint="use 'kvmops guest push' for big files")
    with _agent(uri, name) as ch:
        result = ch.write_bytes(data, body.path, mode=body.mode, owner=body.owner)
    return result.model_dump(mode="json")


@router.post("/pull", response_model=PullOut)
def pull(_: Operator, name: VmNameDep, body: GuestPath, ctx: Ctx, uri: HostUri) -> PullOut:
    with _agent(uri, name) as ch:
        data = ch.read_bytes(body.path, limit=ctx.settings.max_transfer)
    return PullOut(path=body.path, size=len(data), content_b64=base64.b64encode(data).decode())


@router.get("/ssh-keys")
def ssh_keys(_: Operator, name: VmNameDep, uri: HostUri,
             user: str = Query(min_length=1, max_length=64,
                               pattern=r"^[A-Za-z_][A-Za-z0-9_.-]*\$?$")) -> dict[str, Any]:
    with _agent(uri, name) as ch:
        return {"user": user, "keys": ch.ssh_key_list(user)}


@router.post("/ssh-keys")
def ssh_key_add(_: Operator, name: VmNameDep, body: SshKeysBody, uri: HostUri) -> dict[str, Any]:
    with _agent(uri, name) as ch:
        return {"user": body.user, "keys": ch.ssh_key_add(body.user, body.keys)}


@router.post("/ssh-keys/remove")
def ssh_key_remove(_: Operator, name: VmNameDep, body: SshKeysBody, uri: HostUri
                   ) -> dict[str, Any]:
    with _agent(uri, name) as ch:
        return {"user": body.user, "keys": ch.ssh_key_remove(body.user, body.keys)}


@router.post("/password", response_model=Message)
def password(_: Operator, name: VmNameDep, body: PasswordBody, uri: HostUri) -> Message:
    with _agent(uri, name) as ch:
        ch.set_password(body.user, body.password, crypted=body.crypted)
    return Message(message=f"password of '{body.user}' set in VM '{name}'")


@router.post("/fsfreeze")
def fsfreeze(_: Operator, name: VmNameDep, uri: HostUri, body: FreezeBody | None = None
             ) -> dict[str, Any]:
    body = body or FreezeBody()
    with _agent(uri, name) as ch:
        return {"frozen": ch.fsfreeze(body.mountpoints, timeout=body.timeout)}


@router.post("/fsthaw")
def fsthaw(_: Operator, name: VmNameDep, uri: HostUri) -> dict[str, Any]:
    with _agent(uri, name) as ch:
        return {"thawed": ch.fsthaw()}


@router.get("/fsfreeze")
def fsstatus(_: Operator, name: VmNameDep, uri: HostUri) -> dict[str, Literal["frozen", "thawed"]]:
    with _agent(uri, name) as ch:
        return {"status": ch.fsstatus()}
