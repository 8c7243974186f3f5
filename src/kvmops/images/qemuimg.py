"""Disk images through ``qemu-img``: create, inspect, check, convert, resize,
rebase, commit and internal qcow2 snapshots.

Every ``qemu-img`` invocation goes through :func:`run_qemu_img`, and every
failure of it through :func:`translate_error`, so qemu-img's own message
reaches the user as one line inside the matching :mod:`kvmops.errors` class.

Paths are made absolute before they are handed to qemu-img (a name starting
with ``-`` cannot be taken for an option, and backing file references are
recorded as absolute paths rather than relative to the overlay's directory).

Every function takes the image's format and passes it to qemu-img (``-f``,
``-F``, ``--image-opts``): qemu-img never probes a format here, because a raw
image's content is the guest's, and a guest-written qcow2 header would
otherwise name any host file as its backing or data file. Callers that open an
image whose chain they did not build check it first with
:func:`kvmops.images.chain.inspect`.
"""

from __future__ import annotations

import codecs
import contextlib
import json
import os
import re
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

from kvmops.errors import (
    AlreadyExistsError,
    KvmopsError,
    NotFoundError,
    StateError,
    StorageError,
    UnsupportedError,
    ValidationError,
)
from kvmops.images import records
from kvmops.images.usage import vms_using
from kvmops.sizes import format_size, parse_size

QEMU_IMG = "qemu-img"
PREALLOCATION_MODES = ("off", "metadata", "falloc", "full")
MAX_IMAGE_SIZE = 2 * 1024**5  # 2 PiB: the most a qcow2 image with 64 KiB clusters holds

PathLike = str | os.PathLike[str]
ProgressCallback = Callable[[float], None]

# --------------------------------------------------------------------------
# Result models


class SnapshotInfo(BaseModel):
    """One internal snapshot of a qcow2 image."""

    id: str
    name: str
    vm_state_size: int = 0
    date: datetime
    vm_clock_seconds: float = 0.0
    icount: int | None = None

    @classmethod
    def from_qemu(cls, data: dict[str, Any]) -> SnapshotInfo:
        seconds = int(data.get("date-sec", 0)) + int(data.get("date-nsec", 0)) / 1e9
        clock = int(data.get("vm-clock-sec", 0)) + int(data.get("vm-clock-nsec", 0)) / 1e9
        return cls(
            id=str(data.get("id", "")),
            name=str(data.get("name", "")),
            vm_state_size=int(data.get("vm-state-size", 0)),
            date=datetime.fromtimestamp(seconds, tz=UTC),
            vm_clock_seconds=clock,
            icount=data.get("icount"),
        )


class ImageInfo(BaseModel):
    """What ``qemu-img info`` reports about one image (sizes in bytes)."""

    filename: str
    format: str
    virtual_size: int
    actual_size: int | None = None
    cluster_size: int | None = None
    backing_filename: str | None = None
    full_backing_filename: str | None = None
    backing_format: str | None = None
    dirty: bool = False
    encrypted: bool = False
    corrupt: bool | None = Field(default=None, description="qcow2 'corrupt' flag")
    compat: str | None = None
    data_file: str | None = Field(default=None, description="qcow2 external data file")
    bitmaps: list[str] = Field(default_factory=list, description="persistent dirty bitmaps")
    snapshots: list[SnapshotInfo] = Field(default_factory=list)
    backing_chain: list[ImageInfo] = Field(
        default_factory=list,
        description="the backing images below this one, nearest first "
        "(only filled when asked for)",
    )
    format_source: str | None = Field(
        default=None, description="how the format was chosen: given, recorded (kvmops "
        "wrote the image) or default (raw: an unknown image is never probed)")
    notes: list[str] = Field(default_factory=list)

    @classmethod
    def from_qemu(cls, data: dict[str, Any]) -> ImageInfo:
        specific = (data.get("format-specific") or {}).get("data") or {}
        return cls(
            filename=str(data.get("filename", "")),
            format=str(data.get("format", "")),
            virtual_size=int(data.get("virtual-size", 0)),
            actual_size=data.get("actual-size"),
            cluster_size=data.get("cluster-size"),
            backing_filename=data.get("backing-filename"),
            full_backing_filename=data.get("full-backing-filename"),
            backing_format=data.get("backing-filename-format"),
            dirty=bool(data.get("dirty-flag", False)),
            encrypted=bool(data.get("encrypted", False)),
            corrupt=specific.get("corrupt"),
            compat=specific.get("compat"),
            data_file=specific.get("data-file"),
            bitmaps=[str(b.get("name")) for b in specific.get("bitmaps") or []
                     if isinstance(b, dict) and b.get("name")],
            snapshots=[SnapshotInfo.from_qemu(s) for s in data.get("snapshots") or []],
        )


