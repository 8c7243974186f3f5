"""Backup manifests and chain arithmetic: pure, no I/O."""

from __future__ import annotations

import enum
from datetime import UTC, datetime

from pydantic import BaseModel, Field

from kvmops.errors import NotFoundError, ValidationError


class BackupType(enum.StrEnum):
    FULL = "full"
    INCREMENTAL = "incremental"
    DIFFERENTIAL = "differential"


class Consistency(enum.StrEnum):
    APPLICATION = "application"  # file systems frozen by the guest agent at the instant
    CRASH = "crash"  # as if the power had been cut at the instant
    OFFLINE = "offline"  # the VM was shut off: the image is exactly what is on disk


class DiskRecord(BaseModel):
    target: str  # vda
    file: str  # file name inside the backup directory, e.g. vda.qcow2
    format: str = "qcow2"  # the backup file's format: recorded, never probed
    source: str  # the VM's image the backup was taken from
    type: BackupType  # a disk added after the last full gets a full inside an incremental
    parent: str | None  # backup id holding this disk's previous link, None for a full
    virtual_size: int
    bytes_written: int  # allocated bytes of the backup file
    sha256: str  # "blake3:HEX" (older: "sha256-64m:HEX", bare sha256); repository.digest_matches


class Manifest(BaseModel):
    id: str
    vm: str
    time: datetime
    type: BackupType
    parent: str | None
    checkpoint: str | None
    consistency: Consistency
    complete: bool = True
    transport: str = "libvirt"
    disks: list[DiskRecord]
    notes: list[str] = Field(default_factory=list)
    domain_xml: str = ""
    tool_version: str = ""
    qemu_version: str = ""
    libvirt_version: str = ""
    duration_s: float = 0.0
    # The libvirt host the VM ran on (hostname, capabilities' host UUID): the next backup
    # tells when the VM has been migrated since (empty in older manifests).
    host: str = ""
    host_uuid: str = ""

    def disk(self, target: str) -> DiskRecord:
        for disk in self.disks:
            if disk.target == target:
                return disk
        raise NotFoundError(f"backup {self.id} of VM '{self.vm}' has no disk '{target}'")


def new_backup_id(now: datetime | None = None) -> str:
    """Sortable, unique per microsecond: ``20261123T165012.123456Z``."""
    moment = (now or datetime.now(UTC)).astimezone(UTC)
    return moment.strftime("%Y%m%dT%H%M%S.%fZ")


def disk_chain(manifests: dict[str, Manifest], backup_id: str, target: str) -> list[Manifest]:
    """The backups whose files form ``target``'s image at ``backup_id``, full first."""
    chain: list[Manifest] = []
    current: str | None = backup_id
    seen: set[str] = set()
    while current is not None:
        if current in seen:
            raise ValidationError(f"backup chain of disk {target} loops at {current}")
        seen.add(current)
        manifest = manifests.get(current)
        if manifest is None:
            raise NotFoundError(
                f"backup {current} (needed by {backup_id}, disk {target}) is missing "
                "from the repository",
                hint="run 'kvmops backup verify' to see what is broken",
            )
        record = manifest.disk(target)
        chain.append(manifest)
        current = record.parent
    chain.reverse()
    return chain


def resolve_point(manifests: list[Manifest], at: str | None) -> Manifest:
    """Find a backup by id, by id prefix, or the newest at or before an ISO time."""
    complete = [m for m in manifests if m.complete]
    if not complete:
        raise NotFoundError("no complete backup in the repository",
                            hint="take one with 'kvmops backup create'")
    if at is None:
        return complete[-1]
    exact = [m for m in complete if m.id == at]
    if exact:
        return exact[0]
    prefixed = [m for m in complete if m.id.startswith(at)]
    if len(prefixed) == 1:
        return prefixed[0]
    if len(prefixed) > 1:
        raise ValidationError(f"backup id prefix '{at}' is ambiguous",
                              hint="give more characters of the id")
    try:
        moment = datetime.fromisoformat(at)
    except ValueError:
        raise NotFoundError(f"no backup with id '{at}'",
                            hint="see 'kvmops backup list'; --at takes an id or an ISO time"
                            ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    before = [m for m in complete if m.time <= moment]
    if not before:
        raise NotFoundError(f"no backup at or before {at}")
    return before[-1]
