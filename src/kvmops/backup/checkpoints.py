"""The checkpoints of libvirt VMs' backups, per repository: their XML, whether a parent's
can be trusted, and the clean-up before and after a run (another repository's checkpoints
are never touched; naming and deleting are in :mod:`kvmops.vm.checkpoints`).
"""

from __future__ import annotations

import time

from lxml import etree

from kvmops.backup.model import Manifest
from kvmops.backup.plan import Plan, TrustFn, checkpoints_to_keep
from kvmops.backup.repository import Repository
from kvmops.backup.run import NoteFn
from kvmops.errors import KvmopsError
from kvmops.host import backupjobs
from kvmops.host.backupjobs import DomainHandle
from kvmops.host.connection import Host
from kvmops.vm.checkpoints import delete_checkpoint, is_kvmops, node_bitmaps, owned_by
from kvmops.vm.domxml import DiskSpec, DomainSpec


def checkpoint_xml(name: str, plan: Plan, all_disks: list[DiskSpec], description: str) -> str:
    """The new checkpoint of an online backup (libvirt creates it with the backup)."""
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


def offline_checkpoint_xml(name: str, backup_id: str, spec: DomainSpec, with_bitmap: set[str],
                           parent: str | None, domain_xml: str) -> str:
    """The checkpoint an offline backup redefines over the bitmaps it added with qemu-img."""
    root = etree.Element("domaincheckpoint")
    etree.SubElement(root, "name").text = name
    etree.SubElement(root, "description").text = f"kvmops offline backup {backup_id}"
    if parent:
        etree.SubElement(etree.SubElement(root, "parent"), "name").text = parent
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


def host_identity(host: Host) -> tuple[str, str]:
    """The libvirt host's name and its capabilities' host UUID (what tells a migrated VM:
    two daemons migrate between each other only with different UUIDs)."""
    uuid = host.host_uuid()
    try:
        name = host.hostname()
    except KvmopsError:
        name = ""
    return name or uuid, uuid


def bitmap_trust(domain: DomainHandle) -> TrustFn:
    """Checks a checkpoint's bitmap on one disk of a running VM."""
    bitmaps = node_bitmaps(domain)

    def check(checkpoint: str, target: str) -> str | None:
        found = [b for b in bitmaps.get(target, []) if b.get("name") == checkpoint]
        if not found:
            return f"bitmap {checkpoint} not found on the disk"
        if found[0].get("inconsistent"):
            return f"bitmap {checkpoint} is inconsistent (QEMU was killed or crashed)"
        # Only the newest bitmap records; older ones are merged from their children.
        return None

    return check


def ensure_checkpoint_metadata(domain: DomainHandle, repo: Repository, vm: str,
                               name: str, note: NoteFn) -> str | None:
    """Make sure libvirt knows checkpoint ``name``; redefine it from the repository if not.

    Returns None when usable, else why not.
    """
    if backupjobs.checkpoint_defined(domain, name):
        return None
    xml = repo.checkpoint_xml(vm, name)
    if xml is None:
        return f"libvirt has no checkpoint {name} and the repository has no copy of its XML"
    try:
        backupjobs.redefine_checkpoint(domain, name, xml, validate=True)
    except KvmopsError as err:
        return err.message
    note(f"libvirt had lost checkpoint {name}: redefined it from the repository")
    return None


def kvmops_checkpoint_names(domain: DomainHandle) -> list[str]:
    """The VM's kvmops checkpoints, of any repository, oldest first."""
    return [n for n in backupjobs.checkpoint_names(domain) if is_kvmops(n)]


def recover(domain: DomainHandle, repo: Repository, vm: str, say: NoteFn) -> list[Manifest]:
    """Clean up after a killed run: partial directories and this repository's orphan
    checkpoints (another repository's checkpoints are never touched). Returns the VM's
    authenticated backups, read once for the run (it holds the VM's lock)."""
    manifests = repo.manifests(vm)
    complete = {m.checkpoint for m in manifests if m.complete and m.checkpoint}
    referenced = {m.checkpoint for m in manifests if m.checkpoint}
    for partial in repo.partials(vm):
        repo.discard_partial(partial)
        say(f"removed unfinished backup {partial.name} left by an interrupted run")
    names = kvmops_checkpoint_names(domain)
    for name in reversed(owned_by(names, repo.identity(), referenced)):
        if name not in complete and repo.checkpoint_xml(vm, name) is None:
            delete_checkpoint(domain, name, say)
            say(f"deleted checkpoint {name} of an unfinished backup (its changes are kept "
                "in the previous checkpoint)")
    return manifests


def prune_checkpoints(domain: DomainHandle, repo: Repository, vm: str, say: NoteFn,
                      known: list[Manifest] | None = None) -> None:
    """Keep only the checkpoints this repository's future backups need: the newest, and
    the newest full's. Other repositories' checkpoints are theirs to keep. ``known``:
    the VM's backups when the caller has them (read under the lock it still holds)."""
    manifests = [m for m in (repo.manifests(vm) if known is None else known) if m.complete]
    if not manifests:
        return
    keep = checkpoints_to_keep(manifests)
    referenced = {m.checkpoint for m in manifests if m.checkpoint}
    names = kvmops_checkpoint_names(domain)
    for name in owned_by(names, repo.identity(), referenced):
        if name not in keep:
            try:
                delete_checkpoint(domain, name, say)
            except KvmopsError as err:
                say(f"could not delete old checkpoint {name}: {err}")
                continue
            repo.remove_checkpoint_xml(vm, name)

