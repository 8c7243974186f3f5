"""Disk images: info (viewer), create and check (operator), convert (job).

Paths go through the path policy (403 outside the allowed image directories);
an existing image is read as the ``format`` given, else the one kvmops recorded,
else raw -- never probed."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Query, Request, Response

from kvmops.api.deps import Ctx, OperatorCaller, ViewerCaller
from kvmops.api.routes.common import Body, JobAccepted, accepted
from kvmops.api.runner import JobContext, queued_kind
from kvmops.api.validators import AbsolutePath, ImageSize
from kvmops.errors import ValidationError
from kvmops.services import images
from kvmops.services.caller import Caller
from kvmops.services.images import CheckResult, ImageInfo

router = APIRouter(prefix="/images", tags=["images"])
Format = Literal["qcow2", "raw"]


class CreateImageBody(Body):
    path: AbsolutePath
    size: ImageSize | None = None
    format: Format = "qcow2"
    backing: AbsolutePath | None = None
    backing_format: Format | None = None


class ConvertBody(Body):
    source: AbsolutePath
    source_format: Format | None = None
    destination: AbsolutePath
    format: Format = "qcow2"
    compress: bool = False


class CheckBody(Body):
    path: AbsolutePath
    format: Format | None = None


@router.get("/info", response_model=ImageInfo)
def info(caller: ViewerCaller, path: str = Query(min_length=1, max_length=4096),
         format: Format | None = Query(None),
         backing_chain: bool = Query(False)) -> ImageInfo:
    return images.info(caller, path, format, backing_chain=backing_chain)


@router.post("", status_code=201, response_model=ImageInfo)
def create(caller: OperatorCaller, body: CreateImageBody, request: Request) -> ImageInfo:
    request.state.target = str(body.path)
    if body.size is None and body.backing is None:
        raise ValidationError("size: give a size (or a backing image for an overlay)")
    return images.create(caller, body.path, body.size, body.format, backing=body.backing,
                         backing_fmt=body.backing_format)


@router.post("/check", response_model=CheckResult)
def check(caller: OperatorCaller, body: CheckBody) -> CheckResult:
    return images.check(caller, body.path, body.format)


@router.post("/convert", status_code=202, response_model=JobAccepted)
def convert(caller: OperatorCaller, body: ConvertBody, ctx: Ctx, request: Request,
            response: Response) -> JobAccepted:
    request.state.target = str(body.destination)
    images.check_convert(caller, body.source, body.destination, source_fmt=body.source_format)
    return accepted(ctx.runner.enqueue("image.convert", str(body.destination), caller,
                                       body.model_dump(mode="json")), response)


@queued_kind("image.convert")
def run_convert(job: JobContext, caller: Caller, params: dict[str, Any]) -> ImageInfo:
    """A conversion, on whichever server claimed it (the paths pass its path policy)."""
    body = ConvertBody.model_validate(params)
    return images.convert(caller, body.source, body.destination, body.format,
                          source_fmt=body.source_format, compress=body.compress,
                          progress=job.percent)
