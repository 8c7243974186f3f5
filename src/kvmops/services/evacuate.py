"""``kvmops host evacuate NAME``: every running VM of a host moved to the others.

First the plan: each running VM (memory, vCPUs, the networks it joins, and with
``copy_storage`` its disks' sizes) is placed among the other reachable hosts by
kvmops.migration.placement (biggest first, each taking its share of the chosen host),
then the migration preflight runs for each VM and its target; a VM it blocks is placed
again without that host (on at most MAX_TRIES hosts), so the plan names every VM that
cannot move with its blockers. ``dry_run`` stops there. Otherwise the VMs that
can move are migrated live by kvmops.services.migration, at most ``parallel`` at once;
the report says per VM moved (with its time and downtime) or why not. VMs that are not
running stay where they are (named in the report); a VM that cannot be placed or is
blocked is not attempted, and the others still move.

Why the preflight before any migration: an operator draining a host for maintenance
wants to know up front which VMs will remain, not after half of them moved.
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from kvmops.errors import KvmopsError, ValidationError
from kvmops.migration.model import (
    Blocker,
    CancelledFn,
    MigrationOptions,
    MigrationProgress,
)
from kvmops.migration.placement import DEFAULT_MEMORY_RESERVE, DiskNeed, Needs, plan
from kvmops.records import Record
from kvmops.services import hosts, placement
from kvmops.services.audit import audited
from kvmops.services.caller import Caller

if TYPE_CHECKING:
    from kvmops.host.capacity import VmTake
    from kvmops.store.db import Store

MAX_PARALLEL = 16
#: Hosts a VM is preflighted on before it counts as blocked everywhere.
MAX_TRIES = 3

Status = Literal["planned", "blocked", "no-room", "moved", "failed", "cancelled"]

__all__ = ["EvacuationItem", "EvacuationReport", "evacuate", "plan_evacuation"]


@dataclass
class EvacuationItem(Record):
    """One running VM of the evacuated host: where it goes and what became of it."""

    vm: str
    target: str | None  # the host placement chose (None: none fits)
    reason: str  # why that host (or why none)
    status: Status
    memory: int = 0  # bytes
    vcpus: int = 0
    blockers: list[Blocker] = field(default_factory=list)  # from the preflight
    hosts: list[str] = field(default_factory=list)  # every host's verdict, one line each
    error: str | None = None  # failed: why
    seconds: float | None = None
    downtime_ms: int | None = None
    notes: list[str] = field(default_factory=list)

    def line(self) -> str:
        """The plan's/report's line for this VM."""
        where = self.target or "-"
        text = f"{self.vm} -> {where}: {self.status}"
        if self.status in ("planned", "no-room"):
            text += f" ({self.reason})"
        elif self.status == "blocked":
            text += ": " + "; ".join(f"{b.code}: {b.message} ({b.remedy})"
                                     for b in self.blockers)
        elif self.status == "moved":
            text += f" in {self.seconds or 0:.1f} s" + (
                f", downtime {self.downtime_ms} ms" if self.downtime_ms is not None else "")
        elif self.error:
            text += f": {self.error}"
        return text


@dataclass
class EvacuationReport(Record):
    """The plan (``dry_run``) or the outcome of evacuating ``host``."""

    host: str
    dry_run: bool
    parallel: int
    copy_storage: bool
    vms: list[EvacuationItem] = field(default_factory=list)
    staying: list[str] = field(default_factory=list)  # VMs not running: not moved
    unreachable: dict[str, str] = field(default_factory=dict)  # other hosts, why
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Every running VM can move (plan) or moved (evacuation)."""
        wanted = "planned" if self.dry_run else "moved"
        return all(item.status == wanted for item in self.vms)

    def counts(self) -> dict[str, int]:
        found: dict[str, int] = {}
        for item in self.vms:
            found[item.status] = found.get(item.status, 0) + 1
        return found


# --------------------------------------------------------------------------- the plan
def _needs(take: VmTake, source: str, exclude: list[str], copy_storage: bool) -> Needs:
    import posixpath

    disks = []
    if copy_storage:
        disks = [DiskNeed(size=d.capacity, directory=posixpath.dirname(d.path))
                 for d in take.disks if d.device == "disk" and d.path and d.capacity]
    return Needs(vm=take.name, memory=take.memory, vcpus=take.vcpus,
                 networks=list(take.networks), disks=disks, exclude=[source, *exclude])


