"""Online backups of libvirt-run VMs with libvirt's backup API and checkpoints.

The invariants this module keeps:

* A checkpoint (one persistent dirty bitmap per disk) is created by libvirt
  atomically with the backup's point in time (``virDomainBackupBegin``), so no
  write can fall between "copied" and "tracked".
* A backup that does not complete deletes its new checkpoint. libvirt then
  merges that checkpoint's bitmap into its parent's, so the next incremental
  still contains every block written since the last *complete* backup.
* A checkpoint named ``kvmops-ID`` without a complete backup ``ID`` in the
  repository (a killed run) is deleted the same way before the next backup.
* Before an incremental the parent checkpoint's bitmaps are checked in QEMU
  (present, recording, not inconsistent); if they cannot be trusted the backup
  becomes a full, and the output and the manifest say why.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import libvirt
from lxml import etree

import kvmops
from kvmops.backup import jobs
from kvmops.backup.model import (
    BackupType,
    Consistency,
    DiskRecord,
    Manifest,
    new_backup_id,
)
from kvmops.backup.repository import Repository, sha256_file
from kvmops.errors import (
    BackupError,
    CancelledError,
    HostUnavailableError,
    HypervisorError,
    KvmopsError,
    StateError,
    StorageError,
    UnsupportedError,
    ValidationError,
)
from kvmops.host.connection import Host, call, connection_lost, translate, version_text
from kvmops.images import qemuimg
from kvmops.vm.checkpoints import (
    checkpoint_name,
    delete_checkpoint,
    foreign_checkpoints,
    kvmops_checkpoints,
    node_bitmaps,
    owned_by,
    qmp_command,
)
from kvmops.vm.domxml import DiskSpec, DomainSpec
from kvmops.vm.lifecycle import ensure_qemu_can_reach, state_name

ProgressFn = Callable[[int, int], None]
NoteFn = Callable[[str], None]


class NoteLog:
    """Collects the notes that go into a manifest while passing each on to the user."""

    def __init__(self, sink: NoteFn | None = None) -> None:
        self.sink = sink
        self.messages: list[str] = []

    def __call__(self, message: str) -> None:
        self.messages.append(message)
        if self.sink:
            self.sink(message)


@dataclass
class BackupRequest:
    vm: str
    repo: Path
    mode: BackupType | None = None  # None: incremental when a valid chain exists, else full
    disks: list[str] = field(default_factory=list)  # only these targets
    exclude: list[str] = field(default_factory=list)
    freeze: bool = True  # freeze file systems through the agent when it answers
    speed: int | None = None  # bytes per second for the copy, None for unlimited
    compress: bool = False  # store compressed qcow2 clusters


@dataclass
class DiskPlan:
    disk: DiskSpec
    mode: BackupType  # full or incremental/differential for this disk
    parent: str | None  # backup id of this disk's previous link
    checkpoint: bool  # gets a bitmap in the new checkpoint


@dataclass
class Plan:
    type: BackupType
    parent: Manifest | None
    base_checkpoint: str | None
    disks: list[DiskPlan]
    notes: list[str]


# ---------------------------------------------------------------- planning
def select_disks(spec: DomainSpec, only: list[str], exclude: list[str]) -> list[DiskSpec]:
    targets = {d.target for d in spec.disks if d.device == "disk"}
    for name in [*only, *exclude]:
        if name not in targets:
            raise ValidationError(
                f"VM '{spec.name}' has no disk '{name}'",
                hint=f"its disks are {', '.join(sorted(targets)) or 'none'}",
            )
    chosen = [d for d in spec.disks if d.device == "disk" and d.source
              and (not only or d.target in only) and d.target not in exclude]
    if not chosen:
        raise ValidationError(f"nothing to back up: no disk of VM '{spec.name}' selected")
    return chosen


def plan_backup(
    vm: str,
    disks: list[DiskSpec],
    manifests: list[Manifest],
    requested: BackupType | None,
    trusted: Callable[[str, str], str | None],
) -> Plan:
    """Decide the backup type and each disk's parent.

    ``trusted(checkpoint, target)`` returns None when that disk's bitmap for the
    checkpoint can be trusted, else the reason it cannot.
    """
    notes: list[str] = []
    complete = [m for m in manifests if m.complete]
    parent: Manifest | None = None
    kind = requested or BackupType.INCREMENTAL
    if kind is BackupType.INCREMENTAL and complete:
        parent = complete[-1]
    elif kind is BackupType.DIFFERENTIAL:
        fulls = [m for m in complete if m.type is BackupType.FULL]
        parent = fulls[-1] if fulls else None
    if kind is not BackupType.FULL and parent is None:
        if requested is not None:
            notes.append(f"no earlier full backup of VM '{vm}' in this repository: "
                         "taking a full backup")
        kind = BackupType.FULL
    if parent is not None and parent.checkpoint is None:
        notes.append(f"backup {parent.id} has no checkpoint to continue from: taking a full")
        kind, parent = BackupType.FULL, None

    plans: list[DiskPlan] = []
    for disk in disks:
        bitmap_capable = disk.fmt == "qcow2"
        if not bitmap_capable:
            notes.append(f"disk {disk.target} is {disk.fmt}: {disk.fmt} images cannot carry "
                         "dirty bitmaps, so it is copied in full every time (convert it to "
                         "qcow2 for incrementals)")
        mode = BackupType.FULL
        disk_parent = None
        if kind is not BackupType.FULL and parent is not None and bitmap_capable:
            previous = next((d for d in parent.disks if d.target == disk.target), None)
            if previous is None:
                notes.append(f"disk {disk.target} is not in backup {parent.id}: "
                             "it gets its own full backup")
            else:
                assert parent.checkpoint is not None
                reason = trusted(parent.checkpoint, disk.target)
                if reason is None:
                    mode, disk_parent = kind, parent.id
                else:
                    notes.append(f"disk {disk.target}: change tracking since {parent.id} "
                                 f"cannot be trusted ({reason}); taking a full backup")
        plans.append(DiskPlan(disk, mode, disk_parent, checkpoint=bitmap_capable))

    if kind is not BackupType.FULL and all(p.mode is BackupType.FULL for p in plans):
        kind, parent = BackupType.FULL, None
    return Plan(kind, parent, parent.checkpoint if parent else None, plans, notes)


# ---------------------------------------------------------------- XML
def backup_xml(plan: Plan, partial: Path) -> str:
    root = etree.Element("domainbackup", mode="push")
    if plan.base_checkpoint and plan.type is not BackupType.FULL:
        etree.SubElement(root, "incremental").text = plan.base_checkpoint
    disks = etree.SubElement(root, "disks")
    for item in plan.disks:
        attrs = {"name": item.disk.target, "backup": "yes", "type": "file"}
        if plan.type is not BackupType.FULL:
            attrs["backupmode"] = "full" if item.mode is BackupType.FULL else "incremental"
            if item.mode is not BackupType.FULL and plan.base_checkpoint:
                attrs["incremental"] = plan.base_checkpoint
        el = etree.SubElement(disks, "disk", attrib=attrs)
        etree.SubElement(el, "target", file=str(partial / f"{item.disk.target}.qcow2"))
        etree.SubElement(el, "driver", type="qcow2")
    return etree.tostring(root, encoding="unicode")


def checkpoint_xml(name: str, plan: Plan, all_disks: list[DiskSpec], description: str) -> str:
    root = etree.Element("domaincheckpoint")
    etree.SubElement(root, "name").text = name
    etree.SubElement(root, "description").text = description
    disks = etree.SubElement(root, "disks")
    with_bitmap = {p.disk.target for p in plan.disks if p.checkpoint}
    for disk in all_disks:
        if disk.device != "disk":
            continue
        etree.SubElement(disks, "disk", name=disk.target,
                         checkpoint="bitmap" if disk.target in with_bitmap else "no")
    return etree.tostring(root, encoding="unicode")


def bitmap_trust(domain: libvirt.virDomain) -> Callable[[str, str], str | None]:
    """Checks a checkpoint's bitmap on one disk of a running VM."""
    bitmaps = node_bitmaps(domain)

    def check(checkpoint: str, target: str) -> str | None:
        found = [b for b in bitmaps.get(target, []) if b.get("name") == checkpoint]
        if not found:
            return f"bitmap {checkpoint} not found on the disk"
        bitmap = found[0]
        if bitmap.get("inconsistent"):
            return f"bitmap {checkpoint} is inconsistent (QEMU was killed or crashed)"
        if not bitmap.get("recording", True) and not bitmap.get("busy"):
            # Only the newest bitmap records; older ones are merged from their children.
            return None
        return None

    return check