CheckStatus = Literal["clean", "leaks", "corrupt"]


class CheckResult(BaseModel):
    """``qemu-img check``: corruption and leaks are results, not exceptions."""

    filename: str
    format: str
    status: CheckStatus
    corruptions: int = 0
    leaks: int = 0
    check_errors: int = 0
    image_end_offset: int | None = None
    total_clusters: int | None = None
    allocated_clusters: int | None = None
    fragmented_clusters: int | None = None
    compressed_clusters: int | None = None

    @property
    def ok(self) -> bool:
        return self.status != "corrupt"

    def error(self) -> StorageError | None:
        """The error to report for a corrupt image (``None`` if usable)."""
        if self.status != "corrupt":
            return None
        return StorageError(
            f"image {self.filename} is corrupt: {self.corruptions} corruption(s), "
            f"{self.leaks} leaked cluster(s)",
            hint="back it up, then try 'qemu-img check -r all' or restore it from a copy",
        )


@dataclass(frozen=True)
class ResizeResult:
    path: str
    old_size: int
    new_size: int

    @property
    def changed(self) -> bool:
        return self.old_size != self.new_size


# --------------------------------------------------------------------------
# Pure helpers (unit tested without qemu-img)

_PROGRESS_RE = re.compile(r"\(\s*(\d+(?:\.\d+)?)\s*/\s*100%\)")
_LINE_SPLIT_RE = re.compile(r"[\r\n]")


def parse_progress(line: str) -> float | None:
    """The percentage in one ``    (12.34/100%)`` progress line, else None."""
    match = _PROGRESS_RE.search(line)
    if match is None:
        return None
    return min(100.0, float(match.group(1)))


class ProgressParser:
    """Incremental parser for ``qemu-img convert -p`` output.

    qemu-img rewrites its progress line with ``\\r``; output arrives in
    arbitrary chunks, so a partial line is kept until its terminator comes.
    """

    def __init__(self) -> None:
        self._pending = ""
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def feed(self, chunk: bytes | str) -> list[float]:
        text = self._decoder.decode(chunk) if isinstance(chunk, bytes) else chunk
        pieces = _LINE_SPLIT_RE.split(self._pending + text)
        self._pending = pieces.pop()
        return [v for v in map(parse_progress, pieces) if v is not None]

    def flush(self) -> list[float]:
        rest, self._pending = self._pending + self._decoder.decode(b"", final=True), ""
        value = parse_progress(rest)
        return [] if value is None else [value]


def resolve_size(spec: str | int, current: int) -> int:
    """New size in bytes from an absolute size (``20G``) or a change (``+1G``, ``-512M``)."""
    if isinstance(spec, int):
        return parse_size(spec)
    text = spec.strip()
    if text[:1] not in ("+", "-"):
        return parse_size(text)
    try:
        delta = parse_size(text[1:])
    except ValidationError as err:
        raise ValidationError(
            f"invalid size '{spec}'",
            hint="use an absolute size such as 20G or a change such as +1G or -512M",
        ) from err
    new = current + delta if text[0] == "+" else current - delta
    if new < 0:
        raise ValidationError(
            f"invalid size '{spec}': the image is only {format_size(current)}",
            hint="give a smaller change or an absolute size",
        )
    return new


