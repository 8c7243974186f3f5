"""VM snapshots: create, list, inspect, revert, delete -- internal and external.

* Internal snapshots live inside the qcow2 images (with the memory of a
  running VM, so revert returns to the same instant). libvirt does all of it.
* External snapshots are disk-only: every writable disk gets a new qcow2
  overlay next to its image (``<image>.<snapshot>.qcow2``), atomically across
  disks; ``quiesce`` freezes the guest's file systems for the instant.
  The snapshot's *image* (the overlay's backing file) holds the state at the
  instant; the *overlay* holds what was written since.

Where libvirt cannot revert or delete external snapshots (see
:mod:`kvmops.snapshot.support`) kvmops does it:

* revert: the VM is stopped, each disk is pointed at a *fresh* overlay whose
  backing file is the snapshot's image, and libvirt's snapshot metadata is
  redefined (``REDEFINE``) so the snapshot names that fresh overlay and is the
  current one. The overlay the VM ran on is kept and named in the output: it
  holds the abandoned state (and a later snapshot may still build on it).
* delete: the snapshot's overlay is merged into its image by a block commit
  (an active commit with pivot while the VM runs, ``qemu-img commit`` when it
  is off), then only the metadata is removed. An overlay that is no longer in
  the VM's disk chain (an abandoned branch) is simply removed.

Snapshots and backups: a revert rewinds the disks behind the backup
checkpoints' backs, and QEMU refuses to load an internal snapshot into an
image carrying dirty bitmaps. So every revert first ends the kvmops backup
chain: the ``kvmops-*`` checkpoints are deleted with their bitmaps, and the
next ``kvmops backup create`` is a full.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from pydantic import BaseModel, Field

from kvmops.errors import (
    AlreadyExistsError,
    HypervisorError,
    KvmopsError,
    NotFoundError,
    OperationTimeoutError,
    StateError,
    StorageError,
    ValidationError,
)
from kvmops.host.connection import Host
from kvmops.host.domain import ACTIVE_STATES, Domain, Snapshot, SnapshotCreateError
from kvmops.images import qemuimg, records
from kvmops.images.chain import Link, inspect
from kvmops.snapshot.support import (
    Kind,
    decide_create,
    decide_revert,
    deletion_blockers,
    overlay_path,
    support_for,
    vm_facts,
)
from kvmops.vm.checkpoints import (
    delete_checkpoint,
    foreign_checkpoints,
    is_kvmops,
    kvmops_checkpoints,
    node_bitmaps,
    remove_bitmaps,
)
from kvmops.vm.domxml import (
    NAME_RE,
    DomainDocument,
    OwnedFile,
    SnapshotDiskSpec,
    SnapshotDocument,
    SnapshotMode,
    snapshot_xml,
)
from kvmops.vm.ownership import add_owned, drop_owned

NoteFn = Callable[[str], None]


# ------------------------------------------------------------------ models
class SnapshotDisk(BaseModel):
    target: str
    snapshot: str  # internal, external, no
    overlay: str | None = None  # external: the file written since the snapshot
    image: str | None = None  # external: the file holding the state at the snapshot
    image_format: str | None = None  # its format, from the VM definition at the snapshot


class SnapshotInfo(BaseModel):
    name: str
    vm: str
    kind: Kind
    memory: bool
    state: str  # the VM's state at the snapshot: running, paused, shutoff, disk-snapshot
    created: datetime
    description: str | None = None
    parent: str | None = None
    children: list[str] = Field(default_factory=list)
    current: bool = False
    disks: list[SnapshotDisk] = Field(default_factory=list)


class CreateRequest(BaseModel):
    vm: str
    name: str
    memory: bool = False
    disk_only: bool = False
    quiesce: bool = False
    description: str | None = None


class RevertResult(BaseModel):
    snapshot: SnapshotInfo
    state: str  # the VM's state after the revert
    kept_overlays: list[str] = Field(default_factory=list)
    notes: list[str] = Field(default_factory=list)


class DeleteResult(BaseModel):
    deleted: list[str]
    removed_files: list[str] = Field(default_factory=list)
    notes: list[str] = Field(default_factory=list)


# ------------------------------------------------------------------ helpers
def validate_snapshot_name(name: str) -> str:
    if not NAME_RE.match(name):
        raise ValidationError(
            f"invalid snapshot name '{name}'",
            hint="use 1-64 letters, digits, '_', '.', '+' or '-', starting with a letter or "
                 "digit")
    return name


def _active(domain: Domain) -> bool:
    return domain.state() in ACTIVE_STATES


def _document(snapshot: Snapshot) -> SnapshotDocument:
    return SnapshotDocument(snapshot.xml())


def _describe(domain: Domain, snapshot: Snapshot, current: str | None) -> SnapshotInfo:
    doc = _document(snapshot)
    name = doc.name or snapshot.name
    memory = doc.memory_mode in ("internal", "external")
    inner = doc.domain()
    inner_sources = inner.disk_files() if inner is not None else {}
    disks = []
    for disk in doc.disks():
        dev = disk.target
        external = disk.mode == "external"
        disks.append(SnapshotDisk(
            target=dev, snapshot=disk.mode,
            overlay=disk.overlay if external else None,
            image=inner_sources[dev][0] if external and dev in inner_sources else None,
            image_format=inner_sources[dev][1] if external and dev in inner_sources
            else None,
        ))
    external = any(d.snapshot == "external" for d in disks) or doc.memory_mode == "external"
    created = datetime.fromtimestamp(doc.created, tz=UTC)
    return SnapshotInfo(
        name=name, vm=domain.name, kind=Kind.EXTERNAL if external else Kind.INTERNAL,
        memory=memory, state=doc.state, created=created,
        description=doc.description, parent=doc.parent,
        children=sorted(snapshot.children()), current=name == current, disks=disks,
    )


def _domain_doc(domain: Domain, inactive: bool = False) -> DomainDocument:
    return DomainDocument(domain.xml(inactive=inactive))


def _disk_sources(doc: DomainDocument) -> dict[str, str]:
    return {t: f for t, (f, _fmt) in doc.disk_files().items()}


def _chain(path: str, fmt: str) -> list[Link]:
    """The image and its backing files, top first, read with named formats (-U: the VM
    may hold them); a link out of the image directories is refused, never followed."""
    return list(inspect(path, fmt, trusted_top=True).links)


# ------------------------------------------------------------------ list / info
def list_snapshots(host: Host, vm: str) -> list[SnapshotInfo]:
    domain = host.lookup(vm)
    current = domain.current_snapshot()
    found = [_describe(domain, s, current) for s in domain.snapshots()]
    return sorted(found, key=lambda s: (s.created, s.name))


def info(host: Host, vm: str, name: str) -> SnapshotInfo:
    domain = host.lookup(vm)
    return _describe(domain, domain.snapshot(name), domain.current_snapshot())


def tree(snapshots: list[SnapshotInfo]) -> list[tuple[int, SnapshotInfo]]:
    """Depth-first order with depth, roots by creation time."""
    by_name = {s.name: s for s in snapshots}
    out: list[tuple[int, SnapshotInfo]] = []

    def walk(item: SnapshotInfo, depth: int) -> None:
        out.append((depth, item))
        for child in sorted((by_name[c] for c in item.children if c in by_name),
                            key=lambda s: (s.created, s.name)):
            walk(child, depth + 1)

    for root in snapshots:
        if root.parent is None or root.parent not in by_name:
            walk(root, 0)
    return out


# ------------------------------------------------------------------ create
def create(host: Host, req: CreateRequest, note: NoteFn | None = None) -> SnapshotInfo:
    say = note or (lambda _m: None)
    validate_snapshot_name(req.name)
    domain = host.lookup(req.vm)
    if domain.find_snapshot(req.name) is not None:
        raise AlreadyExistsError(f"VM '{req.vm}' already has a snapshot '{req.name}'",
                                 hint="choose another name, or delete the old snapshot first")
    active = _active(domain)
    facts = vm_facts(req.vm, active, domain.xml())
    decision = decide_create(facts, memory=req.memory, disk_only=req.disk_only,
                             quiesce=req.quiesce)
    for message in decision.notes:
        say(message)
    created_files: list[str] = []
    external = decision.kind is Kind.EXTERNAL
    disks: list[SnapshotDiskSpec] | None = None
    if external:
        disks = []
        taken = {str(p) for d in facts.writable_disks if d.source
                 for p in Path(d.source).parent.iterdir()}
        for disk in facts.disks:
            if not disk.snapshottable or disk.source is None:
                disks.append(SnapshotDiskSpec(disk.target, "no"))
                continue
            path = overlay_path(disk.source, req.name, taken)
            if os.path.exists(path):
                raise AlreadyExistsError(f"overlay file {path} already exists (snapshot "
                                         f"'{req.name}' of VM '{req.vm}')",
                                         hint="remove it or choose another snapshot name")
            taken.add(path)
            created_files.append(path)
            disks.append(SnapshotDiskSpec(disk.target, "external", path))
    memory: SnapshotMode | None = "no" if external else (
        "internal" if decision.memory else None)
    xml = snapshot_xml(req.name, description=req.description, memory=memory, disks=disks)
    try:
        domain.create_snapshot(xml, disk_only=external, atomic=external and active,
                               quiesce=external and decision.quiesce,
                               what=f"creating snapshot '{req.name}' of VM '{req.vm}'")
    except SnapshotCreateError as err:
        for path in created_files:  # ATOMIC: libvirt left the disks as they were
            if not os.path.exists(path):
                continue
            with contextlib.suppress(OSError, KvmopsError):
                if path not in _disk_sources(_domain_doc(domain)).values():
                    os.unlink(path)
        if decision.quiesce and err.agent:
            raise StateError(f"cannot quiesce VM '{req.vm}' for snapshot '{req.name}': "
                             f"{err.text}",
                             hint="check the guest agent ('kvmops guest ping'), or leave out "
                                  "--quiesce for a crash-consistent snapshot") from err
        if err.checkpoints:
            raise StateError(
                f"cannot snapshot shut-off VM '{req.vm}': libvirt refuses while it has backup "
                f"checkpoints ({err.text})", actual="shut off", required="running",
                hint="start the VM and take the snapshot while it runs") from err
        raise err.translated from err
    if created_files:
        for path in created_files:
            records.record_format(Path(path), "qcow2")
        add_owned(domain, [OwnedFile(path, "qcow2") for path in created_files])
    return info(host, req.vm, req.name)


# ------------------------------------------------------------------ backups
def end_backup_chain(domain: Domain, say: NoteFn) -> list[str]:
    """Delete the kvmops backup checkpoints and their bitmaps; return their names."""
    domain = Domain.of(domain)
    vm = domain.name
    foreign = foreign_checkpoints(domain)
    if foreign:
        raise StateError(
            f"VM '{vm}' has checkpoints kvmops did not create ({', '.join(foreign)}); their "
            "bitmaps would block the revert",
            hint=f"delete them with 'virsh checkpoint-delete {vm} NAME' first")
    checkpoints = [c.name for c in kvmops_checkpoints(domain)]
    if _active(domain):
        for name in reversed(checkpoints):
            delete_checkpoint(domain, name, say)
        for target, bitmaps in node_bitmaps(domain).items():
            for bitmap in bitmaps:
                stale = str(bitmap.get("name", ""))
                if is_kvmops(stale):
                    remove_bitmaps(domain, stale)
                    say(f"removed stale bitmap {stale} from disk {target}")
    else:
        # libvirt cannot delete checkpoints of a shut-off VM: drop the metadata, then
        # remove the bitmaps from the images with qemu-img.
        for name in reversed(checkpoints):
            checkpoint = domain.find_checkpoint(name)
            if checkpoint is not None:
                with contextlib.suppress(KvmopsError):
                    checkpoint.delete(metadata_only=True)
        for source, fmt in _domain_doc(domain, inactive=True).disk_files().values():
            if fmt != "qcow2":
                continue
            for link in _chain(source, fmt):
                for label in link.info.bitmaps:
                    if is_kvmops(label) and link.format == "qcow2":
                        qemuimg.run_qemu_img(
                            ["bitmap", "--remove", "-f", "qcow2", str(link.path), label],
                            what=f"removing bitmap {label} from {link.path}", path=link.path)
    if checkpoints:
        say(f"ended the backup chain of VM '{vm}' (deleted checkpoints "
            f"{', '.join(checkpoints)}): the next backup will be a full")
    return checkpoints


# ------------------------------------------------------------------ revert
def revert(host: Host, vm: str, name: str, *, running: bool = False, paused: bool = False,
           force: bool = False, note: NoteFn | None = None) -> RevertResult:
    notes: list[str] = []

    def say(message: str) -> None:
        notes.append(message)
        if note:
            note(message)

    domain = host.lookup(vm)
    snapshot = domain.snapshot(name)
    described = _describe(domain, snapshot, domain.current_snapshot())
    active = _active(domain)
    decision = decide_revert(vm, name, vm_active=active, snapshot_memory=described.memory,
                             running=running, paused=paused, force=force)
    support = support_for(host.libvirt_version())
    kept: list[str] = []
    if described.kind is Kind.INTERNAL or not support.external_by_kvmops:
        # libvirt reverts natively: internal snapshots, and external ones from 9.9 on.
        if described.kind is Kind.INTERNAL:
            _check_internal_revert(domain, described)
        end_backup_chain(domain, say)
        domain.revert_to(snapshot, running=decision.end_state == "running",
                         paused=decision.end_state == "paused", force=decision.force,
                         what=f"reverting VM '{vm}' to snapshot '{name}'")
    else:
        kept = _revert_external(domain, snapshot, described, decision.end_state, say)
    return RevertResult(snapshot=info(host, vm, name), state=domain.state(),
                        kept_overlays=kept, notes=notes)


def _check_internal_revert(domain: Domain, snap: SnapshotInfo) -> None:
    """An internal snapshot lives in the image it was taken in: the VM must still use it."""
    inner = _document(domain.snapshot(snap.name)).domain()
    then = _disk_sources(inner) if inner is not None else {}
    now = _disk_sources(_domain_doc(domain))
    for disk in snap.disks:
        if disk.snapshot != "internal":
            continue
        if disk.target in then and now.get(disk.target) != then[disk.target]:
            raise StateError(
                f"cannot revert VM '{domain.name}' to internal snapshot '{snap.name}': it "
                f"lives in {then[disk.target]}, but disk {disk.target} now runs on "
                f"{now.get(disk.target)} (an external snapshot's overlay)",
                hint="delete the later external snapshot first (its overlay is merged)")


def _revert_external(domain: Domain, snapshot: Snapshot, snap: SnapshotInfo,
                     end_state: str | None, say: NoteFn) -> list[str]:
    vm = domain.name
    external = [d for d in snap.disks if d.snapshot == "external"]
    for disk in external:
        if not disk.image or not os.path.exists(disk.image):
            raise StorageError(f"cannot revert VM '{vm}' to snapshot '{snap.name}': the image "
                               f"of disk {disk.target} ({disk.image}) is missing")
    end_backup_chain(domain, say)
    if _active(domain):
        domain.destroy(what=f"stopping VM '{vm}'")
    inactive = _domain_doc(domain, inactive=True)
    kept: list[str] = []
    created: list[str] = []
    new_overlays: dict[str, str] = {}
    try:
        for disk in external:
            assert disk.image is not None
            current = inactive.find_disk(disk.target)
            if current is None:
                raise NotFoundError(f"VM '{vm}' has no disk {disk.target}")
            previous = current.source
            taken = {str(p) for p in Path(disk.image).parent.iterdir()}
            fresh = overlay_path(disk.image, snap.name, taken)
            qemuimg.create(fresh, None, "qcow2", backing=disk.image,
                           backing_fmt=disk.image_format or "raw")
            created.append(fresh)
            new_overlays[disk.target] = fresh
            inactive.point_disk(disk.target, fresh, "qcow2")
            if previous and previous != fresh:
                kept.append(previous)
        domain.redefine(inactive.to_xml())
        add_owned(domain, [OwnedFile(path, "qcow2") for path in created])
    except BaseException:
        for path in created:
            with contextlib.suppress(OSError):
                os.unlink(path)
        raise
    _redefine_overlays(domain, snapshot, new_overlays, current=True)
    for path in kept:
        say(f"kept the previous disk image {path}: it holds the state before the revert; "
            "remove it when no longer needed")
    if end_state is not None:
        domain.start(paused=end_state == "paused", what=f"starting VM '{vm}'")
    return kept


def _redefine_overlays(domain: Domain, snapshot: Snapshot, overlays: dict[str, str], *,
                       current: bool) -> None:
    """Make libvirt's metadata of ``snapshot`` name the overlays the disks now use."""
    doc = _document(snapshot)
    for target, path in overlays.items():
        doc.set_overlay(target, path)
    domain.redefine_snapshot(doc.to_xml(), current=current,
                             what=f"updating the metadata of snapshot '{snapshot.name}'")


