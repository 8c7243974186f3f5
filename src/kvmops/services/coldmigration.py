"""Cold migration: a shut-off VM moves to another host -- never with libvirt's migrate,
which is for running VMs (on a shut-off one it can lose the VM on both hosts).

With ``--copy-storage`` its disks are copied, and the order is what keeps the source
safe: the preflight first (:mod:`kvmops.services.migration_checks`, the one place of the
blocker rules: all named at once, each with its remedy; this module only plans the copy
-- paths, sizes, formats -- and checks again right before the switch-over that the VM
is still shut off and unchanged); then each
disk file is copied as its bytes into a new volume of the target's pool (created with
the format the VM's XML names and the disk's size -- nothing probes a format), hashed
while sent; then every copy is read back on the target and compared byte for byte; then
the VM's persistent XML, rewritten through the typed model for the new paths (UUID,
MACs and the rest kept), is defined on the target and read back. Only then is the VM
undefined on the source and its disk files removed there (when they lie in an allowed
image directory and no other VM on the source uses them; kept and named in the notes
otherwise). An interruption before that point -- ``cancelled()``, an error, Ctrl-C --
removes what was made on the target (volumes, definition) and leaves the source as it
was; a killed process leaves at most a volume on the target, which a retry names (and
never overwrites).

Without ``--copy-storage`` the disks must already be where both hosts see them (a
volume of an active pool on the target at the same path, as long as the source's file):
only the definition moves (the preflight checks that too).
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from lxml import etree

from kvmops.errors import (
    KvmopsError,
    StateError,
    StorageError,
)
from kvmops.host import migration_facts, transfer
from kvmops.host import pools as host_pools
from kvmops.host.connection import Domain, Host
from kvmops.migration.model import (
    CancelledFn,
    MigrationOptions,
    MigrationProgress,
    MigrationResult,
    Preflight,
    ProgressFn,
)
from kvmops.migration.preflight import (
    DEFAULT_POOL,
    copied_disks,
    copy_pool,
    parse_domain,
    volume_names,
)
from kvmops.paths import is_within, policy
from kvmops.services.caller import Caller
from kvmops.sizes import format_size
from kvmops.storage.model import parse_pool
from kvmops.vm.domxml import DomainDocument, OwnedFile, SnapshotDocument

__all__ = ["DEFAULT_POOL", "DiskMove", "cold_migrate", "plan_volume_names", "rewrite_xml",
           "volume_xml"]

log = logging.getLogger(__name__)

PROGRESS_INTERVAL = 0.2  # seconds between progress reports of one phase


@dataclass
class DiskMove:
    """One disk file to copy: where it is, as what, and where it goes."""

    target: str  # the VM's device name (vda)
    source: str  # its file on the source host
    fmt: str  # <driver type>: raw or qcow2
    length: int = 0  # bytes of the file
    capacity: int = 0  # the disk's size as the guest sees it
    volume: str = ""  # its volume name in the target pool
    path: str = ""  # its file on the target host
    sha256: str = ""
    wire: int = 0  # bytes sent as data (its holes were not sent)


@dataclass
class _Plan:
    vm: str
    uuid: str
    xml: str
    pool: str
    pool_dir: str
    shared: bool = False  # no --copy-storage: the disks stay where both hosts see them
    moves: list[DiskMove] = field(default_factory=list)
    snapshots: list[tuple[str, str]] = field(default_factory=list)  # (name, XML), parents first
    current_snapshot: str | None = None
    notes: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------- pure parts
def volume_xml(name: str, capacity: int, fmt: str) -> str:
    """libvirt's ``<volume>`` for a copied disk: the format named, never probed, and the
    disk's exact size (a raw volume is then exactly as long as the file it receives)."""
    root = etree.Element("volume")
    etree.SubElement(root, "name").text = name
    etree.SubElement(root, "capacity", unit="bytes").text = str(capacity)
    etree.SubElement(root, "allocation", unit="bytes").text = "0"
    target = etree.SubElement(root, "target")
    etree.SubElement(target, "format", type=fmt)
    if fmt == "qcow2":
        etree.SubElement(target, "compat").text = "1.1"
    return etree.tostring(root, encoding="unicode")


def plan_volume_names(vm: str, moves: list[DiskMove]) -> None:
    """Give each disk its volume name in the target pool (the preflight's
    :func:`~kvmops.migration.preflight.volume_names`, which checks them)."""
    names = volume_names(vm, [(m.target, m.source, m.fmt) for m in moves])
    for move, name in zip(moves, names, strict=True):
        move.volume = name


