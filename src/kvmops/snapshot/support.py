"""What libvirt can do natively, and the pure decisions of the snapshot service.

Everything here is free of I/O so it can be unit-tested: the libvirt support
table, the choice between internal and external snapshots, and the checks
that refuse a snapshot or a revert before anything is touched.

Support table (from libvirt's NEWS):

* 9.0.0 -- ``virDomainSnapshotDelete`` merges *external* snapshots (a block
  commit inside libvirt); the flags for deleting children are not supported.
  9.1.0 fixed block-job state handling that 9.0.0 got wrong after snapshots.
* 9.9.0 -- ``virDomainRevertToSnapshot`` reverts *external* snapshots; the
  host capabilities then show ``<externalSnapshot/>``. Before 9.9.0 libvirt
  answers "revert to external snapshot not supported yet".

kvmops uses libvirt's external revert *and* delete only when both are
native (9.9.0 and later). Below that kvmops reverts and deletes external
snapshots itself -- a fresh overlay on the snapshot's image for revert, a
block commit for delete -- and keeps libvirt's snapshot metadata matching the
disks with ``REDEFINE``. Mixing libvirt's 9.0-9.8 delete with kvmops' own
revert layout would hand libvirt overlays it did not create, so on those
versions kvmops does both.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from kvmops.errors import StateError, UnsupportedError, ValidationError
from kvmops.vm.domxml import DomainDocument


def packed(major: int, minor: int, micro: int = 0) -> int:
    """libvirt's packed version number."""
    return major * 1_000_000 + minor * 1000 + micro


@dataclass(frozen=True)
class Feature:
    name: str
    since: int  # packed libvirt version
    note: str


FEATURES: dict[str, Feature] = {
    "external-delete": Feature(
        "external-delete", packed(9, 0, 0),
        "virDomainSnapshotDelete merges external snapshots (no children flags)"),
    "external-revert": Feature(
        "external-revert", packed(9, 9, 0),
        "virDomainRevertToSnapshot reverts external snapshots"),
}


@dataclass(frozen=True)
class Support:
    """What kvmops leaves to libvirt on one host."""

    libvirt_version: int
    native_external_revert: bool
    native_external_delete: bool

    @property
    def external_by_kvmops(self) -> bool:
        return not (self.native_external_revert and self.native_external_delete)


def support_for(libvirt_version: int) -> Support:
    revert = libvirt_version >= FEATURES["external-revert"].since
    delete = libvirt_version >= FEATURES["external-delete"].since
    # Native delete is used only together with native revert (see the module doc).
    return Support(libvirt_version, native_external_revert=revert,
                   native_external_delete=delete and revert)


# ------------------------------------------------------------------ VM facts
@dataclass(frozen=True)
class DiskFacts:
    target: str
    fmt: str
    source: str | None
    readonly: bool = False
    device: str = "disk"

    @property
    def snapshottable(self) -> bool:
        return self.device == "disk" and not self.readonly and bool(self.source)


@dataclass(frozen=True)
class VmFacts:
    name: str
    active: bool
    disks: list[DiskFacts] = field(default_factory=list)
    pflash: bool = False
    hostdevs: list[str] = field(default_factory=list)

    @property
    def writable_disks(self) -> list[DiskFacts]:
        return [d for d in self.disks if d.snapshottable]


def vm_facts(name: str, active: bool, domain_xml: str) -> VmFacts:
    """Read what the decisions need from a domain XML."""
    doc = DomainDocument(domain_xml)
    kinds = doc.disk_device_kinds()  # disk, cdrom, floppy, lun
    disks = [DiskFacts(target=d.target, fmt=d.fmt, source=d.source,
                       readonly=d.readonly or d.device == "cdrom", device=kind)
             for d, kind in zip(doc.disks(), kinds, strict=True)]
    return VmFacts(name=name, active=active, disks=disks, pflash=doc.uses_pflash(),
                   hostdevs=doc.host_devices())


# ------------------------------------------------------------------ create
class Kind(enum.StrEnum):
    INTERNAL = "internal"
    EXTERNAL = "external"


@dataclass(frozen=True)
class CreateDecision:
    kind: Kind
    memory: bool
    quiesce: bool
    notes: list[str] = field(default_factory=list)


