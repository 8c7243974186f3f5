"""``kvmops vm migrate``: move a VM to another host.

A running VM migrates live (:mod:`kvmops.host.migration`: libvirt's ``migrate3``,
client-driven, the data stream straight from QEMU to QEMU); a shut-off one is copied by
the cold migration (:mod:`kvmops.services.coldmigration`; libvirt's migrate is never
used on a shut-off VM). Either way the preflight (:mod:`kvmops.services.migration_checks`)
runs first and refuses with every blocker at once.

Order of a live migration, so that a failure at any point leaves the VM whole on the
source: the copied disks' volumes are created on the target; the VM migrates with
``PERSIST_DEST`` (never ``UNDEFINE_SOURCE``); only when the target domain runs and is
persistent are the checkpoints redefined there, the source definition removed, and the
copied disks' files on the source deleted (only files in an allowed images directory of
this machine, or volumes of a storage pool of the source; others are left and named in
the result's notes). A cancel or a failure aborts the job (the VM keeps running on the
source) and removes what was made on the target: a half-defined domain, the created
volumes.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from kvmops.errors import (
    CancelledError,
    MigrationBlockedError,
    NotFoundError,
    StateError,
    ValidationError,
)
from kvmops.migration.model import (
    Blocker,
    CancelledFn,
    Kind,
    MigrationOptions,
    MigrationProgress,
    MigrationResult,
    Preflight,
    ProgressFn,
)
from kvmops.migration.preflight import parse_domain
from kvmops.services import hosts
from kvmops.services.audit import audited
from kvmops.services.caller import Caller
from kvmops.services.jobs import track
from kvmops.sizes import format_size

if TYPE_CHECKING:
    from kvmops.host.connection import Host
    from kvmops.store.db import Store

__all__ = ["Blocker", "MigrationOptions", "MigrationProgress", "MigrationResult",
           "Preflight", "check", "describe", "migrate", "migration_address"]

#: A host label naming the address other hosts' QEMU reach this host's QEMU at.
ADDRESS_LABEL = "migration-address"


# --------------------------------------------------------------------------- validation
def validate(options: MigrationOptions) -> None:
    if options.bandwidth_mib is not None and not 1 <= options.bandwidth_mib <= 1_000_000:
        raise ValidationError(f"invalid bandwidth {options.bandwidth_mib} MiB/s",
                              hint="give 1..1000000 MiB/s")
    if options.max_downtime_ms is not None and not 1 <= options.max_downtime_ms <= 600_000:
        raise ValidationError(f"invalid max downtime {options.max_downtime_ms} ms",
                              hint="give 1..600000 ms")
    if options.target_pool is not None and not options.copy_storage:
        raise ValidationError("--target-pool needs --copy-storage",
                              hint="add --copy-storage, or leave out --target-pool")
    hosts.validate_name(options.target)


# --------------------------------------------------------------------------- addresses
def _bracket(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _route_address(peer: str) -> str | None:
    """This machine's address on the route to ``peer`` (no packet is sent)."""
    try:
        infos = socket.getaddrinfo(peer, 16509, proto=socket.IPPROTO_UDP)
    except OSError:
        return None
    for family, _, _, _, addr in infos:
        with contextlib.suppress(OSError), socket.socket(family, socket.SOCK_DGRAM) as s:
            s.connect(addr)
            return str(s.getsockname()[0])
    return None


def migration_address(source_uri: str, target_uri: str, label: str | None = None
                      ) -> str | None:
    """Where the source's QEMU sends the migration stream (``tcp://ADDRESS``): the
    target host's ``migration-address`` label; else the host of the target's URI; else
    (the target is this machine on its unix socket) this machine's address on the route
    to the source host. None: libvirt's default (the target's host name)."""
    if label:
        return f"tcp://{_bracket(label)}"
    target_host = urlsplit(target_uri).hostname
    if target_host:
        return f"tcp://{_bracket(target_host)}"
    source_host = urlsplit(source_uri).hostname
    if source_host:
        local = _route_address(source_host)
        if local:
            return f"tcp://{_bracket(local)}"
    return None