_LOCK_RE = re.compile(r'Failed to get (?:shared )?"\w+" lock|Is another process using the image')
_LOCKED_IMAGE_RE = re.compile(r"Is another process using the image \[(.+?)\]\?")
_REPEATED_OPEN_RE = re.compile(r"(Could not open '[^']*': )(?:Could not open '[^']*': )+")


def qemu_message(stderr: str) -> str:
    """qemu-img's error text as one line, without its prefix and warnings."""
    lines: list[str] = []
    in_warning = False
    for raw in stderr.splitlines():
        if not raw.strip():
            continue
        if raw.startswith("WARNING:") or raw.startswith("qemu-img: warning:"):
            in_warning = True
            continue
        if in_warning and raw[:1].isspace():
            continue  # continuation of a multi-line warning
        in_warning = False
        line = raw.strip()
        line = line.removeprefix("qemu-img: ")
        lines.append(line)
    text = " ".join(lines)
    return _REPEATED_OPEN_RE.sub(r"\1", text)


def translate_error(
    stderr: str,
    *,
    what: str,
    path: Path | None = None,
    returncode: int | None = None,
    users: Callable[[Path], list[str]] = vms_using,
) -> KvmopsError:
    """Map a failed qemu-img run to a kvmops error.

    ``what`` is the action with its object ("resize /x.qcow2"); the message
    reads ``cannot <what>: <reason>``. ``users`` finds the VMs holding a locked
    image (libvirt look-up, replaced in tests).
    """
    text = qemu_message(stderr)
    if not text:
        text = f"qemu-img exited with status {returncode}"
    if _LOCK_RE.search(text) or _LOCK_RE.search(stderr):
        locked = _LOCKED_IMAGE_RE.search(stderr)
        image = Path(locked.group(1)) if locked else path
        shown = "the image" if image is None or image == path else str(image)
        names = users(image) if image is not None else []
        if names:
            listed = ", ".join(f"'{n}'" for n in names)
            return StateError(
                f"cannot {what}: {shown} is in use by running VM {listed}",
                actual="in use",
                hint=f"shut down {listed} first",
            )
        return StateError(
            f"cannot {what}: {shown} is in use by another process (QEMU holds its write lock)",
            actual="in use",
            hint="stop the VM or process using it first",
        )
    message = f"cannot {what}: {text}"
    if "No such file or directory" in text:
        return NotFoundError(message, hint="check the path")
    if "image size is too large" in text.lower() or "Invalid image size" in text:
        return ValidationError(message, hint="give a smaller size")
    if "Unknown file format" in text:
        return ValidationError(message, hint="use a format qemu-img knows, e.g. qcow2 or raw")
    if "Operation not supported" in text or "not supported" in text.lower():
        return UnsupportedError(message)
    return StorageError(message)


def parse_info(stdout: str, *, path: Path) -> ImageInfo:
    """``qemu-img info --output=json`` (with or without ``--backing-chain``)."""
    try:
        data = json.loads(stdout)
    except json.JSONDecodeError as err:
        raise StorageError(f"cannot read image info of {path}: qemu-img printed no JSON") from err
    if isinstance(data, list):
        if not data:
            raise StorageError(f"cannot read image info of {path}: qemu-img printed nothing")
        top = ImageInfo.from_qemu(data[0])
        top.backing_chain = [ImageInfo.from_qemu(item) for item in data[1:]]
        return top
    return ImageInfo.from_qemu(data)