# ------------------------------------------------------------------ delete
def delete(host: Host, vm: str, name: str, *, children: bool = False,
           note: NoteFn | None = None) -> DeleteResult:
    result = DeleteResult(deleted=[])

    def say(message: str) -> None:
        result.notes.append(message)
        if note:
            note(message)

    domain = host.lookup(vm)
    support = support_for(host.libvirt_version())
    _delete_one(host, domain, name, children, support.external_by_kvmops, result, say)
    return result


def _delete_one(host: Host, domain: Domain, name: str, with_children: bool,
                by_kvmops: bool, result: DeleteResult, say: NoteFn) -> None:
    snapshot = domain.snapshot(name)
    snap = _describe(domain, snapshot, domain.current_snapshot())
    kinds = {c: _describe(domain, domain.snapshot(c), None).kind for c in snap.children}
    deletion_blockers(name, snap.kind, kinds, with_children)
    if with_children:
        for child in sorted(snap.children, key=lambda c: _lookup_time(domain, c), reverse=True):
            _delete_one(host, domain, child, True, by_kvmops, result, say)
        snap = _describe(domain, snapshot, domain.current_snapshot())
    if snap.kind is Kind.INTERNAL or not by_kvmops:
        snapshot.delete(what=f"deleting snapshot '{name}' of VM '{domain.name}'")
        result.deleted.append(name)
        return
    for disk in snap.disks:
        if disk.snapshot != "external" or not disk.overlay:
            continue
        _merge_overlay(domain, snap, disk, result, say)
    snapshot.delete(metadata_only=True,
                    what=f"deleting the metadata of snapshot '{name}'")
    result.deleted.append(name)


