"""Online backups of libvirt-run VMs with libvirt's backup API and checkpoints.

The invariants this module keeps:

* A checkpoint (one persistent dirty bitmap per disk) is created by libvirt
  atomically with the backup's point in time (``virDomainBackupBegin``), so no
  write can fall between "copied" and "tracked".
* A backup that does not complete deletes its new checkpoint. libvirt then
  merges that checkpoint's bitmap into its parent's, so the next incremental
  still contains every block written since the last *complete* backup.
* A checkpoint of this repository (``kvmops-REPO-ID``) without a complete backup
  ``ID`` in it (a killed run) is deleted the same way before the next backup;
  another repository's checkpoints are never touched.
* Before an incremental the parent checkpoint's bitmaps are checked in QEMU
  (present, recording, not inconsistent); if they cannot be trusted the backup
  becomes a full, and the output and the manifest say why.
* After a live migration the chain goes on where the VM now runs when the parent's
  checkpoint (handed over by the migration, or redefined here from the repository's
  copy) and its bitmaps (in the qcow2 on shared storage, or migrated with the disks)
  are there; otherwise the backup is a full with a note saying the VM moved. Each
  manifest records the host it was taken on (``host``, ``host_uuid``).

The run itself (signals, events, clean-up, manifest) is :mod:`kvmops.backup.run`'s,
the plan :mod:`kvmops.backup.plan`'s, libvirt's calls :mod:`kvmops.host.backupjobs`'.
A shut-off VM is backed up by :mod:`kvmops.backup.offline`.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

from lxml import etree

from kvmops.backup import fleecing, jobs, ramwork
from kvmops.backup.checkpoints import (
    bitmap_trust,
    checkpoint_xml,
    ensure_checkpoint_metadata,
    host_identity,
    prune_checkpoints,
    recover,
)
from kvmops.backup.files import create_targets, finish_files
from kvmops.backup.model import BackupType, Consistency, Manifest
from kvmops.backup.offline import run_offline_backup
from kvmops.backup.plan import (
    BackupRequest,
    Plan,
    migration_note,
    moved_since,
    plan_backup,
    select_disks,
)
from kvmops.backup.repository import Repository
from kvmops.backup.run import (
    BackupRun,
    Cleanup,
    NoteFn,
    NoteLog,
    ProgressFn,
    exclusive,
)
from kvmops.errors import (
    BackupError,
    HostUnavailableError,
    StateError,
    UnsupportedError,
)
from kvmops.host import backupjobs
from kvmops.host.backupjobs import DomainHandle, JobInfo, JobState
from kvmops.host.connection import Host, call, version_text
from kvmops.host.remote import is_remote
from kvmops.vm.checkpoints import (
    checkpoint_name,
    delete_checkpoint,
    foreign_checkpoints,
    qmp_command,
)
from kvmops.vm.domxml import DomainSpec
from kvmops.vm.lifecycle import ensure_qemu_can_reach, state_name

__all__ = ["BackupRequest", "cancel", "run_backup", "set_paused"]


# ---------------------------------------------------------------- XML
def backup_xml(plan: Plan, partial: Path) -> str:
    """libvirt's push-mode backup definition: one qcow2 target per disk in ``partial``."""
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


# ---------------------------------------------------------------- the job
FIRST_POLL = 0.005


def next_poll(interval: float, poll: float, info: JobInfo, elapsed: float) -> float:
    """Seconds to wait before looking at the job again.

    The wait grows geometrically up to ``poll`` but stays under 5 % of the job's age (at
    least 50 ms) and under half the time the job still needs at the rate it has copied so
    far: the end of a job of a second is seen within tens of milliseconds, not up to
    ``poll`` late (0.26 s of a 1.2 s full backup was that), and a long job is still looked
    at only every ``poll``.
    """
    if info.elapsed_ms:
        elapsed = info.elapsed_ms / 1000
    grown = min(poll, interval * 1.5, max(0.05, elapsed * 0.05))
    if info.total and 0 < info.processed < info.total and elapsed > 0:
        remaining = (info.total - info.processed) * elapsed / info.processed
        return max(FIRST_POLL, min(grown, remaining / 2))
    return grown


def wait_for_job(domain: DomainHandle, progress: ProgressFn | None, poll: float = 0.3) -> None:
    """Follow the running backup job to its end; raise when it did not complete.

    The first polls come quickly and the interval grows to ``poll``: a small incremental's
    job ends within milliseconds, and a fixed 0.3 s wait was most of its time.
    """
    name = domain.name()
    interval = FIRST_POLL
    started = time.monotonic()
    copied = False
    time.sleep(interval)  # a job that just began is running: no need to ask yet
    while True:
        info = backupjobs.job_info(domain)
        if info.state is JobState.NONE:
            break
        if progress:
            progress(info.processed, info.total)
        if not copied and info.total and info.processed >= info.total:
            copied, interval = True, FIRST_POLL  # only the job's end is left: look soon
        interval = next_poll(interval, poll, info, time.monotonic() - started)
        time.sleep(interval)
    final = backupjobs.job_info(domain, completed=True)
    if final.state is JobState.COMPLETED:
        if progress and final.total:
            progress(final.total, final.total)
        return
    grace = 0.0 if final.state is JobState.CANCELLED else 5.0
    if _stopped_meanwhile(domain, name, grace):
        raise BackupError(f"VM '{name}' stopped while the backup ran; the backup is discarded",
                          hint="start the VM and run the backup again (or back it up shut off)")
    if final.state is JobState.CANCELLED:
        raise BackupError(f"backup of VM '{name}' was cancelled")
    detail = final.error or "see the VM's log in /var/log/libvirt/qemu"
    raise BackupError(f"backup job of VM '{name}' failed: {detail}")