def parse_check(stdout: str, returncode: int, *, path: Path, fmt: str = "") -> CheckResult:
    """``qemu-img check --output=json``: 0 clean, 2 corrupt, 3 leaks."""
    try:
        data: dict[str, Any] = json.loads(stdout) if stdout.strip() else {}
    except json.JSONDecodeError as err:
        raise StorageError(f"cannot check {path}: qemu-img printed no JSON") from err
    corruptions = int(data.get("corruptions", 0))
    leaks = int(data.get("leaks", 0))
    status: CheckStatus
    if returncode == 2 or corruptions:
        status = "corrupt"
    elif returncode == 3 or leaks:
        status = "leaks"
    else:
        status = "clean"
    return CheckResult(
        filename=str(data.get("filename") or path),
        format=str(data.get("format") or fmt),
        status=status,
        corruptions=corruptions,
        leaks=leaks,
        check_errors=int(data.get("check-errors", 0)),
        image_end_offset=data.get("image-end-offset"),
        total_clusters=data.get("total-clusters"),
        allocated_clusters=data.get("allocated-clusters"),
        fragmented_clusters=data.get("fragmented-clusters"),
        compressed_clusters=data.get("compressed-clusters"),
    )


# --------------------------------------------------------------------------
# Running qemu-img


def _env() -> dict[str, str]:
    # English messages: translate_error matches on them.
    return {**os.environ, "LC_ALL": "C"}