def rewrite_xml(xml: str, moves: list[DiskMove]) -> str:
    """The VM's persistent XML for the target: each copied disk at its new file (the
    format kept; a recorded backing chain dropped), and kvmops' owned-files record naming
    the copies (kvmops made them, so ``vm undefine --remove-storage`` may remove them there)
    instead of the source's files. Everything else -- UUID, MACs, devices -- is kept."""
    doc = DomainDocument(xml)
    for move in moves:
        doc.point_disk(move.target, move.path, move.fmt)
    doc.set_owned_files([OwnedFile(m.path, m.fmt) for m in moves])
    return doc.to_xml()


def check_copy(move: DiskMove, sent: transfer.Digest, read_back: transfer.Digest) -> None:
    """The target's bytes are the source's, all of them (StorageError otherwise)."""
    if sent.length != move.length:
        raise StorageError(f"disk {move.target} ({move.source}): {sent.length} of "
                           f"{move.length} bytes were sent", hint="was the disk changed "
                           "while it was copied? the VM must stay shut off; try again")
    if read_back.length > sent.length:
        # libvirt's upload writes over the new volume and never truncates it: a fresh
        # qcow2 volume longer than the source file (one made with small clusters) keeps
        # its tail.
        raise StorageError(
            f"disk {move.target}: the copy at {move.path} is {read_back.length} bytes, "
            f"{move.source} {sent.length}", hint="the copy was removed and the source left "
            "as it was; convert the disk to qcow2 with the default cluster size "
            "('qemu-img convert -f qcow2 -O qcow2 IN OUT') and try again")
    if read_back != sent:
        raise StorageError(
            f"disk {move.target}: the copy at {move.path} differs from {move.source} "
            f"(sha256 {read_back.sha256[:16]}…, {read_back.length} bytes; sent "
            f"{sent.sha256[:16]}…, {sent.length} bytes)",
            hint="the copy was removed and the source left as it was; check the target's "
                 "storage and try again")


# --------------------------------------------------------------------------- plumbing
def _is_local(uri: str) -> bool:
    from kvmops.host import remote

    return not remote.is_remote(uri)


class _Reporter:
    """Progress of one phase over every disk, at most every PROGRESS_INTERVAL."""

    def __init__(self, progress: ProgressFn | None, phase: str, total: int) -> None:
        self.progress = progress
        self.phase = phase
        self.total = total
        self.base = 0  # the bytes of the disks done before the current one
        self.next = 0.0

    def tick(self, done: int) -> None:
        """``done`` bytes of the current disk."""
        now = time.monotonic()
        if now >= self.next:
            self.next = now + PROGRESS_INTERVAL
            self.report(self.base + done)

    def report(self, processed: int) -> None:
        if self.progress is not None:
            self.progress(MigrationProgress(
                phase=self.phase, data_total=self.total, data_processed=processed,
                data_remaining=max(self.total - processed, 0)))


def _say(progress: ProgressFn | None, phase: str) -> None:
    if progress is not None:
        progress(MigrationProgress(phase=phase))