def _lookup_time(domain: Domain, name: str) -> int:
    return _document(domain.snapshot(name)).created


def _merge_overlay(domain: Domain, snap: SnapshotInfo, disk: SnapshotDisk,
                   result: DeleteResult, say: NoteFn) -> None:
    vm = domain.name
    overlay = disk.overlay
    assert overlay is not None
    active = _active(domain)
    top, top_fmt = _domain_doc(domain, inactive=not active).disk_files().get(
        disk.target, (None, "raw"))
    chain = [str(link.path) for link in _chain(top, top_fmt)] \
        if top and os.path.exists(top) else []
    if os.path.realpath(overlay) not in chain:
        # An abandoned branch (the VM was reverted away from it): nothing to merge.
        if os.path.exists(overlay):
            os.unlink(overlay)
            result.removed_files.append(overlay)
            drop_owned(domain, [overlay])
        return
    if os.path.realpath(overlay) != chain[0]:
        raise StateError(
            f"cannot delete snapshot '{snap.name}' of VM '{vm}': disk {disk.target} has "
            f"{top} on top of its overlay {overlay}",
            hint="delete the later snapshots first, or add --children")
    if active:
        _active_commit(domain, disk.target)
    else:
        _offline_commit(domain, disk.target, overlay, say)
    if os.path.exists(overlay):
        os.unlink(overlay)
        result.removed_files.append(overlay)
    drop_owned(domain, [overlay])


