"""Small JSON routes the pages need beyond the REST API (under /api/v1/ui, so the
API's authentication, CSRF check and audit log apply to them as well)."""

from __future__ import annotations

import anyio
from fastapi import APIRouter
from pydantic import BaseModel, Field

from kvmops.api.deps import HostDep, Operator, Viewer, VmNameDep
from kvmops.api.routes.common import Body, Message
from kvmops.services import web_views as views
from kvmops.web.keys import CTRL_ALT_DEL, MAX_TEXT, text_to_keys

router = APIRouter(prefix="/api/v1/ui", tags=["web ui"])


class SendTextBody(Body):
    text: str = Field(min_length=1, max_length=MAX_TEXT)


class SendKeysOut(BaseModel):
    message: str
    keys: int


@router.get("/vms/{name}/stats", response_model=views.Stats)
def stats(_: Viewer, name: VmNameDep, host: HostDep) -> views.Stats:
    """Cumulative counters (CPU time, disk and network bytes) and memory, with the
    server's time: a graph takes the difference of two samples."""
    return views.stats(host, name)


@router.get("/vms/{name}/guest", response_model=views.GuestDetails)
async def guest(_: Viewer, name: VmNameDep, host: HostDep) -> views.GuestDetails:
    """Guest IPs (agent, else DHCP lease, else ARP) and the OS the agent reports."""
    return await anyio.to_thread.run_sync(views.guest_details, host, name)


@router.post("/vms/{name}/send-text", response_model=SendKeysOut)
def send_text(_: Operator, name: VmNameDep, body: SendTextBody, host: HostDep) -> SendKeysOut:
    """Type ``text`` on the VM's keyboard (US layout) through libvirt's sendKey."""
    count = views.send_keys(host, name, text_to_keys(body.text))
    return SendKeysOut(message=f"typed {count} key(s) into VM '{name}'", keys=count)


@router.post("/vms/{name}/ctrl-alt-del", response_model=Message)
def ctrl_alt_del(_: Operator, name: VmNameDep, host: HostDep) -> Message:
    views.send_keys(host, name, [CTRL_ALT_DEL])
    return Message(message=f"sent Ctrl+Alt+Del to VM '{name}'")
