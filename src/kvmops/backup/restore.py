"""Restore a backup point, and verify a repository link by link."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from pathlib import Path

from lxml import etree
from pydantic import BaseModel, Field

from kvmops.backup.model import Manifest, disk_chain, resolve_point
from kvmops.backup.repository import Repository, digest_matches
from kvmops.errors import (
    AlreadyExistsError,
    BackupInconsistentError,
    KvmopsError,
    NotFoundError,
    StateError,
    TamperedError,
    ValidationError,
)
from kvmops.host.accel import probe
from kvmops.host.connection import Host
from kvmops.images import qemuimg
from kvmops.images.chain import read_expected
from kvmops.paths import policy
from kvmops.vm.domxml import DiskSpec, OwnedFile, validate_name
from kvmops.vm.lifecycle import ensure_qemu_can_reach, state_name
from kvmops.vm.rebuild import rebuild

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
    dropped: list[str] = Field(default_factory=list,
                               description="parts of the stored definition not restored")


def opened(repo: Path | Repository) -> Repository:
    """A repository directory as a plain :class:`Repository`; an opened one (plain or
    store-backed: :func:`kvmops.backup.storerepo.open_repository`) as it is."""
    return repo if isinstance(repo, Repository) else Repository(repo)


def list_backups(repo_path: Path | Repository, vm: str) -> list[Manifest]:
    return opened(repo_path).manifests(vm)


def _point(repo: Repository, vm: str, at: str | None) -> tuple[Manifest, dict[str, Manifest]]:
    manifests, rejected = repo.scan(vm)
    if not manifests:
        if rejected:
            raise TamperedError(f"no authentic backup of VM '{vm}' in {repo.location}: "
                                f"{rejected[0].reason}")
        raise NotFoundError(f"no backups of VM '{vm}' in {repo.location}",
                            hint=f"take one with 'kvmops backup create {vm} --repo "
                                 f"{repo.location}'")
    if at is not None and any(r.backup_id == at for r in rejected):
        reason = next(r.reason for r in rejected if r.backup_id == at)
        raise TamperedError(f"backup {at} of VM '{vm}' is not used: {reason}")
    point = resolve_point(manifests, at)
    return point, {m.id: m for m in manifests}


def resolve(repo_path: Path | Repository, vm: str, at: str | None) -> Manifest:
    """The authenticated backup ``at`` names (id, id prefix, ISO time; None: newest)."""
    return _point(opened(repo_path), vm, at)[0]


def checked_chain(repo: Repository, vm: str, point: Manifest, by_id: dict[str, Manifest],
                  target: str) -> tuple[Path, list[Manifest]]:
    """The top file of ``target`` at ``point``, after checking that its backing chain is
    exactly the one the authenticated manifests describe, all inside the repository."""
    chain = disk_chain(by_id, point.id, target)
    top = repo.backups_dir(vm) / point.id / point.disk(target).file
    root = Path(os.path.realpath(repo.root))
    expected = [Path(os.path.realpath(repo.backups_dir(vm) / m.id / m.disk(target).file))
                for m in reversed(chain)]
    # the headers of the files the manifests name: each must name the next as its
    # backing file (qcow2), the last none
    links = read_expected(expected, within=[root])
    named = [link.backing for link in links]
    if (named != [*expected[1:], None]
            or any(link.backing_format != "qcow2" for link in links[:-1])):
        found, by_path = [expected[0]], {link.path: link.backing for link in links}
        while (after := by_path.get(found[-1])) is not None and after not in found:
            found.append(after)
        raise BackupInconsistentError(
            f"the chain of disk {target} at backup {point.id} of VM '{vm}' is not the one "
            f"its manifests describe ({' <- '.join(p.name for p in found)})",
            hint="run 'kvmops backup verify'; restore an earlier point")
    return top, chain


def _flatten(repo: Repository, vm: str, point: Manifest, by_id: dict[str, Manifest],
             target: str, dst: Path, progress: ProgressFn | None,
             overwrite: bool = False) -> RestoredDisk:
    top, chain = checked_chain(repo, vm, point, by_id, target)
    qemuimg.convert(top, "qcow2", dst, "qcow2", overwrite=overwrite,
                    progress=(lambda pct: progress(target, pct)) if progress else None)
    return RestoredDisk(target=target, path=str(dst), chain=[m.id for m in chain])


def restore_to_dir(repo_path: Path | Repository, vm: str, at: str | None, to: Path,
                   progress: ProgressFn | None = None) -> RestoreResult:
    """One flattened qcow2 per disk, named after its target: ``TO/vda.qcow2``."""
    repo = opened(repo_path)
    point, by_id = _point(repo, vm, at)
    to.mkdir(parents=True, exist_ok=True)
    for disk in point.disks:
        if (to / f"{disk.target}.qcow2").exists():
            raise AlreadyExistsError(f"{to / f'{disk.target}.qcow2'} already exists",
                                     hint="restore into an empty directory")
    with repo.local_chains(vm, point, by_id, [d.target for d in point.disks]) as local:
        disks = [_flatten(local, vm, point, by_id, d.target, to / f"{d.target}.qcow2",
                          progress) for d in point.disks]
    return RestoreResult(vm=vm, backup_id=point.id, disks=disks)


MakeDisk = Callable[[Repository, str, Manifest, dict[str, Manifest], str, Path], RestoredDisk]


def restore_new_vm(host: Host, repo_path: Path | Repository, vm: str, at: str | None,
                   new_name: str,
                   images_dir: Path | None = None, progress: ProgressFn | None = None, *,
                   make_disk: MakeDisk | None = None,
                   finish_xml: Callable[[str], str] | None = None) -> RestoreResult:
    """Define a new VM from the backed-up VM with restored disks.

    The definition is rebuilt through the typed model (:mod:`kvmops.vm.rebuild`), never
    defined from the stored XML: what the model does not know, and files outside the
    allowed image directories, are dropped and listed in the result. ``make_disk``
    (default: flatten the chain) makes each disk file, ``finish_xml`` adjusts the built
    definition before it is defined (instant recovery: overlays on the chain).
    """
    validate_name(new_name)
    if host.has_domain(new_name):
        raise AlreadyExistsError(f"VM '{new_name}' already exists")
    repo = opened(repo_path)
    point, by_id = _point(repo, vm, at)
    if not point.domain_xml:
        raise ValidationError(f"backup {point.id} has no VM definition to restore from",
                              hint="restore with --to DIR and create the VM yourself")
    rules = policy()
    target_dir = rules.new_images_dir(images_dir, trusted=True)
    ensure_qemu_can_reach(target_dir)
    networks = set(host.network_names())

    def file_ok(path: str) -> str | None:
        try:
            real = rules.image_path(path, what="file")
        except KvmopsError as err:
            return err.message
        return None if real.is_file() else f"{path} does not exist"

    restored: list[RestoredDisk] = []
    try:
        disks: list[DiskSpec] = []
        old_disks = {d.target: d for d in point.disks}
        for record in point.disks:
            dst = target_dir / f"{new_name}-{record.target}.qcow2"
            if dst.exists():
                raise AlreadyExistsError(f"disk image {dst} already exists")
        from kvmops.vm.domxml import DomainSpec

        for disk in DomainSpec.from_xml(point.domain_xml).disks:
            if disk.device != "disk" or disk.target not in old_disks:
                continue
            dst = target_dir / f"{new_name}-{disk.target}.qcow2"
            if make_disk is None:
                with repo.local_chains(vm, point, by_id, [disk.target]) as local:
                    restored.append(_flatten(local, vm, point, by_id, disk.target, dst,
                                             progress))
            else:
                restored.append(make_disk(repo, vm, point, by_id, disk.target, dst))
            bus = disk.bus if disk.bus in ("virtio", "scsi", "sata", "ide") else "virtio"
            disks.append(DiskSpec(target=disk.target, source=str(dst), fmt="qcow2", bus=bus))
        built = rebuild(point.domain_xml, new_name, domain_type=probe().accelerator.domain_type,
                        disks=disks, file_ok=file_ok, network_ok=networks.__contains__,
                        bridge_ok=lambda name: Path("/sys/class/net", name, "bridge").is_dir())
        built.spec.owned_files = [OwnedFile(item.path, "qcow2") for item in restored]
        xml = built.spec.to_xml()
        host.define(finish_xml(xml) if finish_xml is not None else xml)
    except BaseException:
        for item in restored:
            with contextlib.suppress(OSError):
                os.unlink(item.path)
        raise
    notes = [f"not restored: {item}" for item in built.dropped]
    return RestoreResult(vm=vm, backup_id=point.id, disks=restored, new_vm=new_name,
                         notes=notes, dropped=built.dropped)


def restore_in_place(host: Host, repo_path: Path | Repository, vm: str, at: str | None,
                     progress: ProgressFn | None = None) -> RestoreResult:
    """Replace the disks of a shut-off VM with the backup's content."""
    domain = host.domain(vm)
    state = state_name(domain)
    if state != "shut off":
        raise StateError(f"cannot restore in place VM '{vm}': it is {state}",
                         actual=state, required="shut off",
                         hint=f"shut it down first ('kvmops vm shutdown {vm}'), or restore "
                              "with --to")
    repo = opened(repo_path)
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
    with repo.lock(vm, "restore"), \
            repo.local_chains(vm, point, by_id, [d.target for d in point.disks]) as local:
        for record in point.disks:
            dst = sources[record.target]
            disks.append(_flatten(local, vm, point, by_id, record.target, dst, progress,
                                  overwrite=True))
            if dst.suffix != ".qcow2":
                _set_disk_format(host, vm, record.target)
    notes = []
    from kvmops.backup.checkpoints import kvmops_checkpoint_names
    from kvmops.host.backupjobs import forget_checkpoint

    for name in kvmops_checkpoint_names(domain):  # every repository's: the disks changed
        forget_checkpoint(domain, name)  # the restored images carry no bitmaps
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


