"""Hung-guest diagnostics: NMI, hard reset, screenshot and memory dump of a VM.

The files they write (a screenshot, a dump) are named by the caller and go through the
path policy (:mod:`kvmops.paths`: inside an allowed image directory unless the caller is
trusted) and land atomically: written under a temporary name in the same directory,
fsynced, then renamed -- a reader never sees half a dump, and an existing file is
refused unless ``force`` (then replaced in one rename).

A dump is written by the libvirtd of the VM's host (it opens the file and hands it to
QEMU), so it is refused for a host reached over the network: the file would be on that
machine, out of reach of this one's path policy.
"""

from __future__ import annotations

import contextlib
import io
import os
import secrets
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from kvmops.errors import (
    AlreadyExistsError,
    HypervisorError,
    NotFoundError,
    StateError,
    StorageError,
    UnsupportedError,
    ValidationError,
)
from kvmops.host import remote
from kvmops.host.connection import Host
from kvmops.host.domain import Domain
from kvmops.paths import policy
from kvmops.records import Record
from kvmops.services.audit import audited
from kvmops.services.caller import Caller
from kvmops.services.jobs import track
from kvmops.sizes import format_size

DumpFormat = Literal["elf", "kdump-zlib", "kdump-lzo", "kdump-snappy", "win-dmp"]
DUMP_FORMATS: tuple[str, ...] = ("elf", "kdump-zlib", "kdump-lzo", "kdump-snappy", "win-dmp")
#: What a dump without memory_only holds: QEMU's saved VM state (a migration stream,
#: "QEVM"), which crash(8) reads as a "kvmdump".
WHOLE_STATE = "qemu-state"
#: NMI and reset act on a guest whose vCPUs may be stopped too (a hung guest paused by
#: an I/O error still takes them).
ACTIVE = frozenset({"running", "idle", "paused", "in shutdown", "pmsuspended"})
ProgressFn = Callable[[int, int], None]  # (bytes written, total; 0 when unknown)


@dataclass
class ScreenshotResult(Record):
    path: str
    width: int
    height: int
    size: int


@dataclass
class DumpResult(Record):
    vm: str
    path: str
    size: int
    format: str
    memory_only: bool
    seconds: float


# --------------------------------------------------------------------------- states
def _active_domain(host: Host, name: str, action: str, allowed: frozenset[str]) -> Domain:
    domain = host.lookup(name)
    state = domain.state()
    if state not in allowed:
        raise StateError(f"cannot {action} VM '{name}': it is {state}", actual=state,
                         required=" or ".join(sorted(allowed)),
                         hint=f"start it first ('kvmops vm start {name}')"
                         if state in ("shut off", "crashed") else None)
    return domain


@audited("vm.nmi", target="name")
def nmi(caller: Caller, host: Host, name: str) -> None:
    """Inject a non-maskable interrupt: a Linux guest logs it (or, with
    ``kernel.unknown_nmi_panic=1`` or ``panic_on_unrecovered_nmi``, panics and kdumps)."""
    from kvmops.host import diagnostics

    diagnostics.inject_nmi(_active_domain(host, name, "inject an NMI into", ACTIVE))


@audited("vm.reset", target="name")
def reset(caller: Caller, host: Host, name: str) -> None:
    """Hard reset (the reset button): the guest reboots without shutting down."""
    from kvmops.host import diagnostics

    diagnostics.reset(_active_domain(host, name, "reset", ACTIVE))


# --------------------------------------------------------------------------- screenshot
def to_png(mime: str, data: bytes) -> tuple[bytes, int, int]:
    """The screen as PNG with its size: QEMU's PNG as it is (checked), its PPM converted
    (Pillow)."""
    from PIL import Image, UnidentifiedImageError
    from PIL.Image import DecompressionBombError

    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            width, height = image.size
            if image.format == "PNG":
                return data, width, height
            out = io.BytesIO()
            image.convert("RGB").save(out, format="PNG", optimize=False)
    except (UnidentifiedImageError, DecompressionBombError, OSError, ValueError) as err:
        raise StorageError(f"the screenshot ({mime}, {len(data)} bytes) is not an image "
                           f"Pillow reads: {err}") from None
    return out.getvalue(), width, height