# --------------------------------------------------------------------------- the plan
def _plan(src: Host, dst: Host, vm: str, options: MigrationOptions, *, src_local: bool,
          trusted_paths: bool = False) -> _Plan:
    """What the copy needs -- each disk's file, format, length and size, its volume and
    path in the target pool; the internal snapshots in order -- and the notes. The
    blocker rules are the preflight's (it ran first): what it refused is not looked at
    again here, except a disk file that went away or a pool that changed since."""
    domain = src.lookup(vm)
    xml = domain.config_xml(what=f"reading VM '{vm}'")
    doc = DomainDocument(xml)
    plan = _Plan(vm=vm, uuid=domain.uuid(), xml=xml,
                 pool=copy_pool(options, "cold") or DEFAULT_POOL, pool_dir="",
                 shared=not options.copy_storage)
    _plan_snapshots(domain, plan)
    for disk in copied_disks(parse_domain(xml)):
        if disk.type != "file" or disk.path is None:
            continue  # shared storage only (a copy refuses it): left as it is
        move = DiskMove(target=disk.target, source=disk.path, fmt=disk.fmt)
        if not plan.shared:
            if src_local:  # read by this process, as root: only where images may be
                policy().image_path(disk.path, trusted=trusted_paths,
                                    what=f"disk {disk.target} of VM '{vm}'")
            migration_facts.read_disk_file(src, disk, local=src_local)
            if disk.length is None:
                raise StorageError(f"disk {disk.target}: {disk.unreadable}",
                                   hint="fix the VM's definition or restore the file")
            move.length = disk.length
            move.capacity = disk.capacity or disk.length
        plan.moves.append(move)
    if plan.shared:
        for move in plan.moves:
            move.path = move.source
        if plan.moves:
            plan.notes.append("the disks stay on storage both hosts share: "
                              + ", ".join(m.source for m in plan.moves))
    else:
        state = host_pools.pool(dst, plan.pool)
        plan.pool_dir = parse_pool(state.xml, active=state.active).target or ""
        if not plan.pool_dir:
            raise StorageError(f"storage pool '{plan.pool}' on {dst.uri} has no directory",
                               hint="name a dir, fs or netfs pool with --target-pool")
        plan_volume_names(vm, plan.moves)
        for move in plan.moves:
            move.path = os.path.join(plan.pool_dir, move.volume)
    spec = doc.spec()
    for what, path in (("kernel", spec.kernel), ("initrd", spec.initrd)):
        if path:
            plan.notes.append(f"{what} {path} is not copied: the target must have it "
                              "at that path")
    if doc.uses_pflash():
        plan.notes.append("UEFI variables (NVRAM) are not copied: the target starts from "
                          "its firmware's template")
    return plan


def _plan_snapshots(domain: Domain, plan: _Plan) -> None:
    """The internal snapshots (inside the qcow2 files, copied with their bytes), parents
    first: their metadata is redefined on the target. External ones are the preflight's
    blockers."""
    found = {}
    for snap in domain.snapshots():
        doc = SnapshotDocument(snap.xml())
        if any(d.mode == "external" for d in doc.disks()) or doc.memory_mode == "external":
            continue
        found[doc.name] = (doc.parent, snap.xml())
    ordered: list[tuple[str, str]] = []
    placed: set[str] = set()
    while len(ordered) < len(found):  # parents before children
        ready = [n for n, (parent, _x) in sorted(found.items())
                 if n not in placed and (parent is None or parent in placed
                                         or parent not in found)]
        if not ready:
            break
        for name in ready:
            ordered.append((name, found[name][1]))
            placed.add(name)
    plan.snapshots = ordered
    plan.current_snapshot = domain.current_snapshot()

# --------------------------------------------------------------------------- the move
def cold_migrate(caller: Caller, vm: str, options: MigrationOptions, *,
                 source: str | None = None, progress: ProgressFn | None = None,
                 cancelled: CancelledFn | None = None,
                 checked: Preflight | None = None) -> MigrationResult:
    """Move the shut-off VM ``vm`` from host ``source`` (a host name; default the local
    one) to ``options.target`` by copying its disks (see the module's doc). The
    preflight (:mod:`kvmops.services.migration_checks`) runs first unless ``checked``
    is its answer already (``vm migrate`` ran it). With ``options.dry_run`` only the
    checks run."""
    from kvmops.services import hosts, migration_checks
    from kvmops.services.migration import connections, refuse, validate

    started = time.monotonic()
    validate(options)
    source_name = source or hosts.LOCAL
    _say(progress, "preflight")
    with connections(caller, source_name, options.target) as (src, dst, src_uri, dst_uri):
        src_local = _is_local(src_uri)
        found = checked if checked is not None and checked.kind == "cold" else (
            migration_checks.preflight(caller, src, dst, vm, options,
                                       source_name=source_name, kind="cold"))
        if found.blockers:
            raise refuse(found)
        plan = _plan(src, dst, vm, options, src_local=src_local,
                     trusted_paths=caller.trusted_paths)
        plan.notes[:0] = found.warnings
        result = MigrationResult(vm=vm, source=source_name, target=options.target,
                                 kind="cold", seconds=0.0,
                                 disks=[m.path for m in plan.moves], notes=plan.notes)
        if options.dry_run:
            result.notes.append("dry run: nothing was changed" if plan.shared else
                                f"dry run: {len(plan.moves)} disk(s), "
                                f"{format_size(sum(m.length for m in plan.moves))} would be "
                                f"copied into pool '{plan.pool}'; nothing was changed")
            result.seconds = time.monotonic() - started
            return result
        _move(src, dst, plan, src_local=src_local, dst_local=_is_local(dst_uri),
              progress=progress, cancelled=cancelled)
        result.disks = [m.path for m in plan.moves]
        if not plan.shared:
            result.data_transferred = sum(m.wire for m in plan.moves)
            _say(progress, "cleanup")
            result.notes += _remove_source(src, plan, src_local=src_local)
    result.seconds = time.monotonic() - started
    _say(progress, "done")
    return result


