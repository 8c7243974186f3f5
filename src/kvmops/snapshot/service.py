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

import libvirt
from lxml import etree
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
from kvmops.host.connection import Host, call, translate
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
from kvmops.vm.domxml import NAME_RE, OwnedFile
from kvmops.vm.ownership import add_owned, drop_owned

NoteFn = Callable[[str], None]
_ACTIVE_STATES = (libvirt.VIR_DOMAIN_RUNNING, libvirt.VIR_DOMAIN_PAUSED,
                  libvirt.VIR_DOMAIN_BLOCKED, libvirt.VIR_DOMAIN_PMSUSPENDED)


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


def _active(domain: libvirt.virDomain) -> bool:
    state, _ = call(f"reading state of VM '{domain.name()}'", domain.state)
    return state in _ACTIVE_STATES


def _state_text(domain: libvirt.virDomain) -> str:
    from kvmops.vm.lifecycle import state_name

    return state_name(domain)


def _lookup(domain: libvirt.virDomain, name: str) -> libvirt.virDomainSnapshot:
    try:
        return domain.snapshotLookupByName(name, 0)
    except libvirt.libvirtError as err:
        if err.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN_SNAPSHOT:
            raise NotFoundError(f"VM '{domain.name()}' has no snapshot '{name}'",
                                hint=f"see 'kvmops snapshot list {domain.name()}'") from err
        raise translate(err, f"looking up snapshot '{name}' of VM '{domain.name()}'") from err


def _xml(snapshot: libvirt.virDomainSnapshot) -> etree._Element:
    text = call(f"reading snapshot '{snapshot.getName()}'", snapshot.getXMLDesc, 0)
    return etree.fromstring(str(text).encode())


def _describe(domain: libvirt.virDomain, snapshot: libvirt.virDomainSnapshot,
              current: str | None) -> SnapshotInfo:
    root = _xml(snapshot)
    name = root.findtext("name") or snapshot.getName()
    memory_el = root.find("memory")
    memory = memory_el is not None and memory_el.get("snapshot") in ("internal", "external")
    inner = root.find("domain")
    inner_sources = _disk_files(inner) if inner is not None else {}
    disks = []
    for el in root.findall("disks/disk"):
        mode = el.get("snapshot", "no")
        src_el = el.find("source")
        dev = el.get("name", "")
        disks.append(SnapshotDisk(
            target=dev, snapshot=mode,
            overlay=src_el.get("file") if mode == "external" and src_el is not None else None,
            image=inner_sources[dev][0] if mode == "external" and dev in inner_sources else None,
            image_format=inner_sources[dev][1] if mode == "external" and dev in inner_sources
            else None,
        ))
    external = any(d.snapshot == "external" for d in disks) or (
        memory_el is not None and memory_el.get("snapshot") == "external")
    created = datetime.fromtimestamp(int(root.findtext("creationTime") or 0), tz=UTC)
    children = call("listing child snapshots", snapshot.listAllChildren, 0)
    return SnapshotInfo(
        name=name, vm=domain.name(), kind=Kind.EXTERNAL if external else Kind.INTERNAL,
        memory=memory, state=root.findtext("state") or "", created=created,
        description=root.findtext("description"), parent=root.findtext("parent/name"),
        children=sorted(c.getName() for c in children), current=name == current, disks=disks,
    )


def _current_name(domain: libvirt.virDomain) -> str | None:
    try:
        if not domain.hasCurrentSnapshot(0):
            return None
        return str(domain.snapshotCurrent(0).getName())
    except libvirt.libvirtError:
        return None


def _domain_xml(domain: libvirt.virDomain, inactive: bool = False) -> str:
    flags = libvirt.VIR_DOMAIN_XML_INACTIVE if inactive else 0
    return str(call(f"reading XML of VM '{domain.name()}'", domain.XMLDesc, flags))


