"""Watching a long libvirt call (a core dump, a migration) that runs in its own thread:
its domain job's statistics read between polls, cancel and Ctrl-C turned into abortJob.
Shared by host.diagnostics and host.migration."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from typing import Any

import libvirt

from kvmops.errors import CancelledError


def running_job_stats(dom: Any) -> dict[str, Any]:
    """The domain's current job statistics; empty when libvirt cannot tell or no job runs."""
    try:
        stats = dict(dom.jobStats(0))
    except libvirt.libvirtError:
        return {}
    if stats.get("type") in (None, libvirt.VIR_DOMAIN_JOB_NONE):
        return {}
    return stats


def abort_job(dom: Any) -> None:
    """Ask libvirt to abort the domain's job; a job that cannot be aborted runs on."""
    with contextlib.suppress(libvirt.libvirtError):
        dom.abortJob()


def watch_job(thread: threading.Thread, dom: Any, *, poll_s: float, abort_wait_s: float,
              cancelled: Callable[[], bool] | None,
              tick: Callable[[bool], None]) -> str | None:
    """Wait for ``thread`` (running ``dom``'s job), calling ``tick(active)`` every
    ``poll_s`` (``active`` False once an abort was asked). The job is aborted when
    ``cancelled()`` turns true or ``tick`` raises CancelledError ("cancelled"), or on
    Ctrl-C ("interrupted", waiting at most ``abort_wait_s`` for libvirt to end it).
    Returns why it was aborted, None when it was not; the thread has ended."""
    aborted: str | None = None
    try:
        while thread.is_alive():
            thread.join(poll_s)
            if not thread.is_alive():
                break
            if aborted is None and cancelled is not None and cancelled():
                aborted = "cancelled"
                abort_job(dom)
                continue
            try:
                tick(aborted is None)
            except CancelledError:  # a job runner raising on cancel
                aborted = "cancelled"
                abort_job(dom)
    except KeyboardInterrupt:
        aborted = "interrupted"
        abort_job(dom)
        thread.join(abort_wait_s)
    thread.join()
    return aborted