def _label(caller: Caller, name: str, db: str | Store | None = None) -> str | None:
    try:
        known = hosts._find(db, name)  # the host record with its labels
    except Exception:  # no database: no labels
        return None
    return (known.labels or {}).get(ADDRESS_LABEL)


# --------------------------------------------------------------------------- connections
@contextlib.contextmanager
def connections(caller: Caller, source: str, target: str, db: str | Store | None = None
                ) -> Iterator[tuple[Host, Host, str, str]]:
    """Own connections to both hosts, by name (one when they are the same), and their
    URIs: not the shared pool, a migration holds them for minutes and the pool lends a
    URI to one caller at a time (remote ones with keepalive)."""
    from kvmops.host import remote

    src_uri = hosts.uri_of(caller, source, db)
    dst_uri = hosts.uri_of(caller, target, db)
    with contextlib.ExitStack() as stack:
        src = stack.enter_context(contextlib.closing(remote.open_remote(src_uri)))
        dst = src if dst_uri == src_uri else stack.enter_context(
            contextlib.closing(remote.open_remote(dst_uri)))
        yield src, dst, src_uri, dst_uri


def _kind_of(src: Host, vm: str) -> Kind:
    from kvmops.host import migration as live

    src.domain(vm)  # NotFoundError naming the source
    return "live" if live.is_running(src, vm) else "cold"


def _preflight(caller: Caller, src: Host, dst: Host, vm: str, options: MigrationOptions,
               *, source_name: str, kind: Kind) -> Preflight:
    """The preflight (:mod:`kvmops.services.migration_checks`: the one place of the
    blocker rules, live and cold)."""
    from kvmops.services import migration_checks

    return migration_checks.preflight(caller, src, dst, vm, options,
                                      source_name=source_name, kind=kind)


def refuse(found: Preflight) -> MigrationBlockedError:
    """Every blocker in one line, each with its remedy."""
    parts = [f"{b.code}: {b.message} ({b.remedy})" for b in found.blockers]
    return MigrationBlockedError(
        f"cannot migrate '{found.vm}' from '{found.source}' to '{found.target}': "
        + "; ".join(parts), blockers=list(found.blockers),
        hint="fix each blocker named, then run it again (--dry-run checks only)")


def check(caller: Caller, vm: str, options: MigrationOptions, *,
          source: str | None = None, db: str | Store | None = None) -> Preflight:
    """The preflight alone (``--dry-run``, the API's preflight): never refuses."""
    validate(options)
    source_name = source or hosts.LOCAL
    with connections(caller, source_name, options.target, db) as (src, dst, _, _):
        kind = _kind_of(src, vm)
        return _preflight(caller, src, dst, vm, options, source_name=source_name,
                          kind=kind)


def plan_lines(found: Preflight, options: MigrationOptions) -> list[str]:
    """What the migration would do, for ``--dry-run``."""
    lines = [f"{found.kind} migration of '{found.vm}' from '{found.source}' to "
             f"'{found.target}'"]
    if options.copy_storage:
        pool = options.target_pool or "(the pool holding the same directory)"
        lines.append(f"copy local disks into pool {pool} on '{found.target}'")
    else:
        lines.append("disks stay on shared storage")
    for what, value in (("bandwidth", options.bandwidth_mib and
                         f"{options.bandwidth_mib} MiB/s"),
                        ("max downtime", options.max_downtime_ms and
                         f"{options.max_downtime_ms} ms"),
                        ("auto-converge", options.auto_converge and "on"),
                        ("post-copy", options.postcopy and "after 3 memory passes")):
        if value:
            lines.append(f"{what}: {value}")
    lines.extend(f"warning: {w}" for w in found.warnings)
    lines.extend(f"blocker {b.code}: {b.message} ({b.remedy})" for b in found.blockers)
    return lines


def describe(report: MigrationProgress) -> str:
    """The progress line's text: phase, remaining, dirty rate, iteration, downtime."""
    parts = [report.phase]
    if report.data_remaining is not None:
        parts.append(f"{format_size(report.data_remaining)} left")
    if report.dirty_rate is not None:
        parts.append(f"dirty {report.dirty_rate} {report.dirty_rate_unit or ''}".strip())
    if report.iteration is not None:
        parts.append(f"pass {report.iteration}")
    if report.expected_downtime_ms is not None:
        parts.append(f"downtime ~{report.expected_downtime_ms} ms")
    return ", ".join(parts)


