"""Instant recovery use cases (:mod:`kvmops.backup.instant`): start a VM on overlays of
a backup point and follow the background copy, list, resume, cancel. Every long one is
a job of the one job model (:mod:`kvmops.services.jobs`), every change audited."""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable
from pathlib import Path

from kvmops.backup import instant
from kvmops.backup.instant import InstantRecord, InstantState, InstantStatus
from kvmops.errors import KvmopsError
from kvmops.host.connection import Host
from kvmops.paths import policy
from kvmops.services.audit import audited
from kvmops.services.backups import open_existing
from kvmops.services.caller import Caller
from kvmops.services.jobs import CliJob, track

__all__ = ["InstantRecord", "InstantState", "InstantStatus"]
StatusFn = Callable[[InstantStatus], None]
NoteFn = Callable[[str], None]
log = logging.getLogger(__name__)


def _reporter(job: CliJob, progress: StatusFn | None) -> StatusFn:
    def report(current: InstantStatus) -> None:
        job.bytes(current.done, max(current.total, 1))
        if progress is not None:
            progress(current)

    return report


@audited("backup.instant", target="new_vm")
def start(caller: Caller, uri: str | None, repo: str | Path, vm: str, at: str | None,
          new_vm: str, *, images_dir: str | Path | None = None, bandwidth: int | None = None,
          detach: bool = False, key_file: str | Path | None = None,
          passphrase: str | None = None, progress: StatusFn | None = None,
          note: NoteFn | None = None) -> InstantStatus:
    """Define ``new_vm`` on overlays of backup ``at`` of ``vm``, start it and pull the
    data into the overlays (``bandwidth`` bytes/s); follow until done unless ``detach``
    (QEMU goes on alone: see :func:`resume`). A plain repository's chain is read in
    place; a store-backed one's (encrypted, zstd, remote) is opened next to the images
    first, with its key (without it nothing is written)."""
    opened = open_existing(caller, repo, key_file=key_file, passphrase=passphrase)
    directory = policy().new_images_dir(images_dir, trusted=caller.trusted_paths)
    with track(caller, "backup.instant", new_vm) as job, Host(uri) as host:
        record = instant.prepare(host, opened, vm, at, new_vm, directory, uri=uri,
                                 bandwidth=bandwidth)
        try:
            instant.start(host, record)
        except BaseException:
            instant.discard(host, record)
            raise
        message = (f"VM '{new_vm}' runs on overlays of backup {record.backup_id}; "
                   "its data moves in the background")
        job.note(message)
        if note is not None:
            note(message)
        for item in record.notes:
            job.note(item)
            if note is not None:
                note(item)
        if detach:
            result = instant.refresh(host, new_vm)
        else:
            result = instant.follow(host, new_vm, progress=_reporter(job, progress))
        job.result = result.model_dump(mode="json")
    return result


def list_recoveries(uri: str | None = None) -> list[InstantStatus]:
    """Every recorded recovery with its progress (completions noticed are recorded)."""
    records = instant.all_records()
    if not records:
        return []
    out = []
    with Host(uri) as host:
        for record in records:
            try:
                out.append(instant.refresh(host, record.vm))
            except KvmopsError as err:
                record.message = str(err)
                out.append(InstantStatus(record=record, vm_running=False, disks=[], done=0,
                                         total=0))
    return out


def status(uri: str | None, vm: str) -> InstantStatus:
    with Host(uri) as host:
        return instant.refresh(host, vm)


@audited("backup.instant.resume", target="vm")
def resume(caller: Caller, uri: str | None, vm: str, *, bandwidth: int | None = None,
           detach: bool = False, progress: StatusFn | None = None,
           note: NoteFn | None = None) -> InstantStatus:
    """Re-attach to a recovery (after kvmops, QEMU or the host stopped) and follow it."""
    with track(caller, "backup.instant", vm) as job, Host(uri) as host:
        result = instant.resume(host, vm, bandwidth=bandwidth,
                                note=_both(note, job.note))
        if not detach and result.record.state is not InstantState.COMPLETED:
            result = instant.follow(host, vm, progress=_reporter(job, progress))
        job.result = result.model_dump(mode="json")
    return result


def resume_all(caller: Caller, uri: str | None = None, *, detach: bool = True,
               note: NoteFn | None = None) -> list[str]:
    """Re-attach to every unfinished recovery (``kvmops serve`` at start-up): the VMs
    whose pull was resumed."""
    resumed = []
    for record in instant.all_records():
        if record.state is not InstantState.PULLING:
            continue
        try:
            resume(caller, uri, record.vm, detach=detach, note=note)
            resumed.append(record.vm)
        except KvmopsError as err:
            log.warning("instant recovery of VM '%s' not resumed: %s", record.vm, err)
    return resumed


def resume_in_background(caller: Caller, uri: str | None = None) -> threading.Thread:
    """:func:`resume_all` in a thread, then each recovery followed to its end and
    recorded (the server's start-up must not wait for it)."""
    def run() -> None:
        with contextlib.suppress(Exception):
            for vm in resume_all(caller, uri):
                with contextlib.suppress(Exception), Host(uri) as host:
                    instant.follow(host, vm, poll_s=2.0)

    thread = threading.Thread(target=run, name="instant-resume", daemon=True)
    thread.start()
    return thread


@audited("backup.instant.cancel", target="vm")
def cancel(caller: Caller, uri: str | None, vm: str) -> InstantRecord:
    """Stop the pulls: the VM keeps running, still reading the repository."""
    with Host(uri) as host:
        return instant.cancel(host, vm)


@audited("backup.instant.forget", target="vm")
def forget(caller: Caller, vm: str, uri: str | None = None) -> None:
    """Drop the record of a recovery that completed, or whose VM was removed (nothing
    reads its chain any more; a store-backed one's opened copies go with it)."""
    record = instant.load(vm)
    if record.state is not InstantState.COMPLETED:
        with Host(uri) as host:
            exists = host.has_domain(vm)
        if exists:
            from kvmops.errors import StateError

            raise StateError(f"the instant recovery of VM '{vm}' has not completed",
                             actual=record.state.value, required="completed",
                             hint=f"resume it ('kvmops backup instant resume {vm}'), or "
                                  "remove the VM first")
        instant.drop_work(record)
    instant.forget(vm)


def _both(first: NoteFn | None, second: NoteFn) -> NoteFn:
    def call(message: str) -> None:
        second(message)
        if first is not None:
            first(message)

    return call


def stop_copy(uri: str | None, vm: str) -> None:
    """Stop the pulls of ``vm`` (a cancelled API job): no audit of its own, the job's is."""
    instant.cancel_by_name(uri, vm)


def require_record(vm: str) -> InstantRecord:
    """The recovery of ``vm`` (NotFoundError when there is none)."""
    return instant.load(vm)


def left_pulling() -> list[InstantRecord]:
    """Recoveries an earlier kvmops left with their copy running (server start-up)."""
    return [r for r in instant.all_records() if r.state is InstantState.PULLING]
