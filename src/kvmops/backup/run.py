"""The run of one backup, the same for every engine (libvirt, raw QMP, offline qemu-img).

An engine plans, then writes its files inside :meth:`BackupRun.running`::

    with exclusive(repo, vm, "qmp"):                      # one backup of a VM at a time
        run = BackupRun(repo, vm, progress=progress)
        with run.running(plan.type, clean_up, transport="qmp"):
            ... copy into run.partial, run.report(done, total) ...
            manifest = run.publish(run.manifest(type=..., ...))

The skeleton keeps what every engine must keep alike:

* SIGTERM and SIGHUP (``kvmops backup cancel`` sends SIGTERM) and Ctrl-C take the
  clean-up path; the clean-up runs to its end with those signals ignored, and the run
  ends in the one cancel error (:class:`CancelledError`, exit 130) saying what was
  cleaned up. Python allows handlers only in the main thread; elsewhere (API workers)
  the caller cancels through the engine.
* A run that does not complete calls the engine's clean-up, discards the partial
  directory and publishes nothing; a lost connection to libvirtd reads as one line
  saying what is left for the next run.
* The events (started, completed, failed, cancelled) go to the job log.
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

import kvmops
from kvmops.backup import jobs
from kvmops.backup.model import BackupType, Manifest, disk_chain, new_backup_id
from kvmops.backup.repository import Repository
from kvmops.errors import CancelledError, HostUnavailableError, KvmopsError

ProgressFn = Callable[[int, int], None]
NoteFn = Callable[[str], None]
SignalHandler = Callable[[int, FrameType | None], Any]

# Turned into the clean-up path while a backup runs.
INTERRUPT_SIGNALS = (signal.SIGTERM, signal.SIGHUP)


class NoteLog:
    """Collects the notes that go into a manifest while passing each on to the user."""

    def __init__(self, sink: NoteFn | None = None) -> None:
        self.sink = sink
        self.messages: list[str] = []

    def __call__(self, message: str) -> None:
        self.messages.append(message)
        if self.sink:
            self.sink(message)


class Interrupted(CancelledError):
    """A signal (``backup cancel`` sends SIGTERM) turned into the clean-up path."""


def raise_interrupt(signum: int, _frame: FrameType | None) -> None:
    """Signal handler: interrupt the backup where it is, so that its clean-up runs."""
    raise Interrupted(f"backup interrupted by signal {signal.Signals(signum).name}")


def is_interrupt(err: BaseException) -> bool:
    return isinstance(err, Interrupted | KeyboardInterrupt)


def interrupt_reason(err: BaseException) -> str:
    """How the user reads an interruption: 'Ctrl-C' or the signal."""
    return "Ctrl-C" if isinstance(err, KeyboardInterrupt) else str(err)


def backup_time(backup_id: str) -> datetime:
    """The point in time a backup id names (ids are UTC timestamps)."""
    return datetime.strptime(backup_id, "%Y%m%dT%H%M%S.%fZ").replace(tzinfo=UTC)


@contextlib.contextmanager
def exclusive(repo: Repository, vm: str, transport: str = "libvirt") -> Iterator[None]:
    """The repository's lock on the VM and the host's one-backup-per-VM registration
    (a second backup of the VM, into any repository, is refused in one line)."""
    with repo.lock(vm, "backup"), jobs.registered(vm, str(repo.root), transport):
        yield


@dataclass
class Cleanup:
    """What an engine's clean-up did, for the one line the user reads."""

    done: str  # "the unfinished backup ID was removed and checkpoint C deleted"
    left: list[str] = field(default_factory=list)  # unreachable now: the next run does it