def _disk_files(root: etree._Element) -> dict[str, tuple[str, str]]:
    """target -> (file, format) of a domain document's file-backed disks."""
    found = {}
    for disk in root.findall("devices/disk"):
        target = disk.find("target")
        source = disk.find("source")
        driver = disk.find("driver")
        if target is not None and source is not None and source.get("file"):
            fmt = driver.get("type", "raw") if driver is not None else "raw"
            found[target.get("dev", "")] = (source.get("file", ""), fmt)
    return found


def _disk_sources(xml: str) -> dict[str, str]:
    return {t: f for t, (f, _fmt) in _disk_files(etree.fromstring(xml.encode())).items()}


def _chain(path: str, fmt: str) -> list[Link]:
    """The image and its backing files, top first, read with named formats (-U: the VM
    may hold them); a link out of the image directories is refused, never followed."""
    return list(inspect(path, fmt, trusted_top=True).links)


# ------------------------------------------------------------------ list / info
def list_snapshots(host: Host, vm: str) -> list[SnapshotInfo]:
    domain = host.domain(vm)
    current = _current_name(domain)
    snapshots = call(f"listing snapshots of VM '{vm}'", domain.listAllSnapshots, 0)
    found = [_describe(domain, s, current) for s in snapshots]
    return sorted(found, key=lambda s: (s.created, s.name))


def info(host: Host, vm: str, name: str) -> SnapshotInfo:
    domain = host.domain(vm)
    return _describe(domain, _lookup(domain, name), _current_name(domain))


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
    domain = host.domain(req.vm)
    with contextlib.suppress(libvirt.libvirtError):
        domain.snapshotLookupByName(req.name, 0)
        raise AlreadyExistsError(f"VM '{req.vm}' already has a snapshot '{req.name}'",
                                 hint="choose another name, or delete the old snapshot first")
    active = _active(domain)
    facts = vm_facts(req.vm, active, _domain_xml(domain))
    decision = decide_create(facts, memory=req.memory, disk_only=req.disk_only,
                             quiesce=req.quiesce)
    for message in decision.notes:
        say(message)
    root = etree.Element("domainsnapshot")
    etree.SubElement(root, "name").text = req.name
    if req.description:
        etree.SubElement(root, "description").text = req.description
    flags = 0
    created_files: list[str] = []
    if decision.kind is Kind.EXTERNAL:
        etree.SubElement(root, "memory", snapshot="no")
        disks = etree.SubElement(root, "disks")
        taken = {str(p) for d in facts.writable_disks if d.source
                 for p in Path(d.source).parent.iterdir()}
        for disk in facts.disks:
            if not disk.snapshottable or disk.source is None:
                etree.SubElement(disks, "disk", name=disk.target, snapshot="no")
                continue
            path = overlay_path(disk.source, req.name, taken)
            if os.path.exists(path):
                raise AlreadyExistsError(f"overlay file {path} already exists (snapshot "
                                         f"'{req.name}' of VM '{req.vm}')",
                                         hint="remove it or choose another snapshot name")
            taken.add(path)
            created_files.append(path)
            el = etree.SubElement(disks, "disk", name=disk.target, snapshot="external",
                                  type="file")
            etree.SubElement(el, "driver", type="qcow2")
            etree.SubElement(el, "source", file=path)
        flags |= libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_DISK_ONLY
        if active:
            flags |= libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_ATOMIC
        if decision.quiesce:
            flags |= libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_QUIESCE
    elif decision.memory:
        etree.SubElement(root, "memory", snapshot="internal")
    xml = etree.tostring(root, encoding="unicode")
    try:
        domain.snapshotCreateXML(xml, flags)
    except libvirt.libvirtError as err:
        for path in created_files:  # ATOMIC: libvirt left the disks as they were
            if not os.path.exists(path):
                continue
            with contextlib.suppress(OSError):
                if path not in _disk_sources(_domain_xml(domain)).values():
                    os.unlink(path)
        text = (err.get_error_message() or str(err)).strip()
        if decision.quiesce and ("agent" in text.lower() or "quiesce" in text.lower()
                                 or "freeze" in text.lower()):
            raise StateError(f"cannot quiesce VM '{req.vm}' for snapshot '{req.name}': {text}",
                             hint="check the guest agent ('kvmops guest ping'), or leave out "
                                  "--quiesce for a crash-consistent snapshot") from err
        if "while checkpoint exists" in text:
            raise StateError(
                f"cannot snapshot shut-off VM '{req.vm}': libvirt refuses while it has backup "
                f"checkpoints ({text})", actual="shut off", required="running",
                hint="start the VM and take the snapshot while it runs") from err
        raise translate(err, f"creating snapshot '{req.name}' of VM '{req.vm}'") from err
    if created_files:
        for path in created_files:
            records.record_format(Path(path), "qcow2")
        add_owned(domain, [OwnedFile(path, "qcow2") for path in created_files])
    return info(host, req.vm, req.name)