def ensure_checkpoint_metadata(domain: libvirt.virDomain, repo: Repository, vm: str,
                               name: str, note: NoteFn) -> str | None:
    """Make sure libvirt knows checkpoint ``name``; redefine it from the repository if not.

    Returns None when usable, else why not.
    """
    with contextlib.suppress(libvirt.libvirtError):
        domain.checkpointLookupByName(name, 0)
        return None
    xml = repo.checkpoint_xml(vm, name)
    if xml is None:
        return f"libvirt has no checkpoint {name} and the repository has no copy of its XML"
    flags = (libvirt.VIR_DOMAIN_CHECKPOINT_CREATE_REDEFINE
             | getattr(libvirt, "VIR_DOMAIN_CHECKPOINT_CREATE_REDEFINE_VALIDATE", 0))
    try:
        domain.checkpointCreateXML(xml, flags)
    except libvirt.libvirtError as err:
        return f"redefining checkpoint {name} failed: {err.get_error_message()}"
    note(f"libvirt had lost checkpoint {name}: redefined it from the repository")
    return None


# ---------------------------------------------------------------- the job
def _job_stats(domain: libvirt.virDomain, completed: bool = False) -> dict[str, Any]:
    """The domain's job statistics ({} when there is none); a lost connection to
    libvirtd is raised, never taken for "no job"."""
    flags = libvirt.VIR_DOMAIN_JOB_STATS_COMPLETED if completed else 0
    try:
        stats = domain.jobStats(flags)
    except libvirt.libvirtError as err:
        if connection_lost(err):
            raise translate(err, "following the backup job") from err
        return {}
    return dict(stats)