def _move(src: Host, dst: Host, plan: _Plan, *, src_local: bool, dst_local: bool,
          progress: ProgressFn | None, cancelled: CancelledFn | None) -> None:
    """Copy, verify, define on the target, undefine on the source; before the source is
    touched anything going wrong removes what the target got."""
    created: list[DiskMove] = []
    sent: list[transfer.Digest] = []
    defined = False
    total = sum(m.length for m in plan.moves)
    try:
        copying = _Reporter(progress, "copy", total)
        for move in [] if plan.shared else plan.moves:
            _stop_if(cancelled)
            path = host_pools.create_volume(dst, plan.pool, volume_xml(
                move.volume, move.capacity, move.fmt))
            created.append(move)
            move.path = path
            if dst_local:
                from kvmops.images import records

                records.record_format(Path(path), move.fmt)
            with transfer.open_disk(src, move.source, local=src_local) as disk:
                if disk.length != move.length:
                    raise StorageError(f"disk {move.target} ({move.source}) changed size "
                                       "since it was checked", hint="the VM must stay "
                                       "shut off while it migrates; try again")
                sent.append(transfer.send(disk, dst, plan.pool, move.volume,
                                          dense_until=_written(dst, move),
                                          tick=copying.tick, stop=cancelled))
            move.sha256, move.wire = sent[-1].sha256, sent[-1].wire
            copying.base += move.length
            copying.report(copying.base)
        checking = _Reporter(progress, "verify", total)
        for move, digest in zip(created, sent, strict=True):
            with transfer.open_disk(dst, move.path, local=dst_local) as copy:
                got = transfer.digest(copy, tick=checking.tick,
                                      stop=cancelled)
            check_copy(move, digest, got)
            checking.base += move.length
            checking.report(checking.base)
        _stop_if(cancelled)
        _say(progress, "define")
        dst.define_domain(plan.xml if plan.shared else rewrite_xml(plan.xml, plan.moves))
        defined = True
        _redefine_snapshots(dst, plan)
        _check_definition(dst, plan)
        _stop_if(cancelled)
        _say(progress, "switch-over")
        domain = src.lookup(plan.vm)
        if domain.state() != "shut off" or domain.config_xml() != plan.xml:
            raise StateError(f"VM '{plan.vm}' was started or changed on the source while "
                             "its disks were copied", hint="the copy on the target was "
                             "removed; shut it down and migrate again")
        carried = _handover_checkpoints(domain, dst)
        if carried:
            plan.notes.append(carried)
        domain.undefine()
    except BaseException as err:
        _undo(dst, plan, created, defined, err)
        raise


def _redefine_snapshots(dst: Host, plan: _Plan) -> None:
    """The source's snapshot metadata on the target, naming the copies."""
    if not plan.snapshots:
        return
    moved = {m.source: m.path for m in plan.moves}
    domain = dst.lookup(plan.vm)
    for name, xml in plan.snapshots:
        doc = SnapshotDocument(xml)
        doc.move_files(moved)
        domain.redefine_snapshot(doc.to_xml(), current=name == plan.current_snapshot,
                                 what=f"defining snapshot '{name}' of VM '{plan.vm}' on "
                                      f"{dst.uri}")


def _handover_checkpoints(domain: Domain, dst: Host) -> str | None:
    """The backup checkpoints redefined on the target (their dirty bitmaps are inside
    the qcow2 files, copied with them, or on the shared storage), so the next backup
    there continues the chain; what happened, for the notes. A refusal only costs the
    chain: the next backup is then a full one."""
    from kvmops.host import migration as live

    try:
        names = live.handover_checkpoints(domain.raw, dst)
    except Exception as err:  # the chain only: never the migration
        return f"checkpoints not carried over ({err}); the next backup is a full one"
    if not names:
        return None
    return f"checkpoints redefined on the target: {', '.join(names)}"


def _written(dst: Host, move: DiskMove) -> int:
    """How far the new volume's file holds bytes of its own, which the copy must
    overwrite even where the source has a hole: none for raw (created sparse), the fresh
    qcow2 metadata for qcow2 (all of it, when libvirt does not tell its size)."""
    if move.fmt == "raw":
        return 0
    length = transfer.length_at(dst, move.path)
    return move.length if length is None else length


