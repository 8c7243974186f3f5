"""libvirt's side of pull-mode (fleecing) backups and of the write-latency watch.

A pull-mode backup is begun with the same ``virDomainBackupBegin`` as a push-mode one
(:func:`kvmops.host.backupjobs.begin_backup`) and ended with ``virDomainAbortJob``
(:func:`kvmops.host.backupjobs.abort_backup`): a pull job never ends by itself, and
libvirt removes the scratch files it created when it ends. What is pull-specific lives
here: the scratch files of a running job (to recognise the job of a killed kvmops), a
disk's allocation (room for the scratch) and QEMU's write counters (the latency watch).
"""

from __future__ import annotations

from dataclasses import dataclass

import libvirt
from lxml import etree

from kvmops.errors import KvmopsError
from kvmops.host.backupjobs import DomainHandle
from kvmops.host.connection import call, connection_lost, translate


def _raw(domain: DomainHandle) -> object:
    return getattr(domain, "raw", domain)


def pull_job_scratch(domain: DomainHandle) -> list[str]:
    """The scratch files of the domain's running pull-mode backup ([] for none, or push)."""
    try:
        text = _raw(domain).backupGetXMLDesc(0)  # type: ignore[attr-defined]
    except libvirt.libvirtError as err:
        if connection_lost(err):
            raise translate(err, "reading the backup job") from err
        return []
    xml = etree.fromstring(str(text).encode())
    if xml.get("mode") != "pull":
        return []
    return [s.get("file", "") for s in xml.findall("disks/disk/scratch")]


def disk_allocation(domain: DomainHandle, target: str) -> int | None:
    """Bytes allocated to disk ``target``'s image on the host (None when unknown)."""
    try:
        return int(call(f"reading the allocation of disk {target}",
                        _raw(domain).blockInfo, target, 0)[1])  # type: ignore[attr-defined]
    except KvmopsError:
        return None


@dataclass(frozen=True)
class WriteCounters:
    """QEMU's cumulative write counters of one disk (``virDomainBlockStatsFlags``)."""

    operations: int
    total_ns: int  # time spent in those writes, submission to completion


def write_counters(domain: DomainHandle, target: str) -> WriteCounters | None:
    """The disk's write counters now; None when QEMU does not report them."""
    try:
        stats = _raw(domain).blockStatsFlags(target, 0)  # type: ignore[attr-defined]
    except libvirt.libvirtError as err:
        if connection_lost(err):
            raise translate(err, f"reading the statistics of disk {target}") from err
        return None
    if "wr_operations" not in stats or "wr_total_times" not in stats:
        return None
    return WriteCounters(int(stats["wr_operations"]), int(stats["wr_total_times"]))