# --------------------------------------------------------------------------- the use case
@audited("vm.migrate", target="vm")
def migrate(caller: Caller, vm: str, options: MigrationOptions, *,
            source: str | None = None, progress: ProgressFn | None = None,
            cancelled: CancelledFn | None = None, db: str | Store | None = None) -> MigrationResult:
    """Migrate ``vm`` from host ``source`` (None: this machine) to ``options.target``
    (host names of ``db``, default the configured database; the API passes its own).
    MigrationBlockedError lists every blocker; CancelledError after a cancel (the VM
    still on the source)."""
    validate(options)
    source_name = source or hosts.LOCAL
    with connections(caller, source_name, options.target, db) as (src, dst, src_uri,
                                                                    dst_uri):
        kind = _kind_of(src, vm)
        if progress is not None:
            progress(MigrationProgress(phase="preflight"))
        found = _preflight(caller, src, dst, vm, options, source_name=source_name,
                           kind=kind)
        if not found.ok:
            raise refuse(found)
        if options.dry_run:
            return MigrationResult(vm=vm, source=source_name, target=options.target,
                                   kind=kind, seconds=0.0,
                                   notes=["dry run: nothing changed",
                                          *plan_lines(found, options)])
        if kind == "cold":
            from kvmops.services import (  # type: ignore[attr-defined,unused-ignore]
                coldmigration,  # owned by the cold migration
            )

            done: MigrationResult = coldmigration.cold_migrate(caller, vm, options, source=source,
                                              progress=progress, cancelled=cancelled,
                                              checked=found)
            return done
        label = _label(caller, options.target, db)
        return _live(caller, src, dst, vm, options, found, source_name=source_name,
                     migrate_uri=migration_address(src_uri, dst_uri, label),
                     progress=progress, cancelled=cancelled)


def _job_report(job: Any, report: MigrationProgress) -> None:
    """The job's bytes and percent, its message the progress line (:func:`describe`)."""
    if report.data_total:
        job.bytes(report.data_processed or 0, report.data_total)
        if report.data_processed is not None:
            job.percent(min(99.0, 100.0 * report.data_processed / report.data_total),
                        describe(report))


def _live(caller: Caller, src: Host, dst: Host, vm: str, options: MigrationOptions,
          found: Preflight, *, source_name: str, migrate_uri: str | None,
          progress: ProgressFn | None, cancelled: CancelledFn | None) -> MigrationResult:
    from kvmops.host import migration as live

    started = time.monotonic()
    asked = threading.Event()
    notes = list(found.warnings)

    def is_cancelled() -> bool:
        if not asked.is_set() and cancelled is not None and cancelled():
            asked.set()
        return asked.is_set()

    with track(caller, "vm.migrate", vm, on_cancel=asked.set) as job:
        dom = src.domain(vm)
        uuid = live.domain_uuid(src, vm)
        live_xml = live.migratable_xml(dom)
        req = live.LiveRequest(migrate_uri=migrate_uri, bandwidth_mib=options.bandwidth_mib,
                               auto_converge=options.auto_converge,
                               postcopy=options.postcopy,
                               max_downtime_ms=options.max_downtime_ms)
        created: list[str] = []
        moved: dict[str, tuple[str, str]] = {}  # target dev -> (source path, target path)

        def report(update: MigrationProgress) -> None:
            _job_report(job, update)
            if progress is not None:
                progress(update)

        try:
            if options.copy_storage:
                moved = _prepare_copies(src, dst, dom, live_xml, options, created)
                paths = {dev: new for dev, (_, new) in moved.items()}
                req.copy_disks = list(moved)
                req.dest_xml = live.rewrite_disk_paths(live_xml, paths)
                req.persist_xml = live.rewrite_disk_paths(
                    live.migratable_xml(dom, inactive=True), paths)
            else:
                # Storage both hosts reach (the preflight said so): libvirt recognises
                # only cluster file systems as shared, hence UNSAFE for the cache check.
                req.unsafe = True
            outcome = live.run_live(src, dst, vm, req, progress=report,
                                    cancelled=is_cancelled)
        except CancelledError as err:
            _clean_target(dst, vm, uuid, created)
            raise CancelledError(f"migration of '{vm}' to '{options.target}' cancelled: "
                                 f"the VM keeps running on '{source_name}'",
                                 hint="run it again when ready") from err
        except BaseException:
            _clean_target(dst, vm, uuid, created)
            raise
        if not live.wait_gone(lambda: live.target_ready(dst, vm), 30):
            raise StateError(f"'{vm}' migrated but does not run persistently on "
                             f"'{options.target}'; its source definition is kept",
                             hint=f"check it: kvmops vm info {vm} --host {options.target}")
        try:
            names = live.handover_checkpoints(src.domain(vm), dst)
            if names:
                notes.append(f"checkpoints redefined on '{options.target}': "
                             f"{', '.join(names)}")
        except Exception as err:  # the VM moved; only the backup chain is affected
            notes.append(f"checkpoints not carried over ({err}); the next backup is a "
                         "full one")
        live.undefine_source(src, vm)
        for _, (old, _new) in moved.items():
            notes.append(_remove_source_copy(src, source_name, old))
        result = MigrationResult(
            vm=vm, source=source_name, target=options.target, kind="live",
            seconds=round(time.monotonic() - started, 2), downtime_ms=outcome.downtime_ms,
            data_transferred=outcome.data_transferred,
            disks=[d.path for d in parse_domain(live.migratable_xml(dst.domain(vm))).disks
                   if d.path],
            notes=notes + (["switched to post-copy"] if outcome.postcopy_started else []))
        job.result = result
        return result