def verify(repo_path: Path | Repository, vm: str | None = None, at: str | None = None,
           checksums: bool = True) -> VerifyReport:
    """Check every file of every chain: manifest, checksum, qemu-img check, backing link.

    A store-backed repository's files are authenticated frame by frame as they are
    opened (the seal's AEAD or digest) and then checked like local ones."""
    from kvmops.backup.storerepo import StoreRepository

    repo = opened(repo_path)
    if not repo.exists():
        raise NotFoundError(f"backup repository {repo.location} not found")
    stored = repo if isinstance(repo, StoreRepository) else None
    vms = [vm] if vm else repo.vms()
    problems: list[VerifyProblem] = []
    backups = files = 0
    for name in vms:
        try:
            manifests, rejected = repo.scan(name)
        except KvmopsError as err:
            problems.append(VerifyProblem(vm=name, backup_id="?", disk=None, problem=str(err)))
            continue
        for item in rejected:
            backups += 1
            problems.append(VerifyProblem(vm=name, backup_id=item.backup_id, disk=None,
                                          problem=f"tampered: {item.reason}"))
        if vm and not manifests and not rejected:
            raise NotFoundError(f"no backups of VM '{name}' in {repo.location}")
        if stored is not None:
            problems += [VerifyProblem(vm=name, backup_id="-", disk=None,
                                       problem=f"tampered: {problem}")
                         for problem in stored.check_checkpoints(name)]
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
                problem = (_check_file(repo, name, manifest, disk.target, by_id, checksums)
                           if stored is None else
                           stored.check_stored(name, manifest, disk.target, by_id,
                                               checksums, _check_file))
                if problem:
                    problems.append(VerifyProblem(vm=name, backup_id=manifest.id,
                                                  disk=disk.target, problem=problem))
    return VerifyReport(repo=repo.location, checked_backups=backups, checked_files=files,
                        problems=problems)


