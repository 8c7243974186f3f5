"""Backups of shut-off VMs: read the images directly with qemu-img.

The copy is a full one (``qemu-img convert`` of the whole chain). So that the
chain continues once the VM runs again, a persistent bitmap named after the
new checkpoint is added to each qcow2 image (``qemu-img bitmap --add``) and
libvirt's checkpoint metadata is redefined to match; the next online backup
is then an incremental against this one. The run (signals, events, clean-up,
manifest) is :mod:`kvmops.backup.run`'s, as for the online engines.
"""

from __future__ import annotations

import contextlib
from datetime import UTC, datetime
from pathlib import Path

from kvmops.backup.checkpoints import (
    host_identity,
    kvmops_checkpoint_names,
    offline_checkpoint_xml,
    recover,
)
from kvmops.backup.model import BackupType, Consistency, DiskRecord, Manifest
from kvmops.backup.plan import BackupRequest, select_disks
from kvmops.backup.repository import Repository, sha256_file
from kvmops.backup.run import BackupRun, Cleanup, NoteFn, ProgressFn
from kvmops.errors import HostUnavailableError, KvmopsError
from kvmops.host import backupjobs
from kvmops.host.backupjobs import DomainHandle
from kvmops.host.connection import Host, version_text
from kvmops.images import qemuimg
from kvmops.images.chain import inspect
from kvmops.vm.checkpoints import checkpoint_name, delete_checkpoint
from kvmops.vm.domxml import DomainSpec


def run_offline_backup(host: Host, domain: DomainHandle, repo: Repository, req: BackupRequest,
                       say: NoteFn, progress: ProgressFn | None = None) -> Manifest:
    """Back up the shut-off VM ``domain``; the caller holds the VM's backup lock."""
    vm = req.vm
    here, here_uuid = host_identity(host)
    recover(domain, repo, vm, say)
    xml = backupjobs.inactive_xml(domain)
    spec = DomainSpec.from_xml(xml)
    disks = select_disks(spec, req.disks, req.exclude)
    if req.mode not in (None, BackupType.FULL):
        say(f"VM '{vm}' is shut off: its images are copied in full; incrementals continue "
            "from this backup once it runs again")
    run = BackupRun(repo, vm, progress=progress)
    cp_name = checkpoint_name(run.backup_id, repo.identity())
    added_bitmaps: list[str] = []

    def clean_up() -> Cleanup:
        left: list[str] = []
        if added_bitmaps:
            try:
                delete_checkpoint(domain, cp_name)
            except HostUnavailableError:
                left.append(f"checkpoint {cp_name}")
            except KvmopsError:
                pass
        for image in added_bitmaps:
            with contextlib.suppress(Exception):
                qemuimg.run_qemu_img(["bitmap", "--remove", "-f", "qcow2", image, cp_name],
                                     what="removing bitmap", path=Path(image))
        return Cleanup(run.removed(f" and bitmap {cp_name} removed from its images"
                                   if added_bitmaps else ""), left)

    with run.running(BackupType.FULL, clean_up, offline=True) as partial:
        records = []
        # The VM's definition names each disk's format; its chain is checked before
        # qemu-img follows it.
        chains = {d.target: inspect(d.source or "", d.fmt, trusted_top=True) for d in disks}
        total = sum(c.top.info.virtual_size for c in chains.values())
        done = 0
        for disk in disks:
            assert disk.source is not None
            dst = partial / f"{disk.target}.qcow2"
            size = chains[disk.target].top.info.virtual_size

            def report(pct: float, base: int = done, size: int = size) -> None:
                run.report(base + int(size * pct / 100), total)

            qemuimg.convert(disk.source, disk.fmt, dst, "qcow2", progress=report)
            done += size
            info = qemuimg.info(dst, "qcow2")
            records.append(DiskRecord(
                target=disk.target, file=dst.name, source=disk.source, type=BackupType.FULL,
                parent=None, virtual_size=info.virtual_size,
                bytes_written=info.actual_size or 0, sha256=sha256_file(dst)))
        bitmap_disks = [d for d in disks if d.fmt == "qcow2"]
        for disk in bitmap_disks:
            qemuimg.run_qemu_img(["bitmap", "--add", "-f", "qcow2", str(disk.source), cp_name],
                                 what=f"adding bitmap {cp_name}", path=Path(disk.source or ""))
            added_bitmaps.append(str(disk.source))
        checkpoint = None
        if bitmap_disks:
            existing = kvmops_checkpoint_names(domain)
            cp_xml = offline_checkpoint_xml(
                cp_name, run.backup_id, spec, {d.target for d in bitmap_disks},
                existing[-1] if existing else None, xml)
            backupjobs.redefine_checkpoint(domain, cp_name, cp_xml, validate=False)
            repo.save_checkpoint_xml(vm, cp_name, cp_xml)
            checkpoint = cp_name
        manifest = run.publish(run.manifest(
            time=datetime.now(UTC), type=BackupType.FULL, parent=None,
            checkpoint=checkpoint, consistency=Consistency.OFFLINE, transport="offline",
            disks=records, notes=[], domain_xml=xml,
            qemu_version=version_text(host.qemu_version()),
            libvirt_version=version_text(host.libvirt_version()),
            host=here, host_uuid=here_uuid,
        ))
    return manifest