def _prepare_copies(src: Host, dst: Host, dom: Any, live_xml: str,
                    options: MigrationOptions, created: list[str]
                    ) -> dict[str, tuple[str, str]]:
    """Create the target volumes for the copied disks (appended to ``created`` as they
    are made, for the cleanup); ``dev -> (source path, target path)``."""
    from kvmops.host import migration as live

    moved: dict[str, tuple[str, str]] = {}
    for disk in live.copied_disks(live_xml):
        assert disk.path is not None
        pool = options.target_pool or _directory_pool(dst, os.path.dirname(disk.path))
        directory = live.pool_dir(dst, pool)
        name = os.path.basename(disk.path)
        path = live.create_volume(dst, pool, name, live.capacity(dom, disk.path),
                                  disk.fmt)
        created.append(path)
        if os.path.dirname(path) != directory.rstrip("/"):
            raise StateError(f"volume {name} landed at {path}, outside pool {pool}")
        moved[disk.target] = (disk.path, path)
    return moved


def _directory_pool(dst: Host, directory: str) -> str:
    """The target's pool for a copied disk without --target-pool: the running pool of
    the disk's directory there."""
    from kvmops.host import pools

    found = pools.pool_in_directory(dst, directory)
    if found is not None:
        return found
    raise NotFoundError(f"no running directory pool for {directory} on {dst.uri}",
                        hint="name the target's pool for the copied disks with "
                             "--target-pool POOL")


def _clean_target(dst: Host, vm: str, uuid: str, created: list[str]) -> None:
    """Remove what a failed or cancelled migration made on the target."""
    from kvmops.host import migration as live

    with contextlib.suppress(Exception):
        live.remove_target_definition(dst, vm, uuid)
    if live.target_ready(dst, vm):
        return  # it runs there: nothing of it is removed
    for path in created:
        with contextlib.suppress(Exception):
            live.delete_volume_path(dst, path)


def _remove_source_copy(src: Host, source_name: str, path: str) -> str:
    """Delete a copied disk's source file: a volume of a pool of the source, or (on this
    machine) a file in an allowed images directory; other files are kept."""
    from kvmops.host import migration as live
    from kvmops.host.remote import is_remote
    from kvmops.paths import policy

    if not is_remote(src.uri) and policy().in_image_dirs(Path(path)):
        if not live.remove_source_volume(src, path):
            live.remove_local_file(path)
        return f"removed the source copy {path} on '{source_name}'"
    if is_remote(src.uri) and live.remove_source_volume(src, path):
        return f"removed the source copy {path} (a pool volume) on '{source_name}'"
    return (f"kept the source copy {path} on '{source_name}' (outside the allowed images "
            "directories); remove it when no longer needed")