class BackupRun:
    """One backup attempt of ``vm`` into ``repo`` (see the module's docstring)."""

    def __init__(self, repo: Repository, vm: str, *, progress: ProgressFn | None = None
                 ) -> None:
        self.repo = repo
        self.vm = vm
        self.backup_id = new_backup_id()
        self.progress = progress
        self.started = time.monotonic()
        self.partial: Path | None = None
        self.published: Manifest | None = None
        self.chains: dict[str, int] = {}  # disk -> its chain's length at this backup

    def removed(self, extra: str = "") -> str:
        """The usual clean-up phrase: the partial directory, and ``extra``."""
        return f"the unfinished backup {self.backup_id} was removed{extra}"

    def report(self, done: int, total: int) -> None:
        if self.progress:
            self.progress(done, total)

    def manifest(self, **fields: Any) -> Manifest:
        """This run's manifest: id, VM, time, tool version and duration filled in."""
        fields.setdefault("time", backup_time(self.backup_id))
        return Manifest(id=self.backup_id, vm=self.vm, tool_version=kvmops.__version__,
                        duration_s=round(time.monotonic() - self.started, 3), **fields)

    def publish(self, manifest: Manifest, history: Iterable[Manifest] = ()) -> Manifest:
        """Move the partial directory into place with its manifest (atomic).

        ``history``: the VM's earlier backups in this repository (the plan's), from which
        each disk's chain length is counted for the completed event's summary."""
        assert self.partial is not None
        self.repo.publish(self.vm, self.partial, manifest)
        self.published = manifest
        known = {m.id: m for m in history} | {manifest.id: manifest}
        for disk in manifest.disks:
            with contextlib.suppress(KvmopsError):
                self.chains[disk.target] = len(disk_chain(known, manifest.id, disk.target))
        return manifest

    @contextlib.contextmanager
    def running(self, kind: BackupType | str, clean_up: Callable[[], Cleanup], *,
                handlers: Mapping[signal.Signals, SignalHandler] | None = None,
                work_bytes: int | None = None, **event: Any) -> Iterator[Path]:
        """Create the partial directory and run the engine's work inside the skeleton.

        ``clean_up`` undoes the engine's side (jobs, checkpoints, bitmaps) of a run that
        did not complete; ``handlers`` are extra signal handlers for the run (the QMP
        engine's pause and resume); ``work_bytes`` bounds what the engine writes into the
        partial directory (see Repository.start_partial); ``event`` goes into the started
        event.
        """
        vm, backup_id = self.vm, self.backup_id
        kind = BackupType(kind).value
        self.partial = self.repo.start_partial(vm, backup_id, work_bytes)
        received: list[int] = []

        def interrupt(signum: int, frame: FrameType | None) -> None:
            # remembered: library code on the way up may catch Interrupted and raise its
            # own error instead (seen under load inside a QMP call); the run still counts
            # as cancelled
            received.append(signum)
            raise_interrupt(signum, frame)

        wanted: dict[signal.Signals, SignalHandler] = {
            s: interrupt for s in INTERRUPT_SIGNALS}
        wanted.update(handlers or {})
        in_main = threading.current_thread() is threading.main_thread()
        previous = ({s: signal.getsignal(s) for s in {*wanted, signal.SIGINT}}
                    if in_main else {})
        try:
            for sig in previous:
                if sig in wanted:
                    signal.signal(sig, wanted[sig])
            jobs.record_event(vm, "started", backup_id=backup_id, type=kind, **event)
            yield self.partial
        except BaseException as err:
            for sig in previous:
                signal.signal(sig, signal.SIG_IGN)  # the clean-up must run to its end
            interrupted = is_interrupt(err) or bool(received)
            try:
                cleanup = clean_up()
            finally:  # even when the engine's clean-up fails, nothing half-made stays
                self.repo.discard_partial(self.partial)
                jobs.record_event(vm, "cancelled" if interrupted else "failed",
                                  backup_id=backup_id, error=str(err))
            if interrupted and not cleanup.left:
                reason = (interrupt_reason(err) if is_interrupt(err) else
                          f"backup interrupted by signal {signal.Signals(received[0]).name}")
                raise CancelledError(
                    f"backup of VM '{vm}' cancelled ({reason}): nothing was "
                    f"published; {cleanup.done}",
                    hint=f"the next backup of {vm} still holds every change since the last "
                         "complete one") from err
            if isinstance(err, HostUnavailableError) or cleanup.left:
                left = cleanup.left
                raise HostUnavailableError(
                    f"lost the connection to libvirtd while backing up VM '{vm}': nothing was "
                    f"published and {self.removed()}"
                    + (f"; {', '.join(left)} is left for the next backup of {vm} to clean up"
                       if left else ""),
                    hint=f"once libvirtd answers again ('kvmops host doctor'), run the backup "
                         f"again: the next 'kvmops backup create {vm}' cleans up first"
                ) from err
            raise
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        # The repository: the metrics find the manifest (disks, size, chain) from here;
        # the summary serves them where the manifest cannot be read without a key or a
        # network round trip (a sealed or remote repository).
        summary = None
        if self.published is not None:
            summary = {"time": self.published.time.isoformat(),
                       "bytes": sum(d.bytes_written for d in self.published.disks),
                       "disks": [d.target for d in self.published.disks],
                       "notes": self.published.notes, "chains": self.chains}
        jobs.record_event(vm, "completed", backup_id=backup_id, type=kind,
                          repo=str(self.repo.root), location=self.repo.location,
                          summary=summary)
