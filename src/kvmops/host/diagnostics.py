"""Hung-guest diagnostics: the libvirt calls behind ``vm nmi``, ``vm reset``,
``vm screenshot`` and ``vm dump``.

Each function takes a :class:`~kvmops.host.domain.Domain` (looked up by the service) and
raises only kvmops errors. The dump runs ``virDomainCoreDumpWithFormat`` in a worker
thread -- libvirt blocks for the whole dump -- while the calling thread polls the
domain job's statistics (``jobStats``) for progress and aborts the job (``abortJob``)
when the caller cancels or on Ctrl-C.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import libvirt

from kvmops.errors import CancelledError, StorageError
from kvmops.host.domain import Domain
from kvmops.host.errors import call, translate
from kvmops.host.jobwatch import running_job_stats, watch_job

DumpFormat = Literal["elf", "kdump-zlib", "kdump-lzo", "kdump-snappy", "win-dmp"]
#: kvmops' format names -> libvirt's (``virsh dump --format`` spells them the same,
#: ``elf`` being libvirt's "raw": QEMU's ELF core).
DUMP_FORMATS: dict[str, int] = {
    "elf": libvirt.VIR_DOMAIN_CORE_DUMP_FORMAT_RAW,
    "kdump-zlib": libvirt.VIR_DOMAIN_CORE_DUMP_FORMAT_KDUMP_ZLIB,
    "kdump-lzo": libvirt.VIR_DOMAIN_CORE_DUMP_FORMAT_KDUMP_LZO,
    "kdump-snappy": libvirt.VIR_DOMAIN_CORE_DUMP_FORMAT_KDUMP_SNAPPY,
    "win-dmp": getattr(libvirt, "VIR_DOMAIN_CORE_DUMP_FORMAT_WIN_DMP", 4),
}
POLL_S = 0.25  # between two job statistics reads while a dump runs
ABORT_WAIT_S = 30.0  # how long a Ctrl-C waits for libvirt to end an aborted dump
MAX_SCREENSHOT = 64 * 1024 * 1024  # bytes: a screen is never this large


@dataclass(frozen=True)
class DumpProgress:
    """How far a dump is (bytes of guest memory written of ``total``; 0 when libvirt
    has not said yet)."""

    processed: int
    total: int


def inject_nmi(domain: Domain) -> None:
    """A non-maskable interrupt to every vCPU (``virsh inject-nmi``): a Linux guest logs
    it, or panics and kdumps with ``kernel.unknown_nmi_panic=1``."""
    call(f"injecting an NMI into VM '{domain.name}'", domain.raw.injectNMI, 0)


def reset(domain: Domain) -> None:
    """Press the reset button (``virsh reset``): no shutdown, the guest reboots at once."""
    call(f"resetting VM '{domain.name}'", domain.raw.reset, 0)


def screenshot(domain: Domain, screen: int = 0) -> tuple[str, bytes]:
    """The VM's screen as libvirt streams it: (MIME type, data). QEMU sends PNG or
    PPM depending on its version."""
    what = f"taking a screenshot of VM '{domain.name}'"
    stream = call(what, domain.raw.connect().newStream, 0)
    try:
        mime = call(what, domain.raw.screenshot, stream, screen, 0)
        chunks: list[bytes] = []
        size = 0
        while True:
            chunk = call(what, stream.recv, 256 * 1024)
            if isinstance(chunk, int):  # -2: would block (never on a blocking stream)
                continue
            if not chunk:
                break
            size += len(chunk)
            if size > MAX_SCREENSHOT:
                raise StorageError(f"{what}: more than {MAX_SCREENSHOT} bytes; refused")
            chunks.append(chunk)
        call(what, stream.finish)
    except BaseException:
        with contextlib.suppress(libvirt.libvirtError):
            stream.abort()
        raise
    return str(mime or "application/octet-stream"), b"".join(chunks)


def core_dump(domain: Domain, path: str, *, fmt: DumpFormat = "elf",
              memory_only: bool = False, live: bool = False,
              progress: Callable[[DumpProgress], None] | None = None,
              cancelled: Callable[[], bool] | None = None) -> None:
    """Dump the guest's memory to ``path`` on the VM's host (libvirtd opens the file,
    mode 0600). ``memory_only`` is QEMU's ``dump-guest-memory`` (ELF or a kdump/win-dmp
    format: what crash(8) and WinDbg read); without it libvirt saves the whole VM state
    (crash reads it as a "kvmdump"). The guest is paused during the dump unless
    ``live``. CancelledError when ``cancelled()`` turns true or on Ctrl-C: the job is
    aborted and the guest keeps running."""
    raw = domain.raw
    flags = (libvirt.VIR_DUMP_MEMORY_ONLY if memory_only else 0) \
        | (libvirt.VIR_DUMP_LIVE if live else 0)
    outcome: dict[str, BaseException] = {}

    def worker() -> None:
        try:
            raw.coreDumpWithFormat(path, DUMP_FORMATS[fmt], flags)
        except BaseException as err:  # handed to the polling thread
            outcome["error"] = err

    thread = threading.Thread(target=worker, name=f"dump-{domain.name}", daemon=True)
    thread.start()

    def tick(active: bool) -> None:
        if progress is not None and active:
            stats = job_progress(raw)
            if stats is not None:
                progress(stats)

    aborted = watch_job(thread, raw, poll_s=POLL_S, abort_wait_s=ABORT_WAIT_S,
                        cancelled=cancelled, tick=tick)
    error = outcome.get("error")
    if aborted is not None:  # (libvirt cannot abort a memory-only dump: it ran to its end)
        raise CancelledError(f"dump of VM '{domain.name}' {aborted}; the VM runs on",
                             hint="run it again when ready")
    if isinstance(error, libvirt.libvirtError):
        raise translate(error, f"dumping VM '{domain.name}'") from error
    if error is not None:
        raise error


def job_progress(raw: Any) -> DumpProgress | None:
    """The running dump job's progress from ``jobStats``: ``memory_*`` for a
    memory-only dump, ``data_*`` for a whole-state one; None between jobs."""
    stats = running_job_stats(raw)
    if not stats:
        return None
    for prefix in ("memory", "data"):
        total = stats.get(f"{prefix}_total")
        if total:
            return DumpProgress(int(stats.get(f"{prefix}_processed") or 0), int(total))
    return DumpProgress(0, 0)
