"""The consoles' WebSocket bridges, on the server's own origin and port:
``/ws/vms/{name}/serial`` (the serial console through libvirt) and
``/ws/vms/{name}/vnc``, described here. It opens a TCP connection to the VM's VNC port on 127.0.0.1
(from libvirt's live XML) and pipes bytes both ways, so no websockify port is
needed and the VNC port never leaves the loopback interface.

Without a valid log-in session (or below the operator role) the socket is
closed with code 4401 (4403) before any byte is relayed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import anyio
from fastapi import APIRouter, WebSocket
from starlette.websockets import WebSocketDisconnect, WebSocketState

from kvmops.api.deps import SESSION_COOKIE
from kvmops.errors import KvmopsError
from kvmops.services import audit, auth
from kvmops.services import web_views as views
from kvmops.services.auth import Principal
from kvmops.services.caller import Caller
from kvmops.services.consoles import open_serial
from kvmops.web.auth import context, same_origin, session_principal

log = logging.getLogger("kvmops.web")
router = APIRouter()
CLOSE_UNAUTHORIZED = 4401
CLOSE_FORBIDDEN = 4403
CLOSE_UNAVAILABLE = 4404
CHUNK = 64 * 1024


_HTTP_OF = {CLOSE_UNAUTHORIZED: 401, CLOSE_FORBIDDEN: 403, CLOSE_UNAVAILABLE: 404}


def _address(websocket: WebSocket) -> str | None:
    return websocket.client.host if websocket.client else None


async def _audit(websocket: WebSocket, user: str | None, name: str, status: int,
                 action: str = "console") -> None:
    ctx = context(websocket)
    with contextlib.suppress(KvmopsError):
        await anyio.to_thread.run_sync(lambda: audit.record_request(
            ctx.store, user=user, method="WS", path=websocket.url.path, action=action,
            target=name[:255], status_code=status, address=_address(websocket)))


async def _refuse(websocket: WebSocket, code: int, reason: str, user: str | None = None,
                  name: str = "") -> None:
    await _audit(websocket, user, name, _HTTP_OF.get(code, 400))
    await websocket.accept(_subprotocol(websocket))
    await websocket.close(code=code, reason=reason[:120])


def _subprotocol(websocket: WebSocket) -> str | None:
    offered = websocket.headers.get("sec-websocket-protocol", "")
    names = [p.strip() for p in offered.split(",") if p.strip()]
    return "binary" if "binary" in names else None


async def _admit(websocket: WebSocket, name: str) -> Principal | None:
    """The session's operator from this server's own page, else the socket is refused."""
    ctx = context(websocket)
    cookie = websocket.cookies.get(SESSION_COOKIE)
    principal = await anyio.to_thread.run_sync(session_principal, ctx, cookie)
    if principal is None:
        await _refuse(websocket, CLOSE_UNAUTHORIZED, "log in first", name=name)
        return None
    if not same_origin(websocket):
        await _refuse(websocket, CLOSE_FORBIDDEN, "the console opens only from this server's "
                      "own pages (Origin)", principal.name, name)
        return None
    if not auth.role_allows(principal.role, "operator"):
        await _refuse(websocket, CLOSE_FORBIDDEN, "the console needs the operator role",
                      principal.name, name)
        return None
    return principal


@router.websocket("/ws/vms/{name}/serial")
async def serial_bridge(websocket: WebSocket, name: str) -> None:
    """The serial console: what the guest prints goes out as binary frames, what the
    browser sends is typed on the console. The session takes the console over (a page
    reload must not find its own previous session in the way)."""
    principal = await _admit(websocket, name)
    if principal is None:
        return
    ctx = context(websocket)
    loop = asyncio.get_running_loop()
    incoming: asyncio.Queue[bytes | None] = asyncio.Queue()

    def on_data(data: bytes) -> None:  # the libvirt event loop thread
        loop.call_soon_threadsafe(incoming.put_nowait, data)

    def on_closed(_reason: str | None) -> None:
        loop.call_soon_threadsafe(incoming.put_nowait, None)

    caller = Caller(name=principal.name, role=principal.role, via="web",
                    address=_address(websocket))
    try:
        views.check_name(name)
        serial = await anyio.to_thread.run_sync(lambda: open_serial(
            caller, ctx.settings.uri, name, on_data, on_closed, force=True))
    except KvmopsError as err:
        await _refuse(websocket, CLOSE_UNAVAILABLE, str(err), principal.name, name)
        return
    await _audit(websocket, principal.name, name, 101, action="serial_console")
    await websocket.accept(_subprotocol(websocket))

    async def to_browser() -> None:
        while (data := await incoming.get()) is not None:
            await websocket.send_bytes(data)

    async def to_console() -> None:
        with contextlib.suppress(WebSocketDisconnect):
            while True:
                message = await websocket.receive()
                if message["type"] == "websocket.disconnect":
                    return
                data = message.get("bytes")
                if data is None and message.get("text") is not None:
                    data = message["text"].encode()
                if data:
                    await anyio.to_thread.run_sync(serial.send, data)

    tasks = [asyncio.create_task(to_browser()), asyncio.create_task(to_console())]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await anyio.to_thread.run_sync(serial.close)
        if websocket.application_state != WebSocketState.DISCONNECTED:
            with contextlib.suppress(Exception):
                await websocket.close()


@router.websocket("/ws/vms/{name}/vnc")
async def vnc_bridge(websocket: WebSocket, name: str) -> None:
    ctx = context(websocket)
    principal = await _admit(websocket, name)
    if principal is None:
        return
    try:
        port = await anyio.to_thread.run_sync(lambda: views.vnc_port(ctx.host(), name))
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except (KvmopsError, OSError) as err:
        await _refuse(websocket, CLOSE_UNAVAILABLE, str(err), principal.name, name)
        return
    await _audit(websocket, principal.name, name, 101)
    await websocket.accept(_subprotocol(websocket))
    try:
        await _pipe(websocket, reader, writer)
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()
        if websocket.application_state != WebSocketState.DISCONNECTED:
            with contextlib.suppress(Exception):
                await websocket.close()


async def _pipe(websocket: WebSocket, reader: asyncio.StreamReader,
                writer: asyncio.StreamWriter) -> None:
    async def to_vnc() -> None:
        with contextlib.suppress(WebSocketDisconnect):
            while True:
                message = await websocket.receive()
                if message["type"] == "websocket.disconnect":
                    return
                data = message.get("bytes")
                if data is None and message.get("text") is not None:
                    data = message["text"].encode("latin-1", "replace")
                if data:
                    writer.write(data)
                    await writer.drain()

    async def to_browser() -> None:
        while True:
            data = await reader.read(CHUNK)
            if not data:
                return
            await websocket.send_bytes(data)

    tasks = [asyncio.create_task(to_vnc()), asyncio.create_task(to_browser())]
    try:
        _done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in pending:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
    finally:
        for task in tasks:
            task.cancel()