# ------------------------------------------------------------------ backups
def end_backup_chain(domain: libvirt.virDomain, say: NoteFn) -> list[str]:
    """Delete the kvmops backup checkpoints and their bitmaps; return their names."""
    vm = domain.name()
    foreign = foreign_checkpoints(domain)
    if foreign:
        raise StateError(
            f"VM '{vm}' has checkpoints kvmops did not create ({', '.join(foreign)}); their "
            "bitmaps would block the revert",
            hint=f"delete them with 'virsh checkpoint-delete {vm} NAME' first")
    checkpoints = [c.getName() for c in kvmops_checkpoints(domain)]
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
            with contextlib.suppress(libvirt.libvirtError):
                domain.checkpointLookupByName(name, 0).delete(
                    libvirt.VIR_DOMAIN_CHECKPOINT_DELETE_METADATA_ONLY)
        inactive = etree.fromstring(_domain_xml(domain, inactive=True).encode())
        for source, fmt in _disk_files(inactive).values():
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

    domain = host.domain(vm)
    snapshot = _lookup(domain, name)
    described = _describe(domain, snapshot, _current_name(domain))
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
        flags = 0
        if decision.end_state == "running":
            flags |= libvirt.VIR_DOMAIN_SNAPSHOT_REVERT_RUNNING
        elif decision.end_state == "paused":
            flags |= libvirt.VIR_DOMAIN_SNAPSHOT_REVERT_PAUSED
        if decision.force:
            flags |= libvirt.VIR_DOMAIN_SNAPSHOT_REVERT_FORCE
        call(f"reverting VM '{vm}' to snapshot '{name}'", domain.revertToSnapshot, snapshot,
             flags)
    else:
        kept = _revert_external(domain, snapshot, described, decision.end_state, say)
    return RevertResult(snapshot=info(host, vm, name), state=_state_text(domain),
                        kept_overlays=kept, notes=notes)


def _check_internal_revert(domain: libvirt.virDomain, snap: SnapshotInfo) -> None:
    """An internal snapshot lives in the image it was taken in: the VM must still use it."""
    root = _xml(_lookup(domain, snap.name))
    inner = root.find("domain")
    then = _disk_sources(etree.tostring(inner, encoding="unicode")) if inner is not None else {}
    now = _disk_sources(_domain_xml(domain))
    for disk in snap.disks:
        if disk.snapshot != "internal":
            continue
        if disk.target in then and now.get(disk.target) != then[disk.target]:
            raise StateError(
                f"cannot revert VM '{domain.name()}' to internal snapshot '{snap.name}': it "
                f"lives in {then[disk.target]}, but disk {disk.target} now runs on "
                f"{now.get(disk.target)} (an external snapshot's overlay)",
                hint="delete the later external snapshot first (its overlay is merged)")


