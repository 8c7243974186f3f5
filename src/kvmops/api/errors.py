"""One mapping from errors to responses: ``{"error": message, "kind": ClassName}``."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from kvmops.errors import KvmopsError

log = logging.getLogger("kvmops.api")

_KINDS = {400: "BadRequest", 401: "Unauthorized", 403: "Forbidden", 404: "NotFound",
          405: "MethodNotAllowed", 409: "Conflict", 413: "TooLarge", 422: "ValidationError",
          429: "TooManyRequests"}


def error_body(message: str, kind: str, **extra: Any) -> dict[str, Any]:
    return {"error": message, "kind": kind, **extra}


def _field(loc: tuple[Any, ...] | list[Any]) -> str:
    parts = [str(p) for p in loc]
    if parts and parts[0] in ("body", "query", "path", "header", "cookie"):
        parts = parts[1:]
    return ".".join(parts) or "request"


def validation_message(errors: list[Any]) -> tuple[str, list[dict[str, Any]]]:
    details = []
    for err in errors:
        msg = str(err.get("msg", "invalid"))
        if msg.startswith("Value error, "):
            msg = msg[len("Value error, "):]
        details.append({"field": _field(err.get("loc", ())), "message": msg})
    text = "; ".join(f"{d['field']}: {d['message']}" for d in details) or "invalid request"
    return text, details


def install(app: FastAPI) -> None:
    @app.exception_handler(KvmopsError)
    async def kvmops_error(_request: Request, exc: KvmopsError) -> JSONResponse:
        headers = {"Retry-After": "2"} if exc.http_status == 429 else None
        return JSONResponse(error_body(str(exc), type(exc).__name__),
                            status_code=exc.http_status, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        text, details = validation_message(list(exc.errors()))
        return JSONResponse(error_body(text, "ValidationError", fields=details),
                            status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = _KINDS.get(exc.status_code, "HTTPError")
        return JSONResponse(error_body(str(exc.detail), kind), status_code=exc.status_code,
                            headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.error("internal error on %s %s: %s: %s", request.method, request.url.path,
                  type(exc).__name__, exc)
        return JSONResponse(error_body("internal server error; see the server log",
                                       "InternalError"), status_code=500)
