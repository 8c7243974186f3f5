"""QMP and HMP passthrough (admin only)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from pydantic import Field

from kvmops.api.deps import Admin, HostUri, LongRequest, VmNameDep
from kvmops.api.routes.common import Body

router = APIRouter(prefix="/vms/{name}", tags=["monitor"], dependencies=[LongRequest])


class QmpBody(Body):
    execute: str = Field(pattern=r"^[A-Za-z][A-Za-z0-9_-]*$", max_length=128)
    arguments: dict[str, Any] | None = None


class HmpBody(Body):
    command: str = Field(min_length=1, max_length=4096)


def _open(uri: str | None, name: str) -> Any:
    from kvmops.services.caller import Caller
    from kvmops.services.monitor import open_monitor

    # The request is audited by the middleware; the use case only needs the face.
    return open_monitor(Caller(name="api", via="api"), name, uri=uri)


@router.post("/qmp")
def qmp(_: Admin, name: VmNameDep, body: QmpBody, uri: HostUri) -> dict[str, Any]:
    with _open(uri, name) as mon:
        return {"return": mon.execute(body.execute, body.arguments)}


@router.post("/hmp")
def hmp(_: Admin, name: VmNameDep, body: HmpBody, uri: HostUri) -> dict[str, Any]:
    with _open(uri, name) as mon:
        return {"output": mon.hmp(body.command)}