def _active_commit(domain: Domain, target: str, timeout: float = 600.0) -> None:
    """Merge the top overlay of a running VM's disk into its backing file and pivot."""
    vm = domain.name
    domain.block_commit_active(
        target, what=f"starting the block commit of disk {target} of VM '{vm}'")
    deadline = time.monotonic() + timeout
    while True:
        job = domain.block_job(target)
        if job is None:
            raise HypervisorError(f"the block commit of disk {target} of VM '{vm}' ended "
                                  "without becoming ready", hint="see the VM's log")
        if job.ready and domain.block_job_pivot(target):
            break
        if time.monotonic() > deadline:
            with contextlib.suppress(KvmopsError):
                domain.block_job_abort(target)
            raise OperationTimeoutError(
                f"the block commit of disk {target} of VM '{vm}' was not ready within "
                f"{timeout:.0f}s; it was cancelled and the overlay kept")
        time.sleep(0.2)
    # libvirt finishes the pivot asynchronously: wait until the job is gone.
    while domain.block_job(target) is not None:
        if time.monotonic() > deadline:
            raise OperationTimeoutError(f"the pivot of disk {target} of VM '{vm}' did not "
                                        "finish")
        time.sleep(0.2)


def _offline_commit(domain: Domain, target: str, overlay: str, say: NoteFn) -> None:
    """qemu-img commit for a shut-off VM, keeping backup bitmaps whole, then re-point."""
    vm = domain.name
    links = _chain(overlay, "qcow2")
    if len(links) < 2:
        raise StorageError(f"overlay {overlay} of VM '{vm}' has no backing file")
    top, below = links[0], links[1]
    backing = str(below.path)
    # qemu-img commit copies data, not bitmaps: blocks written into the overlay must stay
    # marked dirty in the backing file's bitmaps, or the next incremental misses them.
    for bitmap in top.info.bitmaps:
        if below.format != "qcow2":
            say(f"bitmap {bitmap} cannot move into {backing} (not qcow2): the next "
                "backup of this disk is a full")
            continue
        if bitmap not in below.info.bitmaps:
            qemuimg.run_qemu_img(["bitmap", "--add", "-f", "qcow2", backing, bitmap],
                                 what=f"adding bitmap {bitmap} to {backing}",
                                 path=below.path)
        qemuimg.run_qemu_img(["bitmap", "--merge", bitmap, "-b", overlay, "-F", "qcow2",
                              "-f", "qcow2", backing, bitmap],
                             what=f"merging bitmap {bitmap} into {backing}", path=below.path)
    qemuimg.commit(overlay, "qcow2")
    doc = _domain_doc(domain, inactive=True)
    doc.point_disk(target, backing, below.format)
    domain.redefine(doc.to_xml())


__all__ = [
    "CreateRequest", "DeleteResult", "KvmopsError", "RevertResult", "SnapshotInfo", "create",
    "delete", "end_backup_chain", "info", "list_snapshots", "revert", "tree",
]