@contextlib.contextmanager
def _source(uri: str) -> Iterator[tuple[list[VmTake], list[str]]]:
    from kvmops.host import capacity, remote

    with contextlib.closing(remote.open_remote(uri)) as conn:
        running, staying = [], []
        for domain in conn.all_domains():
            try:
                if domain.is_active():
                    running.append(capacity.vm_take(conn, domain.name))
                else:
                    staying.append(domain.name)
            except KvmopsError:  # gone while listed
                continue
        yield running, sorted(staying)


def _preflight(caller: Caller, vm: str, target: str, source: str, copy_storage: bool,
               db: str | Store | None = None) -> tuple[list[Blocker], list[str]]:
    """The migration preflight for the VM and a target: (blockers, warnings); host names
    are those of ``db`` (the API's own database, not the configured one)."""
    from kvmops.services import migration  # the live migration's use case (lazy)

    try:
        found = migration.check(caller, vm, MigrationOptions(
            target=target, copy_storage=copy_storage, dry_run=True), source=source, db=db)
    except KvmopsError as err:
        return [Blocker("unreachable", err.message,
                        err.hint or "check the host, then run it again")], []
    return list(found.blockers), list(found.warnings)


def plan_evacuation(caller: Caller, host_name: str, db: str | Store | None = None, *,
                    parallel: int = 2, copy_storage: bool = False,
                    deadline: float = placement.DEFAULT_DEADLINE_S,
                    preflight: bool = True) -> EvacuationReport:
    """Where each running VM of ``host_name`` would go, and what would stop it; nothing
    is changed."""
    hosts.validate_name(host_name)
    if not 1 <= parallel <= MAX_PARALLEL:
        raise ValidationError(f"--parallel {parallel} is out of range",
                              hint=f"give 1 to {MAX_PARALLEL} migrations at once")
    source_uri = hosts.uri_of(caller, host_name, db)
    same = [name for name, uri, _local in _known(db)
            if uri == source_uri and name != host_name]
    report = EvacuationReport(host=host_name, dry_run=True, parallel=parallel,
                              copy_storage=copy_storage)
    with _source(source_uri) as (running, staying):
        report.staying = staying
        if not running:
            report.notes.append(f"no VM runs on host '{host_name}'")
            return report
        others = placement.facts(caller, db, deadline=deadline, exclude=(host_name, *same))
        report.unreachable = {h.name: h.error or "no answer"
                              for h in others if not h.reachable}
        wanted = [_needs(t, host_name, same, copy_storage) for t in running]
        ratio = placement.vcpu_ratio()
        # A VM the preflight blocks on its host is placed again without that host (the
        # next by room may take it), until every VM has a host it may go to or none.
        checked: dict[tuple[str, str], tuple[list[Blocker], list[str]]] = {}
        first: dict[str, tuple[str, list[Blocker]]] = {}  # VM -> its first blocked host
        for _round in range(len(others) + 1):
            placed = plan(others, wanted, vcpu_ratio=ratio,
                          memory_reserve=DEFAULT_MEMORY_RESERVE)
            if not preflight:
                break
            again = False
            for needs, where in zip(wanted, placed, strict=True):
                if where.host is None:
                    continue
                key = (needs.vm, where.host)
                if key not in checked:
                    checked[key] = _preflight(caller, needs.vm, where.host, host_name,
                                              copy_storage, db)
                blockers = checked[key][0]
                if blockers:
                    first.setdefault(needs.vm, (where.host, blockers))
                    needs.avoid[where.host] = "preflight: " + ", ".join(
                        dict.fromkeys(b.code for b in blockers))
                    if len(needs.avoid) >= MAX_TRIES:  # blocked wherever it goes
                        for other in others:
                            needs.avoid.setdefault(other.name, f"not tried (blocked on "
                                                   f"{MAX_TRIES} hosts)")
                    again = True
            if not again:
                break
    for take, where in zip(running, placed, strict=True):
        item = EvacuationItem(vm=take.name, target=where.host, reason=where.reason,
                              status="planned" if where.host else "no-room",
                              memory=take.memory, vcpus=take.vcpus, hosts=where.lines())
        if where.host is not None:
            blockers, warnings = checked.get((take.name, where.host), ([], []))
            item.notes.extend(warnings)
            if blockers:  # only when the rounds ran out
                item.status, item.blockers = "blocked", blockers
        elif take.name in first:  # every host that had room is blocked: say the first's
            item.target, item.blockers = first[take.name]
            item.status = "blocked"
        if take.name in first and item.target != first[take.name][0]:
            blocked_at, blockers = first[take.name]
            item.notes.append(f"not {blocked_at}: " + "; ".join(
                f"{b.code}: {b.message}" for b in blockers))
        report.vms.append(item)
    return report


