"""libvirt's backup API for the backup engines: begin a backup, follow and abort its job,
look up and redefine checkpoints, freeze and thaw the guest's file systems.

The engines in :mod:`kvmops.backup` see typed results and kvmops errors only; libvirt
errors are sorted here by their error code (through :func:`translate`).
"""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeAlias

import libvirt
from lxml import etree

from kvmops.errors import (
    BackupError,
    KvmopsError,
    StorageError,
    UnsupportedError,
)
from kvmops.host.connection import call, connection_lost, translate

# The libvirt domain the backup engines hold (from Host.domain) and pass back here; a
# kvmops.host.domain.Domain adapter is taken as well (its raw handle is used).
DomainHandle: TypeAlias = Any


def _raw(domain: DomainHandle) -> Any:
    return getattr(domain, "raw", domain)

_UNSUPPORTED_CODES = {
    libvirt.VIR_ERR_NO_SUPPORT,
    libvirt.VIR_ERR_ARGUMENT_UNSUPPORTED,
    libvirt.VIR_ERR_CONFIG_UNSUPPORTED,
    getattr(libvirt, "VIR_ERR_OPERATION_UNSUPPORTED", -1084),
}
_CHECKPOINT_INCONSISTENT = getattr(libvirt, "VIR_ERR_CHECKPOINT_INCONSISTENT", -1110)


class JobState(enum.Enum):
    """Where a domain job stands (libvirt's ``VIR_DOMAIN_JOB_*`` types)."""

    NONE = "none"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


_STATES = {
    libvirt.VIR_DOMAIN_JOB_NONE: JobState.NONE,
    libvirt.VIR_DOMAIN_JOB_BOUNDED: JobState.RUNNING,
    libvirt.VIR_DOMAIN_JOB_UNBOUNDED: JobState.RUNNING,
    libvirt.VIR_DOMAIN_JOB_COMPLETED: JobState.COMPLETED,
    libvirt.VIR_DOMAIN_JOB_FAILED: JobState.FAILED,
    libvirt.VIR_DOMAIN_JOB_CANCELLED: JobState.CANCELLED,
}


@dataclass(frozen=True)
class JobInfo:
    """A domain job's statistics, as far as the backup engines need them."""

    state: JobState
    backup: bool  # the job is a backup job (not a migration, a dump ...)
    processed: int  # bytes copied
    total: int  # bytes to copy
    error: str | None  # why a failed job failed, when libvirt says
    elapsed_ms: int | None

    @classmethod
    def from_stats(cls, stats: dict[str, Any]) -> JobInfo:
        """From ``virDomainGetJobStats``'s dict (backup jobs report disk_*, others data_*)."""
        state = _STATES.get(stats.get("type", libvirt.VIR_DOMAIN_JOB_NONE), JobState.RUNNING)
        elapsed = stats.get("time_elapsed")
        return cls(
            state=state,
            backup=stats.get("operation") == libvirt.VIR_DOMAIN_JOB_OPERATION_BACKUP,
            processed=int(stats.get("disk_processed", stats.get("data_processed", 0))),
            total=int(stats.get("disk_total", stats.get("data_total", 0))),
            error=stats.get("errmsg") or None,
            elapsed_ms=int(elapsed) if elapsed is not None else None,
        )


NO_JOB = JobInfo(JobState.NONE, False, 0, 0, None, None)


def job_info(domain: DomainHandle, *, completed: bool = False) -> JobInfo:
    """The domain's current job (or, with ``completed``, the one that just ended).

    No job reads as :data:`NO_JOB`; a lost connection to libvirtd is raised
    (HostUnavailableError), never taken for "no job".
    """
    flags = libvirt.VIR_DOMAIN_JOB_STATS_COMPLETED if completed else 0
    try:
        stats = _raw(domain).jobStats(flags)
    except libvirt.libvirtError as err:
        if connection_lost(err):
            raise translate(err, "following the backup job") from err
        return NO_JOB
    return JobInfo.from_stats(dict(stats))


def active_backup_job(domain: DomainHandle) -> JobInfo | None:
    """The domain's running backup job, None when it runs none."""
    info = job_info(domain)
    if info.state is JobState.NONE or not info.backup:
        return None
    return info


def abort_job(domain: DomainHandle, vm: str) -> None:
    """Abort the domain's job (whatever it is): the error is translated."""
    call(f"aborting the backup job of VM '{vm}'", _raw(domain).abortJob)


def abort_backup(domain: DomainHandle, vm: str, timeout: float = 30.0) -> None:
    """Abort the domain's backup job, if any, and wait for it to end.

    Only a lost connection to libvirtd is raised (HostUnavailableError); a job that
    ended by itself meanwhile is no error.
    """
    try:
        if active_backup_job(domain):
            _raw(domain).abortJob()
            deadline = time.monotonic() + timeout
            while active_backup_job(domain) and time.monotonic() < deadline:
                time.sleep(0.2)
    except libvirt.libvirtError as err:
        if connection_lost(err):
            raise translate(err, f"aborting the backup job of VM '{vm}'") from err


def backup_job_targets(domain: DomainHandle) -> list[str]:
    """The target files of the domain's running backup job ([] when there is none)."""
    try:
        xml = etree.fromstring(_raw(domain).backupGetXMLDesc(0).encode())
    except libvirt.libvirtError:
        return []
    return [t.get("file", "") for t in xml.findall("disks/disk/target")]