def screenshot(caller: Caller, host: Host, name: str, screen: int = 0
               ) -> tuple[bytes, int, int]:
    """The VM's screen as PNG, with its width and height."""
    from kvmops.host import diagnostics

    domain = _active_domain(host, name, "take a screenshot of", ACTIVE)
    try:
        mime, data = diagnostics.screenshot(domain, screen)
    except StateError as err:
        if "no screens" not in err.message:
            raise
        raise StateError(err.message, hint="the VM has no video device; read its serial "
                                           f"console: 'kvmops vm console {name}'") from err
    return to_png(mime, data)


def _target(caller: Caller, path: Path, what: str, *, force: bool) -> Path:
    """The file the caller names: through the path policy, its directory present, not
    an existing file unless ``force``, never a directory."""
    real = policy().image_path(path, trusted=caller.trusted_paths, what=what)
    if not real.parent.is_dir():
        raise NotFoundError(f"directory {real.parent} of the {what} does not exist",
                            hint="create it first or name another file")
    if real.is_dir():
        raise ValidationError(f"{what} {path} is a directory", hint="name a file in it")
    if real.exists() and not force:
        raise AlreadyExistsError(f"{what} {path} already exists",
                                 hint="name another file, or add --force to replace it")
    return real


def _temp_name(real: Path) -> Path:
    return real.with_name(f".{real.name}.{secrets.token_hex(4)}.part")


def _fsync(path: Path, flags: int = os.O_RDONLY) -> None:
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _publish(tmp: Path, real: Path, *, force: bool, what: str) -> None:
    """fsync ``tmp`` and give it its name: replacing ``real`` with ``force``, else only
    when nothing took the name meanwhile (a link refuses an existing name)."""
    _fsync(tmp)
    if force:
        os.replace(tmp, real)
    else:
        try:
            os.link(tmp, real)
        except FileExistsError:
            raise AlreadyExistsError(f"{what} {real} appeared while it was written",
                                     hint="name another file, or add --force") from None
        tmp.unlink()
    _fsync(real.parent, os.O_RDONLY | os.O_DIRECTORY)


@audited("vm.screenshot", target="name")
def save_screenshot(caller: Caller, host: Host, name: str, path: Path, *,
                    force: bool = False, screen: int = 0) -> ScreenshotResult:
    """Write the VM's screen to ``path`` as PNG (atomically)."""
    real = _target(caller, path, "screenshot file", force=force)
    png, width, height = screenshot(caller, host, name, screen)
    tmp = _temp_name(real)
    try:
        with open(tmp, "xb") as fh:
            fh.write(png)
        _publish(tmp, real, force=force, what="screenshot file")
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    return ScreenshotResult(path=str(real), width=width, height=height, size=len(png))


# --------------------------------------------------------------------------- dump
def check_dump(caller: Caller, path: Path, *, fmt: str = "elf", memory_only: bool = False,
               force: bool = False) -> Path:
    """Everything about a dump request that needs no VM (the API checks it before it
    starts the job): the format, and the file through the path policy."""
    if fmt not in DUMP_FORMATS:
        raise ValidationError(f"unknown dump format '{fmt}'",
                              hint=f"use one of {', '.join(DUMP_FORMATS)}")
    if fmt != "elf" and not memory_only:
        raise ValidationError(f"dump format {fmt} needs a memory-only dump",
                              hint="add --memory-only (a whole-VM-state dump is always "
                                   "libvirt's own format)")
    return _target(caller, path, "dump file", force=force)