def _known(db: str | Store | None) -> list[tuple[str, str, bool]]:
    return [(k.name, k.uri, k.local) for k in hosts._known(db)]


# --------------------------------------------------------------------------- the moves
@audited("host.evacuate", target="host_name")
def evacuate(caller: Caller, host_name: str, db: str | Store | None = None, *,
             parallel: int = 2, dry_run: bool = False, copy_storage: bool = False,
             bandwidth_mib: int | None = None, auto_converge: bool = False,
             deadline: float = placement.DEFAULT_DEADLINE_S,
             on_plan: Callable[[EvacuationReport], None] | None = None,
             progress: Callable[[str, MigrationProgress], None] | None = None,
             note: Callable[[str], None] | None = None,
             cancelled: CancelledFn | None = None) -> EvacuationReport:
    """Plan (``on_plan`` hears it), then unless ``dry_run`` migrate every VM that can
    move, ``parallel`` at once; ``progress`` hears each VM's migration progress, ``note``
    a line when one starts and ends; after ``cancelled`` no new one starts and the
    running ones are cancelled (their VMs stay on the source). ``bandwidth_mib`` and
    ``auto_converge`` apply to each migration (as ``vm migrate``'s options)."""
    if bandwidth_mib is not None and not 1 <= bandwidth_mib <= 1_000_000:
        raise ValidationError(f"invalid bandwidth {bandwidth_mib} MiB/s",
                              hint="give 1..1000000 MiB/s")
    report = plan_evacuation(caller, host_name, db, parallel=parallel,
                             copy_storage=copy_storage, deadline=deadline)
    if on_plan is not None:
        on_plan(report)
    if dry_run:
        return report
    report.dry_run = False
    from kvmops.services import migration  # the live migration's use case (lazy)

    interrupted = threading.Event()  # Ctrl-C: as a cancel

    def stop() -> bool:
        return interrupted.is_set() or (cancelled is not None and cancelled())

    lock = threading.Lock()

    def tell(text: str) -> None:
        if note is not None:
            with lock:
                note(text)

    def move(item: EvacuationItem) -> None:
        assert item.target is not None
        if stop():
            item.status, item.error = "cancelled", "cancelled before it started"
            return
        tell(f"{item.vm}: migrating to {item.target}")
        started = time.monotonic()

        def report_progress(update: MigrationProgress) -> None:
            if progress is not None:
                progress(item.vm, update)

        try:
            result = migration.migrate(
                caller, item.vm, MigrationOptions(target=item.target,
                                                  copy_storage=copy_storage,
                                                  bandwidth_mib=bandwidth_mib,
                                                  auto_converge=auto_converge),
                source=host_name, progress=report_progress, cancelled=stop, db=db)
        except KvmopsError as err:
            item.status = "cancelled" if stop() else "failed"
            item.error = err.message
        except Exception as err:  # a bug: reported for this VM, the others go on
            item.status, item.error = "failed", f"{type(err).__name__}: {err}"
        else:
            item.status = "moved"
            item.seconds = result.seconds
            item.downtime_ms = result.downtime_ms
            item.notes.extend(result.notes)
        if item.seconds is None:
            item.seconds = time.monotonic() - started
        tell(item.line())

    def on_sigint(_signum: int, _frame: object) -> None:  # Ctrl-C: a cancel
        if not interrupted.is_set():
            interrupted.set()
            tell("cancelling: no new migration starts, the running ones abort")

    # A handler (not KeyboardInterrupt, which may land inside the executor's own code)
    # in the main thread only: the command line's; API jobs run in worker threads.
    previous = (signal.signal(signal.SIGINT, on_sigint)
                if threading.current_thread() is threading.main_thread() else None)
    try:
        movable = [item for item in report.vms if item.status == "planned"]
        with ThreadPoolExecutor(max_workers=parallel,
                                thread_name_prefix="kvmops-evacuate") as pool:
            for future in [pool.submit(move, item) for item in movable]:
                future.result()
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
    return report
