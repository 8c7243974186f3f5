"""Restore a backup point, and verify a repository link by link."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from pathlib import Path

from lxml import etree
from pydantic import BaseModel

from kvmops.backup.model import Manifest, disk_chain, resolve_point
from kvmops.backup.repository import Repository, sha256_file
from kvmops.config import settings
from kvmops.errors import (
    AlreadyExistsError,
    BackupInconsistentError,
    KvmopsError,
    NotFoundError,
    ValidationError,
)
from kvmops.host.connection import Host
from kvmops.images import qemuimg
from kvmops.vm.domxml import set_name_and_uuid, validate_name
from kvmops.vm.lifecycle import _require_state, ensure_qemu_can_reach

ProgressFn = Callable[[str, float], None]


class RestoredDisk(BaseModel):
    target: str
    path: str
    chain: list[str]  # backup ids, full first


class RestoreResult(BaseModel):
    vm: str
    backup_id: str
    disks: list[RestoredDisk]
    new_vm: str | None = None
    notes: list[str] = []


def list_backups(repo_path: Path, vm: str) -> list[Manifest]:
    return Repository(repo_path).manifests(vm)


def _point(repo: Repository, vm: str, at: str | None) -> tuple[Manifest, dict[str, Manifest]]:
    manifests = repo.manifests(vm)
    if not manifests:
        raise NotFoundError(f"no backups of VM '{vm}' in {repo.root}",
                            hint=f"take one with 'kvmops backup create {vm} --repo {repo.root}'")
    point = resolve_point(manifests, at)
    return point, {m.id: m for m in manifests}


def _flatten(repo: Repository, vm: str, point: Manifest, by_id: dict[str, Manifest],
             target: str, dst: Path, progress: ProgressFn | None,
             overwrite: bool = False) -> RestoredDisk:
    chain = disk_chain(by_id, point.id, target)
    top = repo.backups_dir(vm) / point.id / point.disk(target).file
    qemuimg.convert(top, dst, "qcow2", overwrite=overwrite,
                    progress=(lambda pct: progress(target, pct)) if progress else None)
    return RestoredDisk(target=target, path=str(dst), chain=[m.id for m in chain])


def restore_to_dir(repo_path: Path, vm: str, at: str | None, to: Path,
                   progress: ProgressFn | None = None) -> RestoreResult:
    """One flattened qcow2 per disk, named after its target: ``TO/vda.qcow2``."""
    repo = Repository(repo_path)
    point, by_id = _point(repo, vm, at)
    to.mkdir(parents=True, exist_ok=True)
    for disk in point.disks:
        if (to / f"{disk.target}.qcow2").exists():
            raise AlreadyExistsError(f"{to / f'{disk.target}.qcow2'} already exists",
                                     hint="restore into an empty directory")
    disks = [_flatten(repo, vm, point, by_id, d.target, to / f"{d.target}.qcow2", progress)
             for d in point.disks]
    return RestoreResult(vm=vm, backup_id=point.id, disks=disks)


def restore_new_vm(host: Host, repo_path: Path, vm: str, at: str | None, new_name: str,
                   images_dir: Path | None = None, progress: ProgressFn | None = None
                   ) -> RestoreResult:
    """Define a new VM from the backup's XML with restored disks (new UUID and MACs)."""
    validate_name(new_name)
    if host.has_domain(new_name):
        raise AlreadyExistsError(f"VM '{new_name}' already exists")
    repo = Repository(repo_path)
    point, by_id = _point(repo, vm, at)
    if not point.domain_xml:
        raise ValidationError(f"backup {point.id} has no VM definition to restore from",
                              hint="restore with --to DIR and create the VM yourself")
    target_dir = (images_dir or settings().images_dir).absolute()
    target_dir.mkdir(parents=True, exist_ok=True)
    ensure_qemu_can_reach(target_dir)
    root = set_name_and_uuid(point.domain_xml, new_name)
    restored: list[RestoredDisk] = []
    try:
        backed_up = {d.target for d in point.disks}
        for disk in list(root.findall("devices/disk[@device='disk']")):
            target_el = disk.find("target")
            target = target_el.get("dev", "") if target_el is not None else ""
            if target not in backed_up:
                disk.getparent().remove(disk)  # type: ignore[union-attr]
                continue
            dst = target_dir / f"{new_name}-{target}.qcow2"
            if dst.exists():
                raise AlreadyExistsError(f"disk image {dst} already exists")
            restored.append(_flatten(repo, vm, point, by_id, target, dst, progress))
            _point_disk_at(disk, dst)
        host.define(etree.tostring(root, encoding="unicode"))
    except BaseException:
        for item in restored:
            with contextlib.suppress(OSError):
                os.unlink(item.path)
        raise
    return RestoreResult(vm=vm, backup_id=point.id, disks=restored, new_vm=new_name)


def _point_disk_at(disk: etree._Element, path: Path) -> None:
    source = disk.find("source")
    if source is None:
        source = etree.SubElement(disk, "source")
    for attr in list(source.attrib):
        del source.attrib[attr]
    source.set("file", str(path))
    for child in list(source):
        source.remove(child)
    disk.set("type", "file")
    driver = disk.find("driver")
    if driver is not None:
        driver.set("type", "qcow2")
    backing = disk.find("backingStore")
    if backing is not None:
        disk.remove(backing)


