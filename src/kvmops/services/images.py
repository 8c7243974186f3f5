"""Disk image use cases: inspect, create, check, convert, resize, rebase, commit and
internal snapshots -- every path through the path policy, every format named."""

from __future__ import annotations

from pathlib import Path

from kvmops.images import qemuimg
from kvmops.images.chain import UserImage, open_user_image
from kvmops.images.qemuimg import (
    CheckResult,
    ImageInfo,
    ProgressCallback,
    ResizeResult,
    SnapshotInfo,
)
from kvmops.images.qemuimg import SnapshotInfo as ImageSnapshot
from kvmops.paths import policy
from kvmops.services.audit import audited
from kvmops.services.caller import Caller
from kvmops.services.jobs import track

__all__ = ["CheckResult", "ImageInfo", "ImageSnapshot", "ProgressCallback", "ResizeResult",
           "SnapshotInfo", "UserImage"]  # the faces' models


def _open(caller: Caller, path: str | Path, fmt: str | None, *,
          force_share: bool = True) -> UserImage:
    return open_user_image(path, fmt, rules=policy(), trusted=caller.trusted_paths,
                           force_share=force_share)


def info(caller: Caller, path: str | Path, fmt: str | None = None, *,
         backing_chain: bool = False) -> ImageInfo:
    """Details of one image read as ``fmt`` (recorded or raw when not given)."""
    image = _open(caller, path, fmt)
    top = image.chain.top.info.model_copy(update={
        "format_source": image.format_source, "notes": list(image.notes)})
    if backing_chain:
        top.backing_chain = [link.info for link in image.chain.links[1:]]
    return top


@audited("image.create", target="path")
def create(caller: Caller, path: str | Path, size: str | int | None, fmt: str = "qcow2", *,
           backing: str | Path | None = None, backing_fmt: str | None = None) -> ImageInfo:
    target = policy().image_path(path, trusted=caller.trusted_paths)
    base: Path | None = None
    if backing is not None:
        image = _open(caller, backing, backing_fmt)
        base, backing_fmt = image.path, image.format
    return qemuimg.create(target, size, fmt, backing=base, backing_fmt=backing_fmt)


def check(caller: Caller, path: str | Path, fmt: str | None = None) -> CheckResult:
    image = _open(caller, path, fmt)
    return qemuimg.check(image.path, image.format)


def check_convert(caller: Caller, source: str | Path, destination: str | Path, *,
                  source_fmt: str | None = None) -> tuple[UserImage, Path]:
    """The checks of :func:`convert` alone (an API job makes them before it is queued)."""
    image = _open(caller, source, source_fmt)
    target = policy().image_path(destination, trusted=caller.trusted_paths,
                                 what="destination")
    return image, target


@audited("image.convert", target="destination")
def convert(caller: Caller, source: str | Path, destination: str | Path,
            out_fmt: str = "qcow2", *, source_fmt: str | None = None, compress: bool = False,
            overwrite: bool = False, progress: ProgressCallback | None = None) -> ImageInfo:
    image, target = check_convert(caller, source, destination, source_fmt=source_fmt)
    with track(caller, "image.convert", str(target)) as job:
        def report(pct: float) -> None:
            job.percent(pct)
            if progress is not None:
                progress(pct)

        result = qemuimg.convert(image.path, image.format, target, out_fmt,
                                 compress=compress, overwrite=overwrite, progress=report)
        job.result = result
    return result.model_copy(update={"notes": list(image.notes)})


@audited("image.resize", target="path")
def resize(caller: Caller, path: str | Path, size: str | int, fmt: str | None = None, *,
           shrink: bool = False) -> ResizeResult:
    image = _open(caller, path, fmt)
    return qemuimg.resize(image.path, image.format, size, shrink=shrink)


@audited("image.rebase", target="path")
def rebase(caller: Caller, path: str | Path, backing: str | Path | None,
           fmt: str | None = None, *, unsafe: bool = False,
           backing_fmt: str | None = None) -> ImageInfo:
    image = _open(caller, path, fmt)
    new_backing: Path | None = None
    if backing and not Path(backing).exists() and not unsafe:
        from kvmops.errors import NotFoundError

        raise NotFoundError(f"cannot rebase {image.path}: new backing file {backing} does not "
                            "exist", hint="check the path, or pass --unsafe to only rewrite "
                                          "the reference")
    if backing:
        if unsafe and not Path(backing).exists():
            new_backing = policy().image_path(backing, trusted=caller.trusted_paths,
                                              what="backing file")
        else:
            below = _open(caller, backing, backing_fmt)
            new_backing, backing_fmt = below.path, below.format
    return qemuimg.rebase(image.path, image.format, new_backing, unsafe=unsafe,
                          backing_fmt=backing_fmt)


@audited("image.commit", target="path")
def commit(caller: Caller, path: str | Path, fmt: str | None = None, *,
           base: str | Path | None = None) -> Path:
    image = _open(caller, path, fmt)
    members = {link.path for link in image.chain.links[1:]}
    target: Path | None = None
    if base is not None:
        target = policy().image_path(base, trusted=caller.trusted_paths, what="base")
        if target not in members:
            from kvmops.errors import ValidationError

            raise ValidationError(f"{base} is not in the backing chain of {image.path}")
    return qemuimg.commit(image.path, image.format, base=target)


def snapshot_list(caller: Caller, path: str | Path, fmt: str | None = None
                  ) -> list[ImageSnapshot]:
    image = _open(caller, path, fmt)
    return qemuimg.snapshot_list(image.path, image.format)


@audited("image.snapshot.create", target="path")
def snapshot_create(caller: Caller, path: str | Path, name: str, fmt: str | None = None
                    ) -> ImageSnapshot:
    image = _open(caller, path, fmt)
    return qemuimg.snapshot_create(image.path, name, image.format)


@audited("image.snapshot.apply", target="path")
def snapshot_apply(caller: Caller, path: str | Path, name: str, fmt: str | None = None
                   ) -> ImageSnapshot:
    image = _open(caller, path, fmt)
    return qemuimg.snapshot_apply(image.path, name, image.format)


@audited("image.snapshot.delete", target="path")
def snapshot_delete(caller: Caller, path: str | Path, name: str, fmt: str | None = None
                    ) -> ImageSnapshot:
    image = _open(caller, path, fmt)
    return qemuimg.snapshot_delete(image.path, name, image.format)
