"""Planning a backup of libvirt's and QEMU's VMs alike: which disks, full, incremental or
differential per repository, each disk's parent, and which checkpoints to keep. Pure.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from kvmops.backup.model import BackupType, Manifest
from kvmops.errors import ValidationError
from kvmops.vm.domxml import DiskSpec, DomainSpec

if TYPE_CHECKING:
    from kvmops.backup.repository import Repository

# trusted(checkpoint, target): None when that disk's bitmap of the checkpoint can be
# trusted, else the reason it cannot.
TrustFn = Callable[[str, str], str | None]


@dataclass
class BackupRequest:
    """A backup of a libvirt VM (running: libvirt's backup API; shut off: qemu-img)."""

    vm: str
    repo: Path
    mode: BackupType | None = None  # None: incremental when a valid chain exists, else full
    disks: list[str] = field(default_factory=list)  # only these targets
    exclude: list[str] = field(default_factory=list)
    freeze: bool = True  # freeze file systems through the agent when it answers
    speed: int | None = None  # bytes per second for the copy, None for unlimited
    compress: bool = False  # store compressed qcow2 clusters
    # The repository opened by the caller (a store-backed one: kvmops.backup.storerepo's
    # prepare_repository); None: the plain repository at ``repo``.
    repository: Repository | None = None
    fleecing: str = "auto"  # auto, on, off: pull mode with a local scratch (backup/fleecing.py)
    scratch_dir: Path | None = None  # the fleecing images' directory (None: the default)


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
    trusted: TrustFn,
    sizes: Mapping[str, int] | None = None,
) -> Plan:
    """Decide the backup type and each disk's parent.

    ``manifests`` are one repository's: each repository's chain continues on its own.
    ``trusted(checkpoint, target)`` returns None when that disk's bitmap for the
    checkpoint can be trusted, else the reason it cannot. ``sizes`` are the disks'
    virtual sizes now: a disk resized since the parent gets a full of its own (its
    bitmap's new area and a shrunk end are not worth trusting), while the other disks'
    chains go on; a disk added since gets a full, one removed since ends its chain there.
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
            elif (sizes is not None and sizes.get(disk.target) is not None
                  and sizes[disk.target] != previous.virtual_size):
                notes.append(f"disk {disk.target} was resized from "
                             f"{_mib(previous.virtual_size)} to {_mib(sizes[disk.target])} "
                             f"since backup {parent.id}: it gets its own full backup (the "
                             "other disks' chains go on)")
            else:
                assert parent.checkpoint is not None
                reason = trusted(parent.checkpoint, disk.target)
                if reason is None:
                    mode, disk_parent = kind, parent.id
                else:
                    notes.append(f"disk {disk.target}: change tracking since {parent.id} "
                                 f"cannot be trusted ({reason}); taking a full backup")
        plans.append(DiskPlan(disk, mode, disk_parent, checkpoint=bitmap_capable))

    if parent is not None and kind is not BackupType.FULL:
        now = {d.target for d in disks}
        for gone in sorted(d.target for d in parent.disks if d.target not in now):
            notes.append(f"disk {gone} of backup {parent.id} is not in this backup (removed "
                         f"from the VM or not selected): its chain ends at {parent.id}, "
                         "where it can still be restored")
    if kind is not BackupType.FULL and all(p.mode is BackupType.FULL for p in plans):
        kind, parent = BackupType.FULL, None
    return Plan(kind, parent, parent.checkpoint if parent else None, plans, notes)


def _mib(size: int) -> str:
    return f"{size / 1048576:g} MiB"


def moved_since(manifests: list[Manifest], host_uuid: str, host: str = ""
                ) -> Manifest | None:
    """The newest complete backup when it was taken on a host other than this one (the
    VM was migrated since), else None (also for manifests that predate the host record).
    Both the host UUID and the name must differ: libvirt makes up a temporary host UUID
    at each start where SMBIOS has none, so a restarted daemon is not a move."""
    complete = [m for m in manifests if m.complete]
    if not complete or not host_uuid or not complete[-1].host_uuid:
        return None
    last = complete[-1]
    if last.host_uuid == host_uuid or (host and last.host == host):
        return None
    return last


def migration_note(vm: str, last: Manifest, here: str, plan: Plan, untrusted: bool
                   ) -> str | None:
    """What a backup taken after a migration says about its chain: continued (the
    checkpoint and its bitmaps came along, handed over or redefined), or a full because
    the change tracking stayed behind (``untrusted``: a parent's checkpoint or bitmap was
    missing or unusable here)."""
    moved = (f"VM '{vm}' was migrated from host {last.host or last.host_uuid} to {here} "
             f"since backup {last.id}")
    if plan.type is not BackupType.FULL and plan.base_checkpoint:
        return (f"{moved}: its checkpoint {plan.base_checkpoint} and dirty bitmaps are on "
                f"this host, so this {plan.type.value} backup continues the chain")
    if untrusted:
        return (f"{moved} and the change tracking of that backup did not come along (its "
                "checkpoint or dirty bitmap is missing or unusable here): this backup is a "
                "full one; the next incremental continues from it")
    return None


def checkpoints_to_keep(manifests: list[Manifest]) -> set[str]:
    """The checkpoints (bitmaps) a repository's future backups need: the newest complete
    backup's and the newest full's."""
    complete = [m for m in manifests if m.complete]
    keep: set[str] = set()
    if complete and complete[-1].checkpoint:
        keep.add(complete[-1].checkpoint)
    fulls = [m for m in complete if m.type is BackupType.FULL and m.checkpoint]
    if fulls and fulls[-1].checkpoint:
        keep.add(fulls[-1].checkpoint)
    return keep
