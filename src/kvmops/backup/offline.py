"""Backups of shut-off VMs: read the images directly with qemu-img.

The copy is a full one (``qemu-img convert`` of the whole chain). So that the
chain continues once the VM runs again, a persistent bitmap named after the
new checkpoint is added to each qcow2 image (``qemu-img bitmap --add``) and
libvirt's checkpoint metadata is redefined to match; the next online backup
is then an incremental against this one.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

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
from kvmops.host.connection import Host, call, version_text
from kvmops.images import qemuimg
from kvmops.images.chain import inspect
from kvmops.vm.checkpoints import checkpoint_name
from kvmops.vm.domxml import DomainSpec

NoteFn = Callable[[str], None]


def run_offline_backup(host: Host, repo: Repository, req: object, say: NoteFn,
                       progress: Callable[[int, int], None] | None = None) -> Manifest:
    from kvmops.backup.engine import BackupRequest, recover, select_disks
    from kvmops.vm.checkpoints import delete_checkpoint, kvmops_checkpoints

    assert isinstance(req, BackupRequest)
    vm = req.vm
    domain = host.domain(vm)
    recover(domain, repo, vm, say)
    xml = call("reading XML", domain.XMLDesc, libvirt.VIR_DOMAIN_XML_INACTIVE)
    spec = DomainSpec.from_xml(xml)
    disks = select_disks(spec, req.disks, req.exclude)
    if req.mode not in (None, BackupType.FULL):
        say(f"VM '{vm}' is shut off: its images are copied in full; incrementals continue "
            "from this backup once it runs again")
    backup_id = new_backup_id()
    cp_name = checkpoint_name(backup_id, repo.identity())
    partial = repo.start_partial(vm, backup_id)
    started = time.monotonic()
    added_bitmaps: list[str] = []
    jobs.record_event(vm, "started", backup_id=backup_id, type="full", offline=True)
    try:
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
                if progress:
                    progress(base + int(size * pct / 100), total)

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
            cp_xml = _checkpoint_xml(cp_name, backup_id, spec, {d.target for d in bitmap_disks},
                                     kvmops_checkpoints(domain), xml)
            domain.checkpointCreateXML(cp_xml, libvirt.VIR_DOMAIN_CHECKPOINT_CREATE_REDEFINE)
            repo.save_checkpoint_xml(vm, cp_name, cp_xml)
            checkpoint = cp_name
        manifest = Manifest(
            id=backup_id, vm=vm, time=datetime.now(UTC), type=BackupType.FULL, parent=None,
            checkpoint=checkpoint, consistency=Consistency.OFFLINE, transport="offline",
            disks=records, notes=[], domain_xml=xml, tool_version=kvmops.__version__,
            qemu_version=version_text(host.qemu_version()),
            libvirt_version=version_text(host.libvirt_version()),
            duration_s=round(time.monotonic() - started, 3),
        )
        repo.publish(vm, partial, manifest)
    except BaseException as err:
        with contextlib.suppress(Exception):
            delete_checkpoint(domain, cp_name)
        for image in added_bitmaps:
            with contextlib.suppress(Exception):
                qemuimg.run_qemu_img(["bitmap", "--remove", "-f", "qcow2", image, cp_name],
                                     what="removing bitmap", path=Path(image))
        repo.discard_partial(partial)
        jobs.record_event(vm, "failed", backup_id=backup_id, error=str(err))
        raise
    jobs.record_event(vm, "completed", backup_id=backup_id, type="full")
    return manifest


def _checkpoint_xml(name: str, backup_id: str, spec: DomainSpec, with_bitmap: set[str],
                    existing: list[libvirt.virDomainCheckpoint], domain_xml: str) -> str:
    root = etree.Element("domaincheckpoint")
    etree.SubElement(root, "name").text = name
    etree.SubElement(root, "description").text = f"kvmops offline backup {backup_id}"
    if existing:
        parent = etree.SubElement(root, "parent")
        etree.SubElement(parent, "name").text = existing[-1].getName()
    etree.SubElement(root, "creationTime").text = str(int(time.time()))
    disks = etree.SubElement(root, "disks")
    for disk in spec.disks:
        if disk.device != "disk":
            continue
        if disk.target in with_bitmap:
            etree.SubElement(disks, "disk", name=disk.target, checkpoint="bitmap", bitmap=name)
        else:
            etree.SubElement(disks, "disk", name=disk.target, checkpoint="no")
    root.append(etree.fromstring(domain_xml.encode()))
    return etree.tostring(root, encoding="unicode")