def _stopped_meanwhile(domain: DomainHandle, name: str, grace: float) -> bool:
    """Whether the VM is gone; a job failed by QEMU's death can be seen before libvirt has
    processed the end of the process, so a failed job waits a moment for it."""
    deadline = time.monotonic() + grace
    while call(f"reading the state of VM '{name}'", domain.isActive):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)
    return True


def limit_speed(domain: DomainHandle, speed: int) -> None:
    """Throttle the backup's block jobs (libvirt's backup API has no bandwidth knob).

    ``block-job-set-speed`` only changes the rate of the job libvirt started; it does not
    touch the job's state, which libvirt keeps tracking.
    """
    for job in qmp_command(domain, "query-block-jobs") or []:
        if job.get("type") == "backup":
            qmp_command(domain, "block-job-set-speed", {"device": job["device"], "speed": speed})


@contextlib.contextmanager
def frozen(domain: DomainHandle, wanted: bool, note: NoteFn) -> Iterator[bool]:
    """Freeze the guest's file systems for the instant of the checkpoint; always thaw."""
    name = domain.name()
    if not wanted:
        note("freezing was turned off: the backup is crash-consistent")
        yield False
        return
    if "org.qemu.guest_agent.0" not in call("reading XML", domain.XMLDesc, 0):
        note(f"VM '{name}' has no guest agent channel, so nothing was frozen: the backup is "
             "crash-consistent")
        yield False
        return
    result = backupjobs.freeze_filesystems(domain)
    if result.error is not None:
        note(f"could not freeze the guest's file systems ({result.error}): "
             "the backup is crash-consistent")
        yield False
        return
    if result.frozen == 0:  # nothing was frozen: the backup is not application-consistent
        note("the guest agent froze no file system (none it can freeze is mounted): the "
             "backup is crash-consistent")
    try:
        yield result.frozen > 0
    finally:
        for attempt in range(5):
            problem = backupjobs.thaw_filesystems(domain)
            if problem is None:
                break
            if attempt == 4:
                note(f"THAW FAILED for VM '{name}': {problem}; "
                     f"run 'virsh domfsthaw {name}' now")
            time.sleep(0.5)


# ---------------------------------------------------------------- the backup
def run_backup(host: Host, req: BackupRequest, *, progress: ProgressFn | None = None,
               note: NoteFn | None = None) -> Manifest:
    """Back up a running or shut-off VM into the repository; return the published manifest."""
    say = NoteLog(note)
    repo = req.repository or Repository(req.repo)
    domain = host.domain(req.vm)
    with exclusive(repo, req.vm):
        if state_name(domain) not in ("running", "idle", "paused"):
            if is_remote(host.uri):
                # qemu-img here would read whatever file has that path on this machine:
                # the VM's image only on shared storage, and nothing can tell that apart
                # from another VM's image at the same path.
                raise UnsupportedError(
                    f"VM '{req.vm}' on {host.uri} is shut off: an offline backup reads its "
                    "images with qemu-img on this machine, which cannot tell that host's "
                    "files from its own at the same path",
                    hint="start the VM (its host's QEMU then writes the backup), or run "
                         "kvmops on that host")
            return run_offline_backup(host, domain, repo, req, say, progress)
        return _run_online(host, domain, repo, req, progress, say)