def run_qemu_img(
    args: Sequence[str],
    *,
    what: str,
    path: Path | None = None,
    ok_codes: Sequence[int] = (0,),
    on_output: Callable[[bytes], None] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run ``qemu-img ARGS`` (no shell); raise the translated error unless the
    exit status is in ``ok_codes``.

    With ``on_output`` stdout is streamed to it chunk by chunk as it arrives
    (the returned ``stdout`` is then empty).
    """
    cmd = [QEMU_IMG, *args]
    try:
        if on_output is None:
            proc = subprocess.run(
                cmd, capture_output=True, text=True, check=False, env=_env(),
                stdin=subprocess.DEVNULL,
            )
            returncode, stdout, stderr = proc.returncode, proc.stdout, proc.stderr
        else:
            returncode, stderr = _stream(cmd, on_output)
            stdout = ""
    except FileNotFoundError as err:
        raise UnsupportedError(
            "qemu-img is not installed", hint="install it with 'apt-get install qemu-utils'"
        ) from err
    if returncode not in ok_codes:
        raise translate_error(stderr, what=what, path=path, returncode=returncode)
    return subprocess.CompletedProcess(cmd, returncode, stdout, stderr)


def _stream(cmd: list[str], on_output: Callable[[bytes], None]) -> tuple[int, str]:
    # stderr goes to a file so a chatty stderr can never block the stdout reader.
    with tempfile.TemporaryFile() as errfile:
        proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=errfile, stdin=subprocess.DEVNULL, env=_env()
        )
        try:
            assert proc.stdout is not None
            fd = proc.stdout.fileno()
            while chunk := os.read(fd, 65536):
                on_output(chunk)
            returncode = proc.wait()
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        finally:
            if proc.stdout is not None:
                proc.stdout.close()
        errfile.seek(0)
        return returncode, errfile.read().decode("utf-8", errors="replace")


# --------------------------------------------------------------------------
# Formats and path checks

SUPPORTED_FORMATS = ("raw", "qcow2")


def require_format(fmt: str | None, what: str = "image") -> str:
    """A format kvmops opens: named, never probed, and one kvmops knows how to keep safe."""
    if not fmt:
        raise ValidationError(f"no format given for {what}",
                              hint="name it (raw or qcow2): kvmops never lets qemu-img guess")
    if fmt not in SUPPORTED_FORMATS:
        raise UnsupportedError(
            f"format '{fmt}' of {what} is not supported",
            hint="kvmops opens raw and qcow2 images only; convert others with qemu-img "
                 "after checking where they point (vmdk descriptors and LUKS headers "
                 "name other files and keys)")
    return fmt


def _abspath(path: PathLike) -> Path:
    return Path(path).expanduser().absolute()


def _require_image(path: PathLike, action: str) -> Path:
    p = _abspath(path)
    if not p.exists():
        raise NotFoundError(
            f"cannot {action}: image file {p} does not exist", hint="check the path"
        )
    if p.is_dir():
        raise ValidationError(f"cannot {action}: {p} is a directory, not an image file")
    return p


def _require_parent(p: Path, action: str) -> None:
    if not p.parent.is_dir():
        raise NotFoundError(
            f"cannot {action}: directory {p.parent} does not exist",
            hint="create the directory first",
        )


def image_opts(path: Path, fmt: str) -> str:
    """``--image-opts`` text naming the driver (for commands without ``-f``)."""
    escaped = str(path).replace(",", ",,")
    return f"driver={fmt},file.driver=file,file.filename={escaped}"


# --------------------------------------------------------------------------
# Operations


def info(path: PathLike, fmt: str, *, force_share: bool = True) -> ImageInfo:
    """One image's details, read as ``fmt`` (never probed). Backing files are not
    opened: walk a chain with :func:`kvmops.images.chain.inspect`. ``force_share``
    (``-U``) lets it work while a VM runs on the image."""
    p = _require_image(path, "read image info")
    require_format(fmt, str(p))
    args = ["info", "--output=json", "-f", fmt]
    if force_share:
        args.append("-U")
    args.append(str(p))
    proc = run_qemu_img(args, what=f"read image info of {p}", path=p)
    return parse_info(proc.stdout, path=p)


def create(
    path: PathLike,
    size: str | int | None,
    fmt: str = "qcow2",
    *,
    backing: PathLike | None = None,
    backing_fmt: str | None = None,
    preallocation: str | None = "metadata",
    cluster_size: str | int | None = None,
) -> ImageInfo:
    """Create a new image; never overwrites an existing file.

    ``size`` may be omitted for an overlay (it then inherits the backing
    size). The default ``metadata`` preallocation applies to standalone qcow2
    images only: qemu-img refuses it with a backing file, raw has no metadata.
    The new image's format is recorded (:mod:`kvmops.images.records`).
    """
    p = _abspath(path)
    action = f"create image {p}"
    require_format(fmt, str(p))
    if p.exists() or p.is_symlink():
        raise AlreadyExistsError(
            f"cannot {action}: the file already exists",
            hint="choose another path or remove the file first",
        )
    _require_parent(p, action)
    size_bytes = None if size is None else parse_size(size, what="image size")
    if size_bytes is None and backing is None:
        raise ValidationError(f"cannot {action}: no size given", hint="pass a size such as 10G")
    if size_bytes is not None and size_bytes > MAX_IMAGE_SIZE:
        raise ValidationError(f"cannot {action}: {format_size(size_bytes)} is more than "
                              f"the largest image kvmops makes ({format_size(MAX_IMAGE_SIZE)})")
    if size_bytes is not None and size_bytes < 512 and backing is None:
        raise ValidationError(f"cannot {action}: an image needs at least 512 bytes",
                              hint="give a size such as 64M")
    if preallocation is not None and preallocation not in PREALLOCATION_MODES:
        raise ValidationError(
            f"cannot {action}: unknown preallocation '{preallocation}'",
            hint=f"use one of {', '.join(PREALLOCATION_MODES)}",
        )
    options: list[str] = []
    if preallocation and backing is None and (fmt == "qcow2" or preallocation != "metadata"):
        options.append(f"preallocation={preallocation}")
    if cluster_size is not None:
        options.append(f"cluster_size={parse_size(cluster_size, what='cluster size')}")

    if size_bytes is not None and "preallocation=metadata" in options:
        _check_room_for_metadata(p, size_bytes, options, action)
    args = ["create", "-q", "-f", fmt]
    if options:
        args += ["-o", ",".join(options)]
    if backing is not None:
        if fmt != "qcow2":
            raise ValidationError(f"cannot {action}: only qcow2 images have backing files")
        b = _abspath(backing)
        if not b.exists():
            raise NotFoundError(
                f"cannot {action}: backing file {b} does not exist", hint="check the path"
            )
        args += ["-b", str(b), "-F", require_format(backing_fmt, f"backing file {b}")]
    args.append(str(p))
    if size_bytes is not None:
        args.append(str(size_bytes))
    try:
        run_qemu_img(args, what=action, path=p)
    except BaseException:
        # qemu-img may have created the file before failing; it did not exist before.
        with contextlib.suppress(FileNotFoundError):
            p.unlink()
        raise
    records.record_format(p, fmt)
    return info(p, fmt)


def _check_room_for_metadata(p: Path, size: int, options: list[str], action: str) -> None:
    """Preallocated qcow2 metadata grows with the virtual size (160 GiB for 1 PiB): refuse
    before writing it into a file system that cannot hold it."""
    proc = run_qemu_img(["measure", "--output=json", "--size", str(size), "-O", "qcow2",
                         "-o", ",".join(options)], what=action, path=p)
    try:
        required = int(json.loads(proc.stdout)["required"])
    except (ValueError, KeyError, TypeError) as err:
        raise StorageError(f"cannot {action}: qemu-img measure printed no size") from err
    free = shutil.disk_usage(p.parent).free
    if required > free:
        raise ValidationError(
            f"cannot {action}: its preallocated metadata needs {format_size(required)}, "
            f"but {p.parent} has {format_size(free)} free",
            hint="give a smaller size, or free space first")


def check(path: PathLike, fmt: str) -> CheckResult:
    """Consistency check. Corruption (exit 2) and leaks (exit 3) are reported
    in the result; only "could not check at all" raises."""
    p = _require_image(path, "check image")
    require_format(fmt, str(p))
    action = f"check {p}"
    # A check is of this file alone: the backing file is never opened (``backing=``).
    target = ["--image-opts", image_opts(p, fmt) + (",backing=" if fmt == "qcow2" else "")]
    proc = run_qemu_img(
        ["check", "--output=json", *target], what=action, path=p, ok_codes=(0, 2, 3, 63)
    )
    if proc.returncode == 63:
        raise UnsupportedError(
            f"cannot {action}: {fmt} images do not support consistency checks",
            hint="only formats with metadata (qcow2, qed, vdi, vhdx, ...) can be checked",
        )
    result = parse_check(proc.stdout, proc.returncode, path=p, fmt=fmt)
    return result.model_copy(update={"filename": str(p)})  # not the --image-opts text


def _ensure_not_in_use(p: Path, fmt: str, action: str) -> None:
    """Opening without ``-U`` fails with a lock error while QEMU holds the image."""
    run_qemu_img(["info", "--output=json", "-f", fmt, str(p)], what=action, path=p)


def _fsync_path(p: Path, *, directory: bool = False) -> None:
    fd = os.open(p, os.O_RDONLY | (os.O_DIRECTORY if directory else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def convert(
    src: PathLike,
    src_fmt: str,
    dst: PathLike,
    out_fmt: str = "qcow2",
    *,
    compress: bool = False,
    overwrite: bool = False,
    progress: ProgressCallback | None = None,
) -> ImageInfo:
    """Copy ``src`` (read as ``src_fmt``) into a new ``out_fmt`` image at ``dst``.

    qemu-img writes a temporary file next to ``dst`` which is fsynced and
    renamed into place only on success, so ``dst`` is never half-written.
    ``progress`` receives percentages (0-100) as qemu-img reports them.
    The source is opened without ``-U``: a running VM's lock makes it fail
    instead of copying a moving image.
    """
    s = _require_image(src, "convert")
    d = _abspath(dst)
    action = f"convert {s} to {d}"
    require_format(src_fmt, str(s))
    require_format(out_fmt, str(d))
    if s.resolve() == d.resolve():
        raise ValidationError(f"cannot {action}: source and destination are the same file")
    if d.is_dir():
        raise ValidationError(f"cannot {action}: {d} is a directory")
    existing_fmt: str | None = None
    if d.exists():
        if not overwrite:
            raise AlreadyExistsError(
                f"cannot {action}: {d} already exists", hint="pass --overwrite to replace it"
            )
        existing_fmt = records.recorded_format(d) or "raw"
        _ensure_not_in_use(d, existing_fmt, f"overwrite {d}")
    _require_parent(d, action)

    # A fresh random name that qemu-img itself creates (so it gets the usual
    # umask permissions); same directory, so the final rename is atomic.
    tmp = d.parent / f".{d.name}.{secrets.token_hex(6)}.part"
    # -W -m 8: parallel, out-of-order writes into the new file (about 2x on chains).
    args = ["convert", "-p", "-W", "-m", "8", "-f", src_fmt, "-O", out_fmt]
    if compress:
        args.append("-c")
    args += [str(s), str(tmp)]

    parser = ProgressParser()

    def on_output(chunk: bytes) -> None:
        for value in parser.feed(chunk):
            if progress is not None:
                progress(value)

    try:
        run_qemu_img(args, what=action, path=s, on_output=on_output)
        for value in parser.flush():
            if progress is not None:
                progress(value)
        records.record_format(tmp, out_fmt)
        _fsync_path(tmp)
        os.replace(tmp, d)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    _fsync_path(d.parent, directory=True)
    return info(d, out_fmt)


def resize(path: PathLike, fmt: str, size: str | int, *, shrink: bool = False) -> ResizeResult:
    """Set the virtual size: absolute (``20G``) or relative (``+1G``, ``-1G``).

    Shrinking loses the data past the new end and must be asked for.
    """
    p = _require_image(path, "resize")
    before = info(p, fmt)
    old = before.virtual_size
    new = resolve_size(size, old)
    if new > MAX_IMAGE_SIZE:
        raise ValidationError(f"cannot resize {p} to {format_size(new)}: more than the "
                              f"largest image kvmops makes ({format_size(MAX_IMAGE_SIZE)})")
    if new < old and not shrink:
        raise ValidationError(
            f"refusing to shrink {p} from {format_size(old)} ({old} bytes) "
            f"to {format_size(new)} ({new} bytes)",
            hint="data past the new end would be lost; pass --shrink to do it anyway",
        )
    if new == old:
        return ResizeResult(path=str(p), old_size=old, new_size=old)
    args = ["resize", "-q", "-f", fmt]
    if new < old:
        args.append("--shrink")
    args += [str(p), str(new)]
    run_qemu_img(args, what=f"resize {p}", path=p)
    return ResizeResult(path=str(p), old_size=old, new_size=info(p, fmt).virtual_size)


def rebase(
    path: PathLike,
    fmt: str,
    backing: PathLike | None,
    *,
    unsafe: bool = False,
    backing_fmt: str | None = None,
) -> ImageInfo:
    """Point ``path`` at a new backing file (``None``/empty: none at all).

    Safe mode copies whatever differs between old and new backing into the
    image; ``unsafe`` only rewrites the reference. The new backing file's
    format must be named.
    """
    p = _require_image(path, "rebase")
    require_format(fmt, str(p))
    action = f"rebase {p}"
    if fmt != "qcow2":
        raise ValidationError(f"cannot {action}: only qcow2 images have backing files")
    args = ["rebase", "-f", fmt]
    if unsafe:
        args.append("-u")
    if backing is None or str(backing) == "":
        args += ["-b", ""]
    else:
        b = _abspath(backing)
        if b.resolve() == p.resolve():
            raise ValidationError(f"cannot {action}: an image cannot be its own backing file")
        if not b.exists() and not unsafe:
            raise NotFoundError(
                f"cannot {action}: new backing file {b} does not exist",
                hint="check the path, or pass --unsafe to only rewrite the reference",
            )
        args += ["-b", str(b), "-F", require_format(backing_fmt, f"backing file {b}")]
    args.append(str(p))
    run_qemu_img(args, what=action, path=p)
    return info(p, fmt)


def commit(path: PathLike, fmt: str, *, base: PathLike | None = None) -> Path:
    """Merge an overlay into its backing file (or into ``base`` further down
    the chain). Returns the image that received the data."""
    p = _require_image(path, "commit")
    current = info(p, fmt)
    action = f"commit {p}"
    if not current.backing_filename:
        raise StateError(
            f"cannot {action}: it has no backing file",
            actual="no backing file",
            hint="commit merges an overlay into its backing file; there is nothing to commit",
        )
    args = ["commit", "-q", "-f", fmt]
    target = Path(current.full_backing_filename or current.backing_filename)
    if base is not None:
        target = _require_image(base, action)
        args += ["-b", str(target)]
    args.append(str(p))
    run_qemu_img(args, what=action, path=p)
    return target


# Internal snapshots ----------------------------------------------------------


def _snapshot_image(path: PathLike, fmt: str, action: str) -> tuple[Path, ImageInfo]:
    p = _require_image(path, action)
    if fmt != "qcow2":
        raise UnsupportedError(
            f"cannot {action} on {p}: {fmt} images have no internal snapshots",
            hint="convert to qcow2 first",
        )
    return p, info(p, fmt)


def _check_name(name: str, action: str) -> None:
    if not name or not name.strip() or any(c in name for c in "\r\n\0"):
        raise ValidationError(
            f"cannot {action}: invalid snapshot name {name!r}",
            hint="use a non-empty name on one line",
        )


def _find(snapshots: list[SnapshotInfo], name: str) -> SnapshotInfo | None:
    for snap in snapshots:
        if snap.name == name:
            return snap
    for snap in snapshots:
        if snap.id == name:
            return snap
    return None


def _require_snapshot(p: Path, current: ImageInfo, name: str, action: str) -> SnapshotInfo:
    snap = _find(current.snapshots, name)
    if snap is None:
        known = ", ".join(s.name for s in current.snapshots)
        raise NotFoundError(
            f"cannot {action}: there is no snapshot '{name}'",
            hint=f"existing snapshots: {known}" if known else "the image has no snapshots",
        )
    return snap


def _snapshot_cmd(p: Path, flag: str, name: str) -> list[str]:
    # qemu-img snapshot has no -f: the format is named through --image-opts.
    return ["snapshot", "--image-opts", flag, name, image_opts(p, "qcow2")]


def snapshot_list(path: PathLike, fmt: str = "qcow2") -> list[SnapshotInfo]:
    """Internal snapshots, read with ``qemu-img info`` (works while in use)."""
    _p, current = _snapshot_image(path, fmt, "list snapshots")
    return current.snapshots


def snapshot_create(path: PathLike, name: str, fmt: str = "qcow2") -> SnapshotInfo:
    """Take an internal snapshot (the image must not be in use)."""
    action = f"create snapshot '{name}'"
    _check_name(name, action)
    p, current = _snapshot_image(path, fmt, action)
    if any(s.name == name for s in current.snapshots):
        raise AlreadyExistsError(
            f"cannot {action} on {p}: a snapshot with that name already exists",
            hint="choose another name or delete the old snapshot first",
        )
    run_qemu_img(_snapshot_cmd(p, "-c", name), what=f"{action} on {p}", path=p)
    created = _find(info(p, fmt).snapshots, name)
    if created is None:
        raise StorageError(f"cannot {action} on {p}: qemu-img reported success but it is missing")
    return created


def snapshot_apply(path: PathLike, name: str, fmt: str = "qcow2") -> SnapshotInfo:
    """Revert the image's contents to snapshot ``name``."""
    action = f"apply snapshot '{name}'"
    _check_name(name, action)
    p, current = _snapshot_image(path, fmt, action)
    snap = _require_snapshot(p, current, name, f"{action} to {p}")
    run_qemu_img(_snapshot_cmd(p, "-a", name), what=f"{action} to {p}", path=p)
    return snap


def snapshot_delete(path: PathLike, name: str, fmt: str = "qcow2") -> SnapshotInfo:
    """Delete snapshot ``name``; returns what was deleted."""
    action = f"delete snapshot '{name}'"
    _check_name(name, action)
    p, current = _snapshot_image(path, fmt, action)
    snap = _require_snapshot(p, current, name, f"{action} from {p}")
    run_qemu_img(_snapshot_cmd(p, "-d", name), what=f"{action} from {p}", path=p)
    return snap