def restore_in_place(host: Host, repo_path: Path, vm: str, at: str | None,
                     progress: ProgressFn | None = None) -> RestoreResult:
    """Replace the disks of a shut-off VM with the backup's content."""
    domain = host.domain(vm)
    _require_state(domain, {"shut off"}, "restore in place",
                   hint=f"shut it down first ('kvmops vm shutdown {vm}'), or restore with --to")
    repo = Repository(repo_path)
    point, by_id = _point(repo, vm, at)
    root = etree.fromstring(domain.XMLDesc(0).encode())
    sources: dict[str, Path] = {}
    for disk in root.findall("devices/disk[@device='disk']"):
        target = disk.find("target")
        source = disk.find("source")
        if target is not None and source is not None and source.get("file"):
            sources[target.get("dev", "")] = Path(source.get("file", ""))
    missing = [d.target for d in point.disks if d.target not in sources]
    if missing:
        raise ValidationError(f"VM '{vm}' has no disk {', '.join(missing)} to restore into",
                              hint="restore with --to DIR or --new-vm instead")
    disks = []
    with repo.lock(vm, "restore"):
        for record in point.disks:
            dst = sources[record.target]
            disks.append(_flatten(repo, vm, point, by_id, record.target, dst, progress,
                                  overwrite=True))
            if dst.suffix != ".qcow2":
                _set_disk_format(host, vm, record.target)
    notes = []
    from kvmops.backup.engine import CHECKPOINT_PREFIX

    for checkpoint in domain.listAllCheckpoints(0):
        if checkpoint.getName().startswith(CHECKPOINT_PREFIX):
            checkpoint.delete(2)  # METADATA_ONLY: the restored images carry no bitmaps
    notes.append("the VM's disks were replaced: its next backup is a full")
    return RestoreResult(vm=vm, backup_id=point.id, disks=disks, notes=notes)


def _set_disk_format(host: Host, vm: str, target: str) -> None:
    domain = host.domain(vm)
    root = etree.fromstring(domain.XMLDesc(2).encode())
    for disk in root.findall("devices/disk"):
        target_el = disk.find("target")
        driver = disk.find("driver")
        if target_el is not None and target_el.get("dev") == target and driver is not None:
            driver.set("type", "qcow2")
    host.define(etree.tostring(root, encoding="unicode"))


# ---------------------------------------------------------------- verify
class VerifyProblem(BaseModel):
    vm: str
    backup_id: str
    disk: str | None
    problem: str


class VerifyReport(BaseModel):
    repo: str
    checked_backups: int
    checked_files: int
    problems: list[VerifyProblem]

    @property
    def sound(self) -> bool:
        return not self.problems


def verify(repo_path: Path, vm: str | None = None, at: str | None = None,
           checksums: bool = True) -> VerifyReport:
    """Check every file of every chain: manifest, checksum, qemu-img check, backing link."""
    repo = Repository(repo_path)
    if not repo.root.is_dir():
        raise NotFoundError(f"backup repository {repo.root} not found")
    vms = [vm] if vm else repo.vms()
    problems: list[VerifyProblem] = []
    backups = files = 0
    for name in vms:
        try:
            manifests = repo.manifests(name)
        except KvmopsError as err:
            problems.append(VerifyProblem(vm=name, backup_id="?", disk=None, problem=str(err)))
            continue
        if vm and not manifests:
            raise NotFoundError(f"no backups of VM '{name}' in {repo.root}")
        by_id = {m.id: m for m in manifests}
        selected = manifests
        if at is not None:
            point = resolve_point(manifests, at)
            needed = {m.id for d in point.disks for m in disk_chain(by_id, point.id, d.target)}
            selected = [m for m in manifests if m.id in needed]
        for manifest in selected:
            backups += 1
            for disk in manifest.disks:
                files += 1
                problem = _check_file(repo, name, manifest, disk.target, by_id, checksums)
                if problem:
                    problems.append(VerifyProblem(vm=name, backup_id=manifest.id,
                                                  disk=disk.target, problem=problem))
    return VerifyReport(repo=str(repo.root), checked_backups=backups, checked_files=files,
                        problems=problems)


def _check_file(repo: Repository, vm: str, manifest: Manifest, target: str,
                by_id: dict[str, Manifest], checksums: bool) -> str | None:
    record = manifest.disk(target)
    path = repo.backups_dir(vm) / manifest.id / record.file
    if not path.is_file():
        return f"file {path} is missing"
    if checksums and sha256_file(path) != record.sha256:
        return f"checksum of {path} does not match the manifest (file changed or corrupt)"
    try:
        result = qemuimg.check(path)
    except KvmopsError as err:
        return f"qemu-img check of {path} failed: {err}"
    if result.status == "corrupt":
        return f"qemu-img check reports {path} corrupt"
    info = qemuimg.info(path)
    if record.parent is None:
        if info.backing_filename:
            return f"{path} is a full backup but has a backing file {info.backing_filename}"
        return None
    expected = f"../{record.parent}/{target}.qcow2"
    if info.backing_filename != expected:
        return (f"{path} should be backed by {expected} but is backed by "
                f"{info.backing_filename or 'nothing'}")
    if record.parent not in by_id:
        return f"parent backup {record.parent} of {path} is missing (chain broken)"
    if not (path.parent / expected).is_file():
        return f"backing file {expected} of {path} is missing (chain broken)"
    return None


def require_sound(report: VerifyReport) -> None:
    if report.problems:
        first = report.problems[0]
        raise BackupInconsistentError(
            f"backup {first.backup_id} of VM '{first.vm}'"
            + (f" disk {first.disk}" if first.disk else "") + f": {first.problem}"
            + (f" (and {len(report.problems) - 1} more problems)"
               if len(report.problems) > 1 else ""),
            hint="later points of that chain cannot be restored; take a new full backup",
        )
