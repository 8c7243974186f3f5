"""Disk images: info (viewer), create and check (operator), convert (job)."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Query, Response

from kvmops.api.deps import Ctx, Operator, Viewer
from kvmops.api.routes.common import Body, JobAccepted, accepted
from kvmops.api.runner import JobContext
from kvmops.api.validators import AllowedPath, Size, check_path
from kvmops.errors import ValidationError
from kvmops.images import qemuimg
from kvmops.images.qemuimg import CheckResult, ImageInfo

router = APIRouter(prefix="/images", tags=["images"])


class CreateImageBody(Body):
    path: AllowedPath
    size: Size | None = None
    format: Literal["qcow2", "raw"] = "qcow2"
    backing: AllowedPath | None = None


class ConvertBody(Body):
    source: AllowedPath
    destination: AllowedPath
    format: Literal["qcow2", "raw"] = "qcow2"
    compress: bool = False


class CheckBody(Body):
    path: AllowedPath


def _path(text: str) -> str:
    try:
        return str(check_path(text))
    except ValueError as err:
        raise ValidationError(f"path: {err}") from None


@router.get("/info", response_model=ImageInfo)
def info(_: Viewer, path: str = Query(min_length=1, max_length=4096),
         backing_chain: bool = Query(False)) -> ImageInfo:
    return qemuimg.info(_path(path), backing_chain=backing_chain)


@router.post("", status_code=201, response_model=ImageInfo)
def create(_: Operator, body: CreateImageBody) -> ImageInfo:
    if body.size is None and body.backing is None:
        raise ValidationError("size: give a size (or a backing image for an overlay)")
    return qemuimg.create(body.path, body.size, body.format, backing=body.backing)


@router.post("/check", response_model=CheckResult)
def check(_: Operator, body: CheckBody) -> CheckResult:
    return qemuimg.check(body.path)


@router.post("/convert", status_code=202, response_model=JobAccepted)
def convert(user: Operator, body: ConvertBody, ctx: Ctx, response: Response) -> JobAccepted:
    def run(job: JobContext) -> ImageInfo:
        return qemuimg.convert(body.source, body.destination, body.format,
                               compress=body.compress, progress=job.percent)

    return accepted(ctx.runner.submit("image.convert", str(body.destination), user.name, run),
                    response)