def active_backup_job(domain: libvirt.virDomain) -> dict[str, Any] | None:
    stats = _job_stats(domain)
    if stats.get("type", libvirt.VIR_DOMAIN_JOB_NONE) == libvirt.VIR_DOMAIN_JOB_NONE:
        return None
    if stats.get("operation") != libvirt.VIR_DOMAIN_JOB_OPERATION_BACKUP:
        return None
    return stats


def _job_bytes(stats: dict[str, Any]) -> tuple[int, int]:
    """Bytes done and total of a backup job (libvirt reports them as disk_*)."""
    done = stats.get("disk_processed", stats.get("data_processed", 0))
    total = stats.get("disk_total", stats.get("data_total", 0))
    return int(done), int(total)


def wait_for_job(domain: libvirt.virDomain, progress: ProgressFn | None,
                 poll: float = 0.3) -> None:
    """Follow the running backup job to its end; raise when it did not complete."""
    name = domain.name()
    while True:
        stats = _job_stats(domain)
        job_type = stats.get("type", libvirt.VIR_DOMAIN_JOB_NONE)
        if job_type == libvirt.VIR_DOMAIN_JOB_NONE:
            break
        if progress:
            progress(*_job_bytes(stats))
        time.sleep(poll)
    final = _job_stats(domain, completed=True)
    outcome = final.get("type")
    if outcome == libvirt.VIR_DOMAIN_JOB_COMPLETED:
        if progress:
            total = _job_bytes(final)[1]
            if total:
                progress(total, total)
        return
    if not call(f"reading the state of VM '{name}'", domain.isActive):
        raise BackupError(f"VM '{name}' stopped while the backup ran; the backup is discarded",
                          hint="start the VM and run the backup again (or back it up shut off)")
    if outcome == libvirt.VIR_DOMAIN_JOB_CANCELLED:
        raise BackupError(f"backup of VM '{name}' was cancelled")
    detail = final.get("errmsg") or "see the VM's log in /var/log/libvirt/qemu"
    raise BackupError(f"backup job of VM '{name}' failed: {detail}")