def default_dump_path(name: str, fmt: str = "elf") -> Path:
    """Where a dump goes when the caller names no file: the default images directory,
    ``NAME-YYYYmmddTHHMMSSZ.core`` (``.kdump``, ``.dmp``)."""
    suffix = {"elf": "core", "win-dmp": "dmp"}.get(fmt, "kdump")
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    return policy().images_dir / f"{name}-{stamp}.{suffix}"


def check_dumpable(caller: Caller, host: Host, name: str) -> Domain:
    """The VM exists, runs, and its host is this machine (the API checks it before it
    starts the job)."""
    if remote.is_remote(host.uri):
        raise UnsupportedError(
            f"cannot dump VM '{name}' from here: its host ({host.uri}) writes the dump "
            "file on its own disks, out of reach of this machine",
            hint="run 'kvmops vm dump' on that host")
    return _active_domain(host, name, "dump", ACTIVE)


def _with_hint(err: ValidationError | HypervisorError, fmt: str
               ) -> ValidationError | HypervisorError:
    """libvirt's refusals of a format, with what to do instead."""
    if "unsupported dumpformat" in err.message:
        return ValidationError(err.message, hint=f"this host's QEMU was built without "
                                                 f"{fmt}; use kdump-zlib or elf")
    if "vmcoreinfo" in err.message and fmt == "win-dmp":
        return HypervisorError(err.message, hint="win-dmp needs a Windows guest with the "
                                                 "vmcoreinfo device and its driver; use elf")
    return err


@audited("vm.dump", target="name")
def dump(caller: Caller, host: Host, name: str, path: Path, *, fmt: str = "elf",
         memory_only: bool = False, live: bool = False, force: bool = False,
         progress: ProgressFn | None = None,
         cancelled: Callable[[], bool] | None = None) -> DumpResult:
    """Dump the running VM's memory to ``path`` (atomically; see the module). The guest
    pauses for the dump unless ``live``; CancelledError removes the partial file."""
    from kvmops.host import diagnostics

    real = check_dump(caller, path, fmt=fmt, memory_only=memory_only, force=force)
    domain = check_dumpable(caller, host, name)
    memory = domain.stats().max_memory
    free = shutil.disk_usage(real.parent).free
    if fmt == "elf" and free < memory:
        raise StorageError(f"cannot dump VM '{name}' into {real.parent}: the dump needs "
                           f"about {format_size(memory)}, {format_size(free)} are free",
                           hint="free some space or name a file on another file system")
    tmp = _temp_name(real)
    started = time.monotonic()
    total = [0]  # the guest memory the job counts (the file may be smaller: compressed)
    asked = threading.Event()  # ``kvmops job cancel`` of the command's job row

    with track(caller, "vm.dump", name, on_cancel=asked.set) as job:
        def report(update: diagnostics.DumpProgress) -> None:
            total[0] = update.total or total[0]
            job.bytes(update.processed, update.total)
            if progress is not None:
                progress(update.processed, update.total)

        def stop() -> bool:
            return asked.is_set() or (cancelled is not None and cancelled())

        try:
            try:
                diagnostics.core_dump(domain, str(tmp), fmt=fmt,  # type: ignore[arg-type]
                                      memory_only=memory_only, live=live, progress=report,
                                      cancelled=stop)
            except (ValidationError, HypervisorError) as err:
                raise _with_hint(err, fmt) from err
            if not tmp.is_file():
                raise StorageError(f"dumping VM '{name}': libvirt reported success but "
                                   f"wrote no {tmp}")
            size = tmp.stat().st_size
            done = total[0] or size  # libvirt's last poll may predate the job's end
            job.bytes(done, done)
            if progress is not None:
                progress(done, done)
            _publish(tmp, real, force=force, what="dump file")
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        result = DumpResult(vm=name, path=str(real), size=size,
                            format=fmt if memory_only else WHOLE_STATE,
                            memory_only=memory_only,
                            seconds=round(time.monotonic() - started, 3))
        job.result = result
    return result