def internal_blockers(facts: VmFacts) -> list[str]:
    """Why an internal snapshot is impossible for this VM (empty when it is possible)."""
    reasons = [f"disk {d.target} is {d.fmt} (internal snapshots need qcow2)"
               for d in facts.writable_disks if d.fmt != "qcow2"]
    if facts.pflash:
        reasons.append("it boots UEFI firmware from pflash, which QEMU cannot snapshot "
                       "internally")
    return reasons


def decide_create(facts: VmFacts, *, memory: bool, disk_only: bool, quiesce: bool
                  ) -> CreateDecision:
    """Internal or external, with or without memory -- or a refusal naming why."""
    vm = facts.name
    if memory and disk_only:
        raise ValidationError("give either --memory or --disk-only, not both")
    if memory and quiesce:
        raise ValidationError("--quiesce applies to disk-only snapshots, not to --memory",
                              hint="a snapshot with memory is consistent without freezing")
    if not facts.writable_disks:
        raise ValidationError(f"VM '{vm}' has no writable disk to snapshot")
    blockers = internal_blockers(facts)
    if memory and blockers:
        raise UnsupportedError(
            f"cannot take an internal snapshot with memory of VM '{vm}': {blockers[0]}",
            hint="take a disk-only snapshot with --disk-only")
    if not facts.active:
        if memory:
            raise StateError(f"cannot save the memory of VM '{vm}': it is shut off",
                             actual="shut off", required="running",
                             hint="start it, or leave out --memory for a disk snapshot")
        if quiesce:
            raise StateError(f"cannot quiesce VM '{vm}': it is shut off (its disks are "
                             "already consistent)", actual="shut off", required="running",
                             hint="leave out --quiesce")
    notes: list[str] = []
    if quiesce and not disk_only:
        disk_only = True
        notes.append("--quiesce takes a disk-only (external) snapshot")
    wants_memory = facts.active and not disk_only and not blockers
    if wants_memory and facts.hostdevs:
        raise UnsupportedError(
            f"cannot save the memory of VM '{vm}': it has a passed-through host device "
            f"({', '.join(facts.hostdevs)}) whose state cannot be saved",
            hint="take a disk-only snapshot with --disk-only")
    if disk_only or blockers:
        if blockers and not disk_only:
            notes.append(f"external disk-only snapshot: {blockers[0]}")
        return CreateDecision(Kind.EXTERNAL, memory=False, quiesce=quiesce, notes=notes)
    return CreateDecision(Kind.INTERNAL, memory=facts.active, quiesce=False, notes=notes)


# ------------------------------------------------------------------ revert
@dataclass(frozen=True)
class RevertDecision:
    end_state: str | None  # "running", "paused", or None: as libvirt/the snapshot leaves it
    force: bool


def decide_revert(vm: str, snapshot: str, *, vm_active: bool, snapshot_memory: bool,
                  running: bool, paused: bool, force: bool) -> RevertDecision:
    if running and paused:
        raise ValidationError("give either --running or --paused, not both")
    if vm_active and not snapshot_memory and not force:
        raise StateError(
            f"reverting running VM '{vm}' to disk-only snapshot '{snapshot}' stops it: "
            "its running state is lost",
            actual="running", required="shut off",
            hint="shut it down first, or add --force (add --running to boot it again)")
    end = "running" if running else "paused" if paused else None
    return RevertDecision(end_state=end, force=force)


# ------------------------------------------------------------------ delete
def deletion_blockers(snapshot: str, kind: Kind, children: dict[str, Kind],
                      with_children: bool) -> None:
    """Refuse to delete what a later snapshot still needs."""
    if with_children or not children:
        return
    needs = sorted(children) if kind is Kind.EXTERNAL else sorted(
        name for name, child_kind in children.items() if child_kind is Kind.EXTERNAL)
    if needs:
        raise StateError(
            f"snapshot '{snapshot}' is needed by its child snapshot '{needs[0]}'"
            + (f" (and {len(needs) - 1} more)" if len(needs) > 1 else ""),
            hint="delete the children first, or add --children to delete them too")


def overlay_path(image: str, snapshot: str, taken: set[str]) -> str:
    """``/dir/vm-vda.qcow2`` + ``s1`` -> ``/dir/vm-vda.s1.qcow2`` (``.s1.2.qcow2`` if taken)."""
    base = image
    for suffix in (".qcow2", ".raw", ".img"):
        if base.endswith(suffix):
            base = base[: -len(suffix)]
            break
    candidate = f"{base}.{snapshot}.qcow2"
    number = 1
    while candidate in taken:
        number += 1
        candidate = f"{base}.{snapshot}.{number}.qcow2"
    return candidate