def limit_speed(domain: libvirt.virDomain, speed: int) -> None:
    """Throttle the backup's block jobs (libvirt's backup API has no bandwidth knob).

    ``block-job-set-speed`` only changes the rate of the job libvirt started; it does not
    touch the job's state, which libvirt keeps tracking.
    """
    for job in qmp_command(domain, "query-block-jobs") or []:
        if job.get("type") == "backup":
            qmp_command(domain, "block-job-set-speed", {"device": job["device"], "speed": speed})


@contextlib.contextmanager
def frozen(domain: libvirt.virDomain, wanted: bool, note: NoteFn) -> Iterator[bool]:
    """Freeze the guest's file systems for the instant of the checkpoint; always thaw."""
    if not wanted or "org.qemu.guest_agent.0" not in domain.XMLDesc(0):
        yield False
        return
    try:
        count = int(domain.fsFreeze(None, 0))
    except libvirt.libvirtError as err:
        note(f"could not freeze the guest's file systems ({err.get_error_message()}): "
             "the backup is crash-consistent")
        yield False
        return
    if count == 0:  # nothing was frozen: the backup is not application-consistent
        note("the guest agent froze no file system (none it can freeze is mounted): the "
             "backup is crash-consistent")
    try:
        yield count > 0
    finally:
        for attempt in range(5):
            try:
                domain.fsThaw(None, 0)
                break
            except libvirt.libvirtError as err:
                if attempt == 4:
                    note(f"THAW FAILED for VM '{domain.name()}': {err.get_error_message()}; "
                         f"run 'virsh domfsthaw {domain.name()}' now")
                time.sleep(0.5)


class _Interrupted(CancelledError):
    """A signal (``backup cancel`` sends SIGTERM) turned into the clean-up path."""


def _why(err: BaseException) -> str:
    return "Ctrl-C" if isinstance(err, KeyboardInterrupt) else str(err)


def _raise_interrupt(signum: int, _frame: object) -> None:
    raise _Interrupted(f"backup interrupted by signal {signal.Signals(signum).name}")


def run_backup(host: Host, req: BackupRequest, *, progress: ProgressFn | None = None,
               note: NoteFn | None = None) -> Manifest:
    """Back up a running or shut-off VM into the repository; return the published manifest."""
    say = NoteLog(note)
    notes = say.messages
    repo = Repository(req.repo)
    domain = host.domain(req.vm)
    with repo.lock(req.vm, "backup"), jobs.registered(req.vm, str(repo.root)):
        state = state_name(domain)
        if state not in ("running", "idle", "paused"):
            from kvmops.backup.offline import run_offline_backup

            return run_offline_backup(host, repo, req, say, progress)
        return _run_online(host, domain, repo, req, progress, say, notes)