def _revert_external(domain: libvirt.virDomain, snapshot: libvirt.virDomainSnapshot,
                     snap: SnapshotInfo, end_state: str | None, say: NoteFn) -> list[str]:
    vm = domain.name()
    external = [d for d in snap.disks if d.snapshot == "external"]
    for disk in external:
        if not disk.image or not os.path.exists(disk.image):
            raise StorageError(f"cannot revert VM '{vm}' to snapshot '{snap.name}': the image "
                               f"of disk {disk.target} ({disk.image}) is missing")
    end_backup_chain(domain, say)
    if _active(domain):
        call(f"stopping VM '{vm}'", domain.destroy)
    inactive = etree.fromstring(_domain_xml(domain, inactive=True).encode())
    kept: list[str] = []
    created: list[str] = []
    new_overlays: dict[str, str] = {}
    try:
        for disk in external:
            assert disk.image is not None
            el = _disk_element(inactive, disk.target)
            source = el.find("source")
            previous = source.get("file") if source is not None else None
            taken = {str(p) for p in Path(disk.image).parent.iterdir()}
            fresh = overlay_path(disk.image, snap.name, taken)
            qemuimg.create(fresh, None, "qcow2", backing=disk.image,
                           backing_fmt=disk.image_format or "raw")
            created.append(fresh)
            new_overlays[disk.target] = fresh
            _point_disk(el, fresh)
            if previous and previous != fresh:
                kept.append(previous)
        call(f"redefining VM '{vm}'", domain.connect().defineXML,
             etree.tostring(inactive, encoding="unicode"))
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
        flags = libvirt.VIR_DOMAIN_START_PAUSED if end_state == "paused" else 0
        call(f"starting VM '{vm}'", domain.createWithFlags, flags)
    return kept


def _disk_element(root: etree._Element, target: str) -> etree._Element:
    for disk in root.findall("devices/disk"):
        t = disk.find("target")
        if t is not None and t.get("dev") == target:
            return disk
    raise NotFoundError(f"VM '{root.findtext('name')}' has no disk {target}")


def _point_disk(disk: etree._Element, path: str) -> None:
    source = disk.find("source")
    if source is None:
        source = etree.SubElement(disk, "source")
    source.set("file", path)
    driver = disk.find("driver")
    if driver is not None:
        driver.set("type", "qcow2")
    for backing in disk.findall("backingStore"):
        disk.remove(backing)


def _redefine_overlays(domain: libvirt.virDomain, snapshot: libvirt.virDomainSnapshot,
                       overlays: dict[str, str], *, current: bool) -> None:
    """Make libvirt's metadata of ``snapshot`` name the overlays the disks now use."""
    root = _xml(snapshot)
    for disk in root.findall("disks/disk"):
        path = overlays.get(disk.get("name", ""))
        if path is None:
            continue
        source = disk.find("source")
        if source is None:
            source = etree.SubElement(disk, "source")
        source.set("file", path)
    flags = libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_REDEFINE
    if current:
        flags |= libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_CURRENT
    call(f"updating the metadata of snapshot '{snapshot.getName()}'",
         domain.snapshotCreateXML, etree.tostring(root, encoding="unicode"), flags)


# ------------------------------------------------------------------ delete
def delete(host: Host, vm: str, name: str, *, children: bool = False,
           note: NoteFn | None = None) -> DeleteResult:
    result = DeleteResult(deleted=[])

    def say(message: str) -> None:
        result.notes.append(message)
        if note:
            note(message)

    domain = host.domain(vm)
    support = support_for(host.libvirt_version())
    _delete_one(host, domain, name, children, support.external_by_kvmops, result, say)
    return result


def _delete_one(host: Host, domain: libvirt.virDomain, name: str, with_children: bool,
                by_kvmops: bool, result: DeleteResult, say: NoteFn) -> None:
    snapshot = _lookup(domain, name)
    snap = _describe(domain, snapshot, _current_name(domain))
    kinds = {c: _describe(domain, _lookup(domain, c), None).kind for c in snap.children}
    deletion_blockers(name, snap.kind, kinds, with_children)
    if with_children:
        for child in sorted(snap.children, key=lambda c: _lookup_time(domain, c), reverse=True):
            _delete_one(host, domain, child, True, by_kvmops, result, say)
        snap = _describe(domain, snapshot, _current_name(domain))
    if snap.kind is Kind.INTERNAL or not by_kvmops:
        call(f"deleting snapshot '{name}' of VM '{domain.name()}'", snapshot.delete, 0)
        result.deleted.append(name)
        return
    for disk in snap.disks:
        if disk.snapshot != "external" or not disk.overlay:
            continue
        _merge_overlay(domain, snap, disk, result, say)
    call(f"deleting the metadata of snapshot '{name}'", snapshot.delete,
         libvirt.VIR_DOMAIN_SNAPSHOT_DELETE_METADATA_ONLY)
    result.deleted.append(name)