def _check_definition(dst: Host, plan: _Plan) -> None:
    """The target's definition names the copies, each is there, and so are the
    snapshots."""
    domain = dst.lookup(plan.vm)
    there = sorted(s.name for s in domain.snapshots())
    if there != sorted(n for n, _x in plan.snapshots):
        raise StorageError(f"VM '{plan.vm}' on {dst.uri} has snapshots {there}, not "
                           f"{sorted(n for n, _x in plan.snapshots)}",
                           hint="the target's definition was removed; try again")
    doc = DomainDocument(domain.config_xml(what=f"reading VM '{plan.vm}'"))
    files = doc.disk_files()
    for move in plan.moves:
        if files.get(move.target) != (move.path, move.fmt):
            raise StorageError(f"VM '{plan.vm}' on {dst.uri}: disk {move.target} is "
                               f"{files.get(move.target)}, not {(move.path, move.fmt)}",
                               hint="the target's definition was removed; try again")
        volume = host_pools.volume_at(dst, move.path)
        if volume is None:
            raise StorageError(f"VM '{plan.vm}' on {dst.uri}: {move.path} is gone",
                               hint="the target's definition was removed; try again")


def _stop_if(cancelled: CancelledFn | None) -> None:
    if cancelled is not None and cancelled():
        from kvmops.errors import CancelledError

        raise CancelledError("cold migration cancelled",
                             hint="the copy on the target was removed; the VM is unchanged "
                                  "on the source")


def _undo(dst: Host, plan: _Plan, created: list[DiskMove], defined: bool,
          err: BaseException) -> None:
    """Remove what the target got (never raises: ``err`` is what the caller hears)."""
    if defined:
        try:
            dst.lookup(plan.vm).undefine()
        except (KvmopsError, OSError) as failed:
            log.warning("cold migration of %s: removing its definition on %s failed: %s",
                        plan.vm, dst.uri, failed)
    for move in created:
        try:
            host_pools.delete_volume(dst, plan.pool, move.volume)
        except (KvmopsError, OSError) as failed:
            log.warning("cold migration of %s: removing volume %s of pool %s on %s "
                        "failed: %s", plan.vm, move.volume, plan.pool, dst.uri, failed)
    log.info("cold migration of %s stopped (%s): the target's copies were removed",
             plan.vm, err)


def _remove_source(src: Host, plan: _Plan, *, src_local: bool) -> list[str]:
    """Remove the source's disk files that may go; the notes. A file goes when it lies in
    an allowed image directory and no other VM of the source uses it: on this machine
    no other VM's disk chain holds it (backing files followed); on another host, whose
    files kvmops cannot read, it must moreover be a file kvmops created for this VM (its
    owned-files record: never an imported image another VM may have as backing file)."""
    rules = policy()
    others: dict[str, str] = {}
    with contextlib.suppress(KvmopsError):
        for domain in src.all_domains():
            with contextlib.suppress(KvmopsError):
                doc = DomainDocument(domain.config_xml())
                for path, _fmt in doc.disk_files().values():
                    others.setdefault(path, domain.name)
    chains: dict[Path, str] = {}
    if src_local:
        from kvmops.vm.ownership import files_of_other_vms

        with contextlib.suppress(KvmopsError):
            chains = files_of_other_vms(src, plan.vm, rules)
    owned = {f.path for f in DomainDocument(plan.xml).owned_files()}
    notes, removed = [], []
    for move in plan.moves:
        path = move.source
        allowed = rules.in_image_dirs(Path(path)) if src_local else any(
            is_within(Path(os.path.normpath(path)), d) for d in rules.image_dirs)
        user = others.get(path)
        if user is None and src_local:
            user = chains.get(Path(os.path.realpath(path)))
        if not allowed:
            notes.append(f"kept on the source: {path} (outside the allowed image directories)")
        elif user is not None:
            notes.append(f"kept on the source: {path} (VM '{user}' uses it)")
        elif not src_local and path not in owned:
            notes.append(f"kept on the source: {path} (kvmops did not create it for VM "
                         f"'{plan.vm}': an imported image may back another VM's disk)")
        else:
            try:
                with transfer.open_disk(src, path, local=src_local) as disk:
                    disk.delete()
                removed.append(path)
            except (KvmopsError, OSError) as err:
                notes.append(f"kept on the source: {path} (removing it failed: {err})")
    if removed:
        notes.append(f"removed from the source: {', '.join(removed)}")
    return notes