def _run_online(host: Host, domain: libvirt.virDomain, repo: Repository, req: BackupRequest,
                progress: ProgressFn | None, say: NoteFn, notes: list[str]) -> Manifest:
    vm = req.vm
    if active_backup_job(domain):
        if not _orphaned_job_of(domain, repo, vm):
            raise StateError(f"a backup job is already running on VM '{vm}'",
                             hint=f"wait for it, or cancel it with 'kvmops backup cancel {vm}'")
        say("aborted the backup job of an interrupted kvmops run still writing into this "
            "repository")
        _abort(domain, vm)
    recover(domain, repo, vm, say)
    ensure_qemu_can_reach(repo.root)
    foreign = foreign_checkpoints(domain)
    if foreign:
        say(f"VM '{vm}' has checkpoints kvmops did not create, left alone: {', '.join(foreign)}")

    xml = call("reading XML", domain.XMLDesc, 0)
    spec = DomainSpec.from_xml(xml)
    disks = select_disks(spec, req.disks, req.exclude)
    manifests = repo.manifests(vm)

    trust = bitmap_trust(domain)

    def trusted(checkpoint: str, target: str) -> str | None:
        problem = ensure_checkpoint_metadata(domain, repo, vm, checkpoint, say)
        if problem:
            return problem
        return trust(checkpoint, target)

    # Re-read the bitmaps after a possible redefine.
    plan = plan_backup(vm, disks, manifests, req.mode, trusted)
    for message in plan.notes:
        say(message)

    backup_id = new_backup_id()
    cp_name = checkpoint_name(backup_id, repo.identity())
    partial = repo.start_partial(vm, backup_id)
    started = time.monotonic()
    checkpoint_created = False
    # SIGTERM (``backup cancel``) becomes an exception that runs the clean-up below. Python
    # allows handlers only in the main thread; elsewhere (API workers) the caller cancels.
    in_main = threading.current_thread() is threading.main_thread()
    previous_handlers = ({s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGHUP)}
                         if in_main else {})
    try:
        for sig in previous_handlers:
            signal.signal(sig, _raise_interrupt)
        jobs.record_event(vm, "started", backup_id=backup_id, type=plan.type.value)
        backup = backup_xml(plan, partial)
        checkpoint = checkpoint_xml(cp_name, plan, spec.disks, f"kvmops backup {backup_id}")
        with frozen(domain, req.freeze, say) as was_frozen:
            try:
                domain.backupBegin(backup, checkpoint, 0)
            except libvirt.libvirtError as err:
                if err.get_error_code() == libvirt.VIR_ERR_CHECKPOINT_INCONSISTENT:
                    raise BackupError(
                        f"libvirt reports checkpoint {plan.base_checkpoint} of VM '{vm}' "
                        f"inconsistent: {err.get_error_message()}",
                        hint="run 'kvmops backup create --full' to start a new chain",
                    ) from err
                raise _begin_error(err, vm, partial) from err
            checkpoint_created = True
        if req.speed:
            limit_speed(domain, req.speed)
        wait_for_job(domain, progress)

        records = _finish_files(repo, vm, partial, plan, compress=req.compress)
        repo.save_checkpoint_xml(vm, cp_name, domain.checkpointLookupByName(cp_name, 0)
                                 .getXMLDesc(0))
        manifest = Manifest(
            id=backup_id, vm=vm, time=_id_time(backup_id), type=plan.type,
            parent=plan.parent.id if plan.parent else None, checkpoint=cp_name,
            consistency=Consistency.APPLICATION if was_frozen else Consistency.CRASH,
            transport="libvirt", disks=records, notes=notes, domain_xml=xml,
            tool_version=kvmops.__version__,
            qemu_version=version_text(host.qemu_version()),
            libvirt_version=version_text(host.libvirt_version()),
            duration_s=round(time.monotonic() - started, 3),
        )
        repo.publish(vm, partial, manifest)
    except BaseException as err:
        left = _clean_up_run(domain, vm, cp_name if checkpoint_created else None, say)
        repo.discard_partial(partial)
        jobs.record_event(vm, "cancelled" if isinstance(err, _Interrupted | KeyboardInterrupt)
                          else "failed", backup_id=backup_id, error=str(err))
        if isinstance(err, _Interrupted | KeyboardInterrupt) and not left:
            raise CancelledError(
                f"backup of VM '{vm}' cancelled ({_why(err)}): nothing was published; "
                f"the unfinished backup {backup_id} was removed"
                + (f" and checkpoint {cp_name} deleted" if checkpoint_created else ""),
                hint=f"the next backup of {vm} still holds every change since the last "
                     "complete one") from err
        if isinstance(err, HostUnavailableError) or left:
            raise HostUnavailableError(
                f"lost the connection to libvirtd while backing up VM '{vm}': nothing was "
                f"published and the unfinished backup {backup_id} was removed"
                + (f"; {', '.join(left)} is left for the next backup of {vm} to clean up"
                   if left else ""),
                hint=f"once libvirtd answers again ('kvmops host doctor'), run the backup "
                     f"again: the next 'kvmops backup create {vm}' cleans up first") from err
        raise
    finally:
        for sig, handler in previous_handlers.items():
            signal.signal(sig, handler)
    jobs.record_event(vm, "completed", backup_id=backup_id, type=plan.type.value)
    prune_checkpoints(domain, repo, vm, say)
    return manifest