def _lookup_time(domain: libvirt.virDomain, name: str) -> int:
    return int(_xml(_lookup(domain, name)).findtext("creationTime") or 0)


def _merge_overlay(domain: libvirt.virDomain, snap: SnapshotInfo, disk: SnapshotDisk,
                   result: DeleteResult, say: NoteFn) -> None:
    vm = domain.name()
    overlay = disk.overlay
    assert overlay is not None
    active = _active(domain)
    root = etree.fromstring(_domain_xml(domain, inactive=not active).encode())
    top, top_fmt = _disk_files(root).get(disk.target, (None, "raw"))
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


def _active_commit(domain: libvirt.virDomain, target: str, timeout: float = 600.0) -> None:
    """Merge the top overlay of a running VM's disk into its backing file and pivot."""
    vm = domain.name()
    flags = (libvirt.VIR_DOMAIN_BLOCK_COMMIT_ACTIVE | libvirt.VIR_DOMAIN_BLOCK_COMMIT_SHALLOW)
    call(f"starting the block commit of disk {target} of VM '{vm}'",
         domain.blockCommit, target, None, None, 0, flags)
    deadline = time.monotonic() + timeout
    while True:
        job = call(f"reading the block job of disk {target}", domain.blockJobInfo, target, 0)
        if not job:
            raise HypervisorError(f"the block commit of disk {target} of VM '{vm}' ended "
                                  "without becoming ready", hint="see the VM's log")
        if job.get("end", 0) > 0 and job.get("cur") == job.get("end"):
            try:
                domain.blockJobAbort(target, libvirt.VIR_DOMAIN_BLOCK_JOB_ABORT_PIVOT)
                break
            except libvirt.libvirtError as err:
                if err.get_error_code() != libvirt.VIR_ERR_BLOCK_COPY_ACTIVE:
                    raise translate(err, f"pivoting disk {target} of VM '{vm}'") from err
        if time.monotonic() > deadline:
            with contextlib.suppress(libvirt.libvirtError):
                domain.blockJobAbort(target, 0)
            raise OperationTimeoutError(
                f"the block commit of disk {target} of VM '{vm}' was not ready within "
                f"{timeout:.0f}s; it was cancelled and the overlay kept")
        time.sleep(0.2)
    # libvirt finishes the pivot asynchronously: wait until the job is gone.
    while call("reading the block job", domain.blockJobInfo, target, 0):
        if time.monotonic() > deadline:
            raise OperationTimeoutError(f"the pivot of disk {target} of VM '{vm}' did not "
                                        "finish")
        time.sleep(0.2)


def _offline_commit(domain: libvirt.virDomain, target: str, overlay: str, say: NoteFn
                    ) -> None:
    """qemu-img commit for a shut-off VM, keeping backup bitmaps whole, then re-point."""
    vm = domain.name()
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
    root = etree.fromstring(_domain_xml(domain, inactive=True).encode())
    el = _disk_element(root, target)
    _point_disk(el, backing)
    driver = el.find("driver")
    if driver is not None:
        driver.set("type", below.format)
    call(f"redefining VM '{vm}'", domain.connect().defineXML,
         etree.tostring(root, encoding="unicode"))


__all__ = [
    "CreateRequest", "DeleteResult", "KvmopsError", "RevertResult", "SnapshotInfo", "create",
    "delete", "end_backup_chain", "info", "list_snapshots", "revert", "tree",
]
