"""Instant recovery: start a VM at once on copy-on-write overlays of a backup point and
move the data into them in the background.

For each disk a new qcow2 overlay in the images directory is backed by the point's
chain top in the repository (formats named, the chain checked inside the repository:
:func:`kvmops.backup.restore.checked_chain`). The new VM is rebuilt from the manifest's
definition through the typed model (:func:`kvmops.backup.restore.restore_new_vm`), its
disks given their backing chain explicitly (``<backingStore>``) with
``<seclabel model='dac' relabel='no'/>`` on every repository file: QEMU opens them
read-only and libvirt neither chowns nor labels them (without it libvirt would chown the
repository's files to libvirt-qemu and leave them so). Then a block pull
(:mod:`kvmops.host.blockpull`) streams the chain into each overlay, which becomes the
standalone final image; libvirt drops the chain from the definition when it completes.

A small record per recovery in the state directory (``instant/VM.json``, written
atomically) names the VM, its disks, overlays, repository files and point, so that a
later ``kvmops backup instant resume`` (or ``kvmops serve`` at start-up) re-attaches:
the QEMU job goes on without kvmops; if the VM stopped mid-pull the pull restarts (on a
running VM) or runs offline (``qemu-img rebase -b ''`` on a shut-off one).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import stat
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path

from lxml import etree
from pydantic import BaseModel, Field

from kvmops.backup.model import Manifest, disk_chain
from kvmops.backup.repository import Repository, fsync_dir
from kvmops.backup.restore import RestoredDisk, checked_chain, restore_new_vm
from kvmops.config import settings
from kvmops.errors import (
    BackupInconsistentError,
    CancelledError,
    KvmopsError,
    NotFoundError,
    StateError,
    StorageError,
)
from kvmops.host import blockpull
from kvmops.host.connection import Host
from kvmops.host.domain import Domain
from kvmops.images import qemuimg
from kvmops.images.chain import inspect
from kvmops.paths import policy
from kvmops.vm.lifecycle import ensure_qemu_can_reach
from kvmops.vm.lifecycle import start as start_vm

POLL_S = 0.5


class InstantState(StrEnum):
    PULLING = "pulling"  # the VM runs on the overlays; data still moves
    COMPLETED = "completed"  # every overlay is standalone (verified)
    CANCELLED = "cancelled"  # the pull was stopped: the VM still reads the repository
    FAILED = "failed"


class InstantDisk(BaseModel):
    target: str
    overlay: str  # the final image (an overlay until the pull completes)
    chain: list[str]  # the repository files under it, top first
    backups: list[str]  # their backup ids, full first
    size: int  # virtual size in bytes
    done: bool = False


class InstantRecord(BaseModel):
    vm: str  # the recovered VM
    source_vm: str  # the VM the backups are of
    repo: str
    backup_id: str
    uri: str | None = None
    bandwidth: int | None = None  # bytes/s, None: unlimited
    state: InstantState = InstantState.PULLING
    started: datetime = Field(default_factory=lambda: datetime.now(UTC))
    finished: datetime | None = None
    message: str | None = None
    disks: list[InstantDisk] = []
    notes: list[str] = []
    # A store-backed repository's chains, opened next to the images (removed at the end)
    work_dir: str | None = None


class DiskProgress(BaseModel):
    target: str
    overlay: str
    job: bool
    backed: bool
    done: int
    total: int
    percent: float


class InstantStatus(BaseModel):
    """A recovery and where its pulls stand (from libvirt's block job info)."""

    record: InstantRecord
    vm_running: bool
    disks: list[DiskProgress]
    done: int
    total: int

    @property
    def percent(self) -> float:
        return round(100.0 * self.done / self.total, 1) if self.total else 100.0


# ------------------------------------------------------------------ records
def records_dir() -> Path:
    return settings().state_dir / "instant"


def record_path(vm: str) -> Path:
    return records_dir() / f"{vm}.json"


def save(record: InstantRecord) -> None:
    path = record_path(record.vm)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as fh:
        fh.write(record.model_dump_json(indent=2))
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def load(vm: str) -> InstantRecord:
    path = record_path(vm)
    try:
        return InstantRecord.model_validate_json(path.read_text())
    except FileNotFoundError:
        raise NotFoundError(f"no instant recovery of VM '{vm}'",
                            hint="see 'kvmops backup instant list'") from None


def all_records() -> list[InstantRecord]:
    out = []
    directory = records_dir()
    if not directory.is_dir():
        return []
    for path in sorted(directory.glob("*.json")):
        with contextlib.suppress(ValueError, OSError):
            out.append(InstantRecord.model_validate_json(path.read_text()))
    return sorted(out, key=lambda r: r.started)


def forget(vm: str) -> None:
    for path in (record_path(vm), records_dir() / f".{vm}.lock"):
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


@contextlib.contextmanager
def _locked(vm: str) -> Iterator[None]:
    """One writer of a recovery's record at a time (a follower and a resume)."""
    directory = records_dir()
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(directory / f".{vm}.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def pinned_backups(repo: Path, vm: str) -> set[str]:
    """Backup ids of ``vm`` in ``repo`` that a recovery still reads (prune keeps them)."""
    real = os.path.realpath(repo)
    return {bid for r in all_records()
            if r.state is not InstantState.COMPLETED and r.source_vm == vm
            and os.path.realpath(r.repo) == real
            for d in r.disks if not d.done for bid in d.backups}


# ------------------------------------------------------------------ definition
def with_backing(xml: str, chains: dict[str, list[Path]], *, relabel: bool = False) -> str:
    """``xml`` with each disk's backing chain spelled out (formats named), every
    repository file marked ``relabel='no'``: libvirt must not chown them (``relabel``:
    kvmops' own opened copies of a store-backed repository's files, labelled as usual)."""
    root = etree.fromstring(xml.encode())
    for disk in root.findall("devices/disk"):
        target = disk.find("target")
        source = disk.find("source")
        if target is None or source is None or target.get("dev") not in chains:
            continue
        for old in disk.findall("backingStore"):
            disk.remove(old)
        parent, index = disk, list(disk).index(source) + 1
        for path in chains[str(target.get("dev"))]:
            store = etree.Element("backingStore", type="file")
            etree.SubElement(store, "format", type="qcow2")
            src = etree.SubElement(store, "source", file=str(path))
            if not relabel:
                etree.SubElement(src, "seclabel", model="dac", relabel="no")
            parent.insert(index, store)
            parent, index = store, len(store)
        parent.insert(index, etree.Element("backingStore"))
    return etree.tostring(root, encoding="unicode")


def _drop_config_backing(domain: Domain, target: str) -> None:
    """The persistent definition without the chain under ``target`` (after an offline
    pull; libvirt updates it itself when a live pull completes)."""
    root = etree.fromstring(domain.config_xml().encode())
    changed = False
    for disk in root.findall("devices/disk"):
        el = disk.find("target")
        if el is not None and el.get("dev") == target:
            for old in disk.findall("backingStore"):
                disk.remove(old)
                changed = True
    if changed:
        domain.redefine(etree.tostring(root, encoding="unicode"),
                        what=f"dropping the backing chain of disk {target}")


def _readable_by_qemu(files: list[Path]) -> None:
    """QEMU runs as libvirt-qemu and reads the repository's files as they are."""
    ensure_qemu_can_reach(files[0].parent)
    for path in files:
        ensure_qemu_can_reach(path.parent)
        if not path.stat().st_mode & stat.S_IROTH:
            raise StorageError(f"QEMU (user libvirt-qemu) cannot read backup file {path}",
                               hint=f"run 'chmod o+r {path}' (kvmops writes them 0644)")


def _opened_copy(repo: Repository, vm: str, point: Manifest, by_id: dict[str, Manifest],
                 target: str, work: Path) -> Repository:
    """A store-backed repository's chain of ``target`` opened (authenticated, decrypted)
    into ``work``, a plain layout that outlives the command (QEMU reads it until the copy
    ends); a plain repository is read in place."""
    from kvmops.backup.storerepo import FetchedView, StoreRepository

    if not isinstance(repo, StoreRepository):
        return repo
    work.mkdir(mode=0o711, exist_ok=True)  # libvirt-qemu may pass, not list
    view = FetchedView(work, repo)
    for manifest in disk_chain(by_id, point.id, target):
        record = manifest.disk(target)
        dst = view.backups_dir(vm) / manifest.id / record.file
        for parent in reversed(dst.relative_to(work).parents):
            (work / parent).mkdir(mode=0o711, exist_ok=True)
        repo.get_data(repo.data_key(vm, manifest.id, record.file), dst)
        dst.chmod(0o600)  # plaintext: libvirt gives it to libvirt-qemu for the VM alone
    return view


def prepare(host: Host, repo_path: Path | Repository, vm: str, at: str | None,
            new_name: str, images_dir: Path | None, *, uri: str | None = None,
            bandwidth: int | None = None) -> InstantRecord:
    """Overlays on the point's chains and the new VM defined on them (not started)."""
    chains: dict[str, list[Path]] = {}
    made: list[InstantDisk] = []
    target_dir = policy().new_images_dir(images_dir, trusted=True)
    work = target_dir / f".{new_name}-backup"
    copies = False

    def make_disk(repo: Repository, src_vm: str, point: Manifest,
                  by_id: dict[str, Manifest], target: str, dst: Path) -> RestoredDisk:
        nonlocal copies
        local = _opened_copy(repo, src_vm, point, by_id, target, work)
        copies = local is not repo
        _top, chain = checked_chain(local, src_vm, point, by_id, target)
        files = [Path(os.path.realpath(local.backups_dir(src_vm) / m.id / m.disk(target).file))
                 for m in reversed(chain)]
        if not copies:
            _readable_by_qemu(files)
        info = qemuimg.create(dst, None, "qcow2", backing=files[0], backing_fmt="qcow2")
        chains[target] = files
        made.append(InstantDisk(target=target, overlay=str(dst),
                                chain=[str(f) for f in files],
                                backups=[m.id for m in chain], size=info.virtual_size))
        return RestoredDisk(target=target, path=str(dst), chain=[m.id for m in chain])

    try:
        result = restore_new_vm(host, repo_path, vm, at, new_name, target_dir,
                                make_disk=make_disk,
                                finish_xml=lambda xml: with_backing(xml, chains,
                                                                    relabel=copies))
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    location = ((getattr(repo_path, "location", None) or repo_path.root)
                if isinstance(repo_path, Repository) else repo_path)
    record = InstantRecord(vm=new_name, source_vm=vm, repo=str(location),
                           backup_id=result.backup_id, uri=uri, bandwidth=bandwidth,
                           disks=made, notes=result.notes,
                           work_dir=str(work) if copies else None)
    save(record)
    return record


def start(host: Host, record: InstantRecord) -> None:
    """Start the recovered VM and a pull on each of its disks."""
    start_vm(host, record.vm)  # as 'kvmops vm start' (its networks checked first)
    domain = host.lookup(record.vm)
    for disk in record.disks:
        blockpull.start_pull(domain, disk.target, record.bandwidth)


def discard(host: Host, record: InstantRecord) -> None:
    """Undo a recovery that did not start: VM off and undefined, overlays removed."""
    with contextlib.suppress(KvmopsError):
        domain = host.lookup(record.vm)
        with contextlib.suppress(KvmopsError):
            if domain.is_active():
                domain.destroy()
        with contextlib.suppress(KvmopsError):
            domain.undefine()
    for disk in record.disks:
        with contextlib.suppress(OSError):
            os.unlink(disk.overlay)
    drop_work(record)
    forget(record.vm)


def drop_work(record: InstantRecord) -> None:
    """The opened copies of a store-backed repository's chains, once nothing reads them."""
    if record.work_dir:
        shutil.rmtree(record.work_dir, ignore_errors=True)


# ------------------------------------------------------------------ progress
def status(host: Host, record: InstantRecord) -> InstantStatus:
    """The recovery's progress; a disk whose pull completed is verified and recorded."""
    try:
        domain: Domain | None = host.lookup(record.vm)
    except NotFoundError:
        domain = None
    running = domain is not None and domain.is_active()
    disks = []
    for disk in record.disks:
        pull = blockpull.pull_status(domain, disk.target) if running else None
        if (not disk.done and running and pull is not None and not pull.job
                and not pull.backed and record.state is not InstantState.FAILED):
            _finish_disk(record, disk)
        if disk.done:
            disks.append(DiskProgress(target=disk.target, overlay=disk.overlay, job=False,
                                      backed=False, done=disk.size, total=disk.size,
                                      percent=100.0))
        elif pull is not None and pull.job:
            total = pull.end or disk.size
            disks.append(DiskProgress(target=disk.target, overlay=disk.overlay, job=True,
                                      backed=True, done=pull.cur, total=total,
                                      percent=pull.percent))
        else:
            disks.append(DiskProgress(target=disk.target, overlay=disk.overlay, job=False,
                                      backed=True, done=0, total=disk.size, percent=0.0))
    if record.state is InstantState.PULLING and all(d.done for d in record.disks):
        record.state = InstantState.COMPLETED
        record.finished = datetime.now(UTC)
        record.message = "every disk is standalone"
        drop_work(record)
    return InstantStatus(record=record, vm_running=running, disks=disks,
                         done=sum(d.done for d in disks), total=sum(d.total for d in disks))


def _finish_disk(record: InstantRecord, disk: InstantDisk) -> None:
    """The overlay must now be standalone: no backing file, no data file."""
    info = qemuimg.info(disk.overlay, "qcow2", force_share=True)
    if info.backing_filename or info.data_file:
        raise BackupInconsistentError(
            f"the pull of disk {disk.target} of VM '{record.vm}' ended but {disk.overlay} "
            f"still names {info.backing_filename or info.data_file}",
            hint=f"run 'kvmops backup instant resume {record.vm}'")
    disk.done = True


def refresh(host: Host, vm: str) -> InstantStatus:
    """The status of one recovery, its record updated (completion verified)."""
    with _locked(vm):
        record = load(vm)
        before = record.model_dump_json()
        result = status(host, record)
        if record.model_dump_json() != before:
            save(record)
    return result


# ------------------------------------------------------------------ resume / cancel
def resume(host: Host, vm: str, *, bandwidth: int | None = None,
           note: Callable[[str], None] | None = None) -> InstantStatus:
    """Re-attach to a recovery: a running pull is left to QEMU (its speed set when
    ``bandwidth`` is given); a disk of a running VM with no pull gets a new one; a
    shut-off VM's overlays are pulled offline (qemu-img rebase)."""
    with _locked(vm):
        record = load(vm)
        if record.state is InstantState.COMPLETED:
            return status(host, record)
        if bandwidth is not None:
            record.bandwidth = bandwidth or None
        domain = host.lookup(vm)
        running = domain.is_active()
        for disk in record.disks:
            if disk.done:
                continue
            if running:
                pull = blockpull.pull_status(domain, disk.target)
                if pull is None:
                    continue
                if pull.job:
                    if bandwidth is not None:
                        blockpull.set_speed(domain, disk.target, record.bandwidth)
                elif pull.backed:
                    if note:
                        note(f"disk {disk.target}: no pull runs (the VM was restarted or the "
                             "pull cancelled): starting it again")
                    blockpull.start_pull(domain, disk.target, record.bandwidth)
            else:
                if note:
                    note(f"VM '{vm}' is not running: pulling disk {disk.target} offline")
                _offline_pull(record, disk)
                _drop_config_backing(domain, disk.target)
                disk.done = True
        record.state = InstantState.PULLING
        record.message = None
        result = status(host, record)
        save(record)
    return result


def _offline_pull(record: InstantRecord, disk: InstantDisk) -> None:
    overlay = Path(disk.overlay)
    info = qemuimg.info(overlay, "qcow2", force_share=False)
    if info.backing_filename:
        # The chain the overlay names is checked again before qemu-img follows it.
        found = [str(link.path) for link in inspect(
            overlay, "qcow2", within=[Path(os.path.realpath(record.work_dir or record.repo))],
            trusted_top=True, force_share=False).links[1:]]
        if found != disk.chain:
            raise BackupInconsistentError(
                f"overlay {overlay} is no longer backed by the recorded chain",
                hint="restore the point again (kvmops backup restore --new-vm)")
        qemuimg.rebase(overlay, "qcow2", None)
    _finish_disk(record, disk)


def cancel(host: Host, vm: str) -> InstantRecord:
    """Stop the pulls; the VM keeps running on its overlays, reading the rest from the
    repository (``resume`` starts the pulls again)."""
    with _locked(vm):
        record = load(vm)
        if record.state is InstantState.COMPLETED:
            raise StateError(f"the instant recovery of VM '{vm}' has completed",
                             actual="completed", required="pulling")
        domain = host.lookup(vm)
        if domain.is_active():
            for disk in record.disks:
                pull = blockpull.pull_status(domain, disk.target)
                if pull is not None and pull.job:
                    blockpull.abort_pull(domain, disk.target)
        record.state = InstantState.CANCELLED
        record.message = ("cancelled: the VM still reads from the repository until "
                          "'kvmops backup instant resume' completes the copy")
        save(record)
    return record


def follow(host: Host, vm: str, *, progress: Callable[[InstantStatus], None] | None = None,
           poll_s: float = POLL_S) -> InstantStatus:
    """Wait for the recovery to complete, reporting its status at each poll. A pull that
    stopped short (the VM stopped, the job was aborted) is an error once libvirt has had
    a few polls to record a completion."""
    idle = 0
    while True:
        current = refresh(host, vm)
        if progress is not None:
            progress(current)
        state = current.record.state
        if state is InstantState.COMPLETED:
            return current
        if state is InstantState.CANCELLED:
            raise CancelledError(f"the instant recovery of VM '{vm}' was cancelled",
                                 hint=f"'kvmops backup instant resume {vm}' goes on")
        idle = 0 if any(d.job for d in current.disks) else idle + 1
        if idle >= 4:
            raise StateError(
                f"the pull of VM '{vm}' stopped before it completed"
                + ("" if current.vm_running else " (the VM is not running)"),
                hint=f"run 'kvmops backup instant resume {vm}'")
        time.sleep(poll_s)


def cancel_by_name(uri: str | None, vm: str) -> InstantRecord:
    """:func:`cancel` on its own connection (a cancelled API job)."""
    with Host(uri) as host:
        return cancel(host, vm)


def refuse_if_in_use(repo: str | Path, vm: str, touched: set[str], action: str) -> None:
    """Writers that delete or rewrite backups of ``vm`` (prune) call this first: a
    recovery that has not completed still reads its point's chain."""
    used = sorted(pinned_backups(Path(repo), vm) & touched)
    if used:
        users = sorted(r.vm for r in all_records() if r.state is not InstantState.COMPLETED
                       and r.source_vm == vm and set(used) & {b for d in r.disks
                                                               for b in d.backups})
        raise StateError(
            f"cannot {action} VM '{vm}' in {repo}: backup {used[0]}"
            + (f" (and {len(used) - 1} more)" if len(used) > 1 else "")
            + f" is read by the instant recovery of VM '{', '.join(users)}'",
            hint=f"let it complete ('kvmops backup instant resume {users[0] if users else ''}')")