def _clean_up_run(domain: libvirt.virDomain, vm: str, checkpoint: str | None,
                  say: NoteFn) -> list[str]:
    """End the job and delete the new checkpoint of a run that failed; returns what could
    not be cleaned up because libvirtd is unreachable (the next run's recover does it)."""
    left: list[str] = []
    try:
        _abort(domain, vm)
    except HostUnavailableError:
        left.append("libvirt's backup job")
    if checkpoint is not None:
        try:
            delete_checkpoint(domain, checkpoint, say)
        except HostUnavailableError:
            left.append(f"checkpoint {checkpoint}")
    return left


def _orphaned_job_of(domain: libvirt.virDomain, repo: Repository, vm: str) -> bool:
    """Is the running backup job one a killed kvmops started into this repository?

    We hold the repository lock, so no live kvmops is writing into it: a job whose
    targets lie in this repository's partial directories has lost its owner.
    """
    try:
        xml = etree.fromstring(domain.backupGetXMLDesc(0).encode())
    except libvirt.libvirtError:
        return False
    partial_root = str(repo.backups_dir(vm) / ".partial-")
    targets = [t.get("file", "") for t in xml.findall("disks/disk/target")]
    return bool(targets) and all(t.startswith(partial_root) for t in targets)


def _begin_error(err: libvirt.libvirtError, vm: str, partial: Path) -> KvmopsError:
    text = err.get_error_message() or str(err)
    if "Permission denied" in text:
        return StorageError(f"QEMU cannot write the backup of VM '{vm}' into {partial}: {text}",
                            hint="QEMU runs as libvirt-qemu: the repository must be reachable "
                                 "and writable for it")
    if "unsupported" in text.lower():
        return UnsupportedError(f"backup of VM '{vm}' not possible: {text}")
    return HypervisorError(f"starting the backup of VM '{vm}' failed: {text}")


def _abort(domain: libvirt.virDomain, vm: str) -> None:
    """Abort the domain's backup job, if any (HostUnavailableError when libvirtd is gone)."""
    try:
        if active_backup_job(domain):
            domain.abortJob()
            deadline = time.monotonic() + 30
            while active_backup_job(domain) and time.monotonic() < deadline:
                time.sleep(0.2)
    except libvirt.libvirtError as err:
        if connection_lost(err):
            raise translate(err, f"aborting the backup job of VM '{vm}'") from err


def _id_time(backup_id: str) -> datetime:
    return datetime.strptime(backup_id, "%Y%m%dT%H%M%S.%fZ").replace(tzinfo=UTC)


def _finish_files(repo: Repository, vm: str, partial: Path, plan: Plan,
                  compress: bool = False) -> list[DiskRecord]:
    """Re-link incrementals to their parent (relative), compress if asked, checksum."""
    records = []
    for item in plan.disks:
        path = partial / f"{item.disk.target}.qcow2"
        if not path.is_file():
            raise BackupError(f"backup file {path} was not written for VM '{vm}'")
        if item.parent:
            parent_file = repo.backups_dir(vm) / item.parent / f"{item.disk.target}.qcow2"
            if not parent_file.is_file():
                raise BackupError(f"parent backup file {parent_file} is missing")
            link_to_parent(path, item.parent, item.disk.target)
        if compress:
            compress_in_place(path, f"../{item.parent}/{item.disk.target}.qcow2"
                              if item.parent else None)
        info = qemuimg.info(path, "qcow2")
        records.append(DiskRecord(
            target=item.disk.target, file=path.name, source=item.disk.source or "",
            type=item.mode, parent=item.parent, virtual_size=info.virtual_size,
            bytes_written=info.actual_size or os.path.getsize(path),
            sha256=sha256_file(path),
        ))
    return records