def begin_backup(domain: DomainHandle, vm: str, backup_xml: str, checkpoint_xml: str, *,
                 base_checkpoint: str | None, target_dir: Path,
                 reuse_targets: bool = False) -> None:
    """``virDomainBackupBegin`` with its new checkpoint (atomically with the point in time);
    ``reuse_targets``: the push targets exist already (made by kvmops), libvirt opens them."""
    flags = libvirt.VIR_DOMAIN_BACKUP_BEGIN_REUSE_EXTERNAL if reuse_targets else 0
    try:
        _raw(domain).backupBegin(backup_xml, checkpoint_xml, flags)
    except libvirt.libvirtError as err:
        raise _begin_error(err, vm, base_checkpoint, target_dir) from err


def _begin_error(err: libvirt.libvirtError, vm: str, base_checkpoint: str | None,
                 target_dir: Path) -> KvmopsError:
    code = err.get_error_code()
    text = (err.get_error_message() or str(err)).strip()
    if connection_lost(err):
        return translate(err, f"starting the backup of VM '{vm}'")
    if code == _CHECKPOINT_INCONSISTENT:
        return BackupError(
            f"libvirt reports checkpoint {base_checkpoint} of VM '{vm}' inconsistent: {text}",
            hint="run 'kvmops backup create --full' to start a new chain")
    if code in _UNSUPPORTED_CODES:
        return UnsupportedError(f"backup of VM '{vm}' not possible: {text}")
    # QEMU's failure to open the target comes through as an internal error carrying
    # the OS's errno text; EACCES is the one with a remedy of its own.
    if "Permission denied" in text:
        return StorageError(f"QEMU cannot write the backup of VM '{vm}' into {target_dir}: "
                            f"{text}", hint="QEMU runs as libvirt-qemu: the repository must be "
                                            "reachable and writable for it")
    if "No such file or directory" in text and target_dir.is_dir():
        return StorageError(
            f"QEMU of VM '{vm}' cannot see the backup directory {target_dir}, which exists "
            "on the host (QEMU: No such file or directory)",
            hint="the repository is on a file system mounted after the VM started, and "
                 "libvirt runs QEMU in a mount namespace that this host's mounts do not "
                 "reach (private mount propagation); mount repositories before starting "
                 "VMs, or make mounts propagate ('mount --make-rshared /')")
    return translate(err, f"starting the backup of VM '{vm}' failed")


# ---------------------------------------------------------------- checkpoints
def checkpoint_defined(domain: DomainHandle, name: str) -> bool:
    """Does libvirt know checkpoint ``name``? (a lost connection is raised)"""
    try:
        _raw(domain).checkpointLookupByName(name, 0)
    except libvirt.libvirtError as err:
        if connection_lost(err):
            raise translate(err, f"looking up checkpoint {name}") from err
        return False
    return True


def checkpoint_xml(domain: DomainHandle, name: str) -> str:
    """The XML libvirt keeps of checkpoint ``name``."""
    checkpoint = call(f"looking up checkpoint {name}", _raw(domain).checkpointLookupByName, name, 0)
    return str(call(f"reading checkpoint {name}", checkpoint.getXMLDesc, 0))


def redefine_checkpoint(domain: DomainHandle, name: str, xml: str, *,
                        validate: bool = True) -> None:
    """Give libvirt checkpoint metadata it does not have (``--redefine``); with
    ``validate`` libvirt checks the bitmaps exist in the images."""
    flags = libvirt.VIR_DOMAIN_CHECKPOINT_CREATE_REDEFINE
    if validate:
        flags |= getattr(libvirt, "VIR_DOMAIN_CHECKPOINT_CREATE_REDEFINE_VALIDATE", 0)
    call(f"redefining checkpoint {name} failed", _raw(domain).checkpointCreateXML, xml, flags)


def checkpoint_names(domain: DomainHandle) -> list[str]:
    """The names of the VM's checkpoints (any tool's), as libvirt lists them."""
    found = call("listing checkpoints", _raw(domain).listAllCheckpoints, 0)
    return [str(c.getName()) for c in found]


def forget_checkpoint(domain: DomainHandle, name: str) -> None:
    """Drop libvirt's record of checkpoint ``name`` and leave the images alone (after a
    restore replaced them, no bitmap is left to merge)."""
    checkpoint = call(f"looking up checkpoint {name}", _raw(domain).checkpointLookupByName, name, 0)
    call(f"deleting checkpoint {name}", checkpoint.delete,
         libvirt.VIR_DOMAIN_CHECKPOINT_DELETE_METADATA_ONLY)


def inactive_xml(domain: DomainHandle) -> str:
    """The VM's persistent definition."""
    return str(call("reading XML", _raw(domain).XMLDesc, libvirt.VIR_DOMAIN_XML_INACTIVE))


def disk_sizes(domain: DomainHandle, targets: list[str]) -> dict[str, int]:
    """The disks' virtual sizes now (what the guest sees; a live resize shows at once);
    a disk libvirt cannot size is left out."""
    sizes: dict[str, int] = {}
    for target in targets:
        try:
            sizes[target] = int(call(f"reading the size of disk {target}",
                                     _raw(domain).blockInfo, target, 0)[0])
        except KvmopsError:
            continue
    return sizes


# ---------------------------------------------------------------- file systems
@dataclass(frozen=True)
class FreezeResult:
    frozen: int  # file systems the agent froze
    error: str | None  # why nothing could be frozen


def freeze_filesystems(domain: DomainHandle) -> FreezeResult:
    """Freeze the guest's file systems through libvirt's agent channel."""
    try:
        return FreezeResult(int(_raw(domain).fsFreeze(None, 0)), None)
    except libvirt.libvirtError as err:
        return FreezeResult(0, (err.get_error_message() or str(err)).strip())


def thaw_filesystems(domain: DomainHandle) -> str | None:
    """Thaw the guest's file systems; returns why it failed, None when it worked."""
    try:
        _raw(domain).fsThaw(None, 0)
    except libvirt.libvirtError as err:
        return (err.get_error_message() or str(err)).strip()
    return None