def _check_file(repo: Repository, vm: str, manifest: Manifest, target: str,
                by_id: dict[str, Manifest], checksums: bool) -> str | None:
    record = manifest.disk(target)
    path = repo.backups_dir(vm) / manifest.id / record.file
    if not path.is_file():
        return f"file {path} is missing"
    if checksums and not digest_matches(path, record.sha256):
        return f"checksum of {path} does not match the manifest (file changed or corrupt)"
    try:
        # The header is read first, and check opens this file alone: a forged backing or
        # data file pointing out of the repository is a finding, never opened.
        info = qemuimg.info(path, "qcow2", force_share=False)
        result = qemuimg.check(path, "qcow2")
    except KvmopsError as err:
        return f"qemu-img check of {path} failed: {err}"
    if result.status == "corrupt":
        return f"qemu-img check reports {path} corrupt"
    if info.data_file:
        return f"{path} names a data file {info.data_file} (a backup never has one)"
    if record.parent is None:
        if info.backing_filename:
            return f"{path} is a full backup but has a backing file {info.backing_filename}"
        return None
    expected = f"../{record.parent}/{target}.qcow2"
    if info.backing_filename != expected or info.backing_format != "qcow2":
        return (f"{path} should be backed by {expected} (qcow2) but is backed by "
                f"{info.backing_filename or 'nothing'} ({info.backing_format or 'no format'})")
    if record.parent not in by_id:
        return f"parent backup {record.parent} of {path} is missing (chain broken)"
    if not repo.has_file(vm, record.parent, f"{target}.qcow2"):
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