def compress_in_place(path: Path, backing: str | None) -> None:
    """Rewrite a backup file with compressed clusters (QEMU's push job cannot compress).

    With ``-B`` only the clusters of the file itself are copied, so an incremental stays
    an incremental on the same (relative) parent.
    """
    tmp = path.with_name(f".{path.name}.compressing")
    args = ["convert", "-c", "-W", "-m", "8", "-f", "qcow2", "-O", "qcow2"]
    if backing:
        args += ["-B", backing, "-F", "qcow2"]
    try:
        qemuimg.run_qemu_img([*args, str(path), str(tmp)], what=f"compressing {path.name}",
                             path=path)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def link_to_parent(path: Path, parent_id: str, target: str) -> None:
    """Point an incremental at its parent with a *relative* backing link (movable repo)."""
    relative = f"../{parent_id}/{target}.qcow2"
    qemuimg.run_qemu_img(["rebase", "-u", "-f", "qcow2", "-b", relative, "-F", "qcow2",
                          str(path)], what=f"linking {path.name} to {relative}", path=path)


def recover(domain: libvirt.virDomain, repo: Repository, vm: str, say: NoteFn) -> None:
    """Clean up after a killed run: partial directories and this repository's orphan
    checkpoints (another repository's checkpoints are never touched)."""
    manifests = repo.manifests(vm)
    complete = {m.checkpoint for m in manifests if m.complete and m.checkpoint}
    referenced = {m.checkpoint for m in manifests if m.checkpoint}
    for partial in repo.partials(vm):
        repo.discard_partial(partial)
        say(f"removed unfinished backup {partial.name} left by an interrupted run")
    names = [c.getName() for c in kvmops_checkpoints(domain)]
    for name in reversed(owned_by(names, repo.identity(), referenced)):
        if name not in complete and repo.checkpoint_xml(vm, name) is None:
            delete_checkpoint(domain, name, say)
            say(f"deleted checkpoint {name} of an unfinished backup (its changes are kept "
                "in the previous checkpoint)")


def prune_checkpoints(domain: libvirt.virDomain, repo: Repository, vm: str, say: NoteFn) -> None:
    """Keep only the checkpoints this repository's future backups need: the newest, and
    the newest full's. Other repositories' checkpoints are theirs to keep."""
    manifests = [m for m in repo.manifests(vm) if m.complete]
    if not manifests:
        return
    keep = {manifests[-1].checkpoint}
    fulls = [m for m in manifests if m.type is BackupType.FULL]
    if fulls:
        keep.add(fulls[-1].checkpoint)
    referenced = {m.checkpoint for m in manifests if m.checkpoint}
    names = [c.getName() for c in kvmops_checkpoints(domain)]
    for name in owned_by(names, repo.identity(), referenced):
        if name not in keep:
            try:
                delete_checkpoint(domain, name, say)
            except KvmopsError as err:
                say(f"could not delete old checkpoint {name}: {err}")
                continue
            repo.remove_checkpoint_xml(vm, name)


def set_paused(vm: str, paused: bool) -> str:
    """Pause or resume the running backup of ``vm`` (raw-QMP transport only)."""
    job = jobs.running_job(vm)
    if job is None:
        raise StateError(f"no backup of VM '{vm}' is running")
    if job.transport != "qmp":
        raise UnsupportedError(
            f"the backup of VM '{vm}' runs through libvirt, which cannot pause backup jobs",
            hint=f"cancel it with 'kvmops backup cancel {vm}' and run it later: the next "
                 "incremental still holds every change")
    os.kill(job.pid, signal.SIGUSR1 if paused else signal.SIGUSR2)
    verb = "pause" if paused else "resume"
    return f"asked kvmops process {job.pid} to {verb} the backup of VM '{vm}'"


def cancel(host: Host, vm: str) -> str:
    """Cancel the running backup of ``vm``: signal its kvmops process, or abort libvirt's job."""
    job = jobs.running_job(vm)
    if job is not None:
        os.kill(job.pid, signal.SIGTERM)
        return f"asked kvmops process {job.pid} to cancel the backup of VM '{vm}'"
    domain = host.domain(vm)
    if active_backup_job(domain):
        call(f"aborting the backup job of VM '{vm}'", domain.abortJob)
        return f"aborted the backup job of VM '{vm}'"
    raise StateError(f"no backup of VM '{vm}' is running")