def _run_online(host: Host, domain: DomainHandle, repo: Repository, req: BackupRequest,
                progress: ProgressFn | None, say: NoteLog) -> Manifest:
    vm = req.vm
    if backupjobs.active_backup_job(domain):
        stale = fleecing.orphaned_run_dirs(domain, repo, vm)  # a killed fleecing run's
        if not stale and not _orphaned_job_of(domain, repo, vm):
            raise StateError(f"a backup job is already running on VM '{vm}'",
                             hint=f"wait for it, or cancel it with 'kvmops backup cancel {vm}'")
        say("aborted the backup job of an interrupted kvmops run still writing into this "
            "repository")
        backupjobs.abort_backup(domain, vm)
        fleecing.remove_run_dirs(stale)
    manifests = recover(domain, repo, vm, say)
    ensure_qemu_can_reach(repo.root)
    foreign = foreign_checkpoints(domain)
    if foreign:
        say(f"VM '{vm}' has checkpoints kvmops did not create, left alone: {', '.join(foreign)}")

    xml = call("reading XML", domain.XMLDesc, 0)
    spec = DomainSpec.from_xml(xml)
    disks = select_disks(spec, req.disks, req.exclude)
    trust = bitmap_trust(domain)

    def trusted(checkpoint: str, target: str) -> str | None:
        problem = ensure_checkpoint_metadata(domain, repo, vm, checkpoint, say)
        return problem or trust(checkpoint, target)

    untrusted: list[str] = []

    def trusted_here(checkpoint: str, target: str) -> str | None:
        problem = trusted(checkpoint, target)
        if problem:
            untrusted.append(target)
        return problem

    here, here_uuid = host_identity(host)
    sizes = backupjobs.disk_sizes(domain, [d.target for d in disks])
    plan = plan_backup(vm, disks, manifests, req.mode, trusted_here, sizes)
    for message in plan.notes:
        say(message)
    last = moved_since(manifests, here_uuid, here)
    moved = migration_note(vm, last, here, plan, bool(untrusted)) if last else None
    if moved:
        say(moved)

    fleece = fleecing.choose(
        fleecing.check_mode(req.fleecing), repo, vm, req.scratch_dir,
        fleecing.scratch_need(domain, [d.disk.target for d in plan.disks]), say)
    run = BackupRun(repo, vm, progress=progress)
    cp_name = checkpoint_name(run.backup_id, repo.identity())
    created: list[str] = []  # the new checkpoint, once libvirt made it

    def clean_up() -> Cleanup:
        left = _clean_up_run(domain, vm, cp_name if created else None, say)
        return Cleanup(run.removed(f" and checkpoint {cp_name} deleted" if created else ""),
                       left)

    bound = ramwork.work_bound([sizes.get(d.disk.target, 0) for d in plan.disks]) \
        if all(d.disk.target in sizes for d in plan.disks) else None
    with run.running(plan.type, clean_up, work_bytes=bound,
                     fleecing=fleece is not None) as partial:
        checkpoint = checkpoint_xml(cp_name, plan, spec.disks, f"kvmops backup {run.backup_id}")
        watch = fleecing.LatencyWatch(domain, [d.disk.target for d in plan.disks])
        reuse = False
        if fleece is not None:  # pull mode: old blocks to a local scratch, kvmops copies
            was_frozen = fleecing.copy_point(
                domain, vm, repo, plan, partial, checkpoint, fleece, run.backup_id,
                lambda: frozen(domain, req.freeze, say), lambda: created.append(cp_name),
                run.report, say, req.speed)
        else:
            reuse = create_targets(plan, partial, sizes)  # big clusters, parent links
            with frozen(domain, req.freeze, say) as was_frozen:
                backupjobs.begin_backup(domain, vm, backup_xml(plan, partial), checkpoint,
                                        base_checkpoint=plan.base_checkpoint,
                                        target_dir=partial, reuse_targets=reuse)
                created.append(cp_name)
            if req.speed:
                limit_speed(domain, req.speed)
            wait_for_job(domain, run.report)
        watch.finish(repo, vm, run.backup_id, fleece is not None, say)

        records = finish_files(repo, vm, partial, plan, compress=req.compress,
                               created=sizes if fleece is None and reuse else None)
        repo.save_checkpoint_xml(vm, cp_name, backupjobs.checkpoint_xml(domain, cp_name))
        manifest = run.publish(run.manifest(
            type=plan.type, parent=plan.parent.id if plan.parent else None,
            checkpoint=cp_name,
            consistency=Consistency.APPLICATION if was_frozen else Consistency.CRASH,
            transport="libvirt", disks=records, notes=say.messages, domain_xml=xml,
            qemu_version=version_text(host.qemu_version()),
            libvirt_version=version_text(host.libvirt_version()),
            host=here, host_uuid=here_uuid,
        ), history=manifests)
    prune_checkpoints(domain, repo, vm, say, [*manifests, manifest])
    return manifest


def _clean_up_run(domain: DomainHandle, vm: str, checkpoint: str | None, say: NoteFn) -> list[str]:
    """End the job and delete the new checkpoint of a run that failed; returns what could
    not be cleaned up because libvirtd is unreachable (the next run's recover does it)."""
    left: list[str] = []
    try:
        backupjobs.abort_backup(domain, vm)
    except HostUnavailableError:
        left.append("libvirt's backup job")
    if checkpoint is not None:
        try:
            delete_checkpoint(domain, checkpoint, say)
        except HostUnavailableError:
            left.append(f"checkpoint {checkpoint}")
    return left


def _orphaned_job_of(domain: DomainHandle, repo: Repository, vm: str) -> bool:
    """Is the running backup job one a killed kvmops started into this repository?

    We hold the repository lock, so no live kvmops is writing into it: a job whose
    targets lie in this repository's partial directories has lost its owner.
    """
    partial_root = str(repo.backups_dir(vm) / ".partial-")
    targets = backupjobs.backup_job_targets(domain)
    return bool(targets) and all(t.startswith(partial_root) for t in targets)


# ---------------------------------------------------------------- pause, cancel
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
    if backupjobs.active_backup_job(domain):
        backupjobs.abort_job(domain, vm)
        return f"aborted the backup job of VM '{vm}'"
    raise StateError(f"no backup of VM '{vm}' is running")
