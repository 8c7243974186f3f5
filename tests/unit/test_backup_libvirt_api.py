"""host/backupjobs.py: libvirt's backup API seen as typed results, its errors sorted by
libvirt's error code."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import libvirt
import pytest

from kvmops.errors import (
    BackupError,
    HostUnavailableError,
    HypervisorError,
    KvmopsError,
    StateError,
    StorageError,
    UnsupportedError,
)
from kvmops.host import backupjobs
from kvmops.host.backupjobs import JobInfo, JobState


def libvirt_error(code: int, message: str, domain: int = libvirt.VIR_FROM_QEMU
                  ) -> libvirt.libvirtError:
    err = libvirt.libvirtError(message)
    err.err = (code, domain, message, libvirt.VIR_ERR_ERROR, None, None, None, 0, 0)
    return err


class FakeDomain:
    """A virDomain whose backupBegin and jobStats fail or answer as told."""

    def __init__(self, begin_error: libvirt.libvirtError | None = None,
                 stats: dict[str, Any] | None = None,
                 stats_error: libvirt.libvirtError | None = None) -> None:
        self.begin_error, self.stats, self.stats_error = begin_error, stats or {}, stats_error

    def backupBegin(self, backup_xml: str, checkpoint_xml: str, flags: int) -> None:
        if self.begin_error:
            raise self.begin_error

    def jobStats(self, flags: int) -> dict[str, Any]:
        if self.stats_error:
            raise self.stats_error
        return self.stats


def begin_error(code: int, message: str, domain: int = libvirt.VIR_FROM_QEMU) -> KvmopsError:
    fake = FakeDomain(begin_error=libvirt_error(code, message, domain))
    with pytest.raises(KvmopsError) as caught:
        backupjobs.begin_backup(fake, "web", "<domainbackup/>", "<domaincheckpoint/>",
                                base_checkpoint="kvmops-1234abcd-X", target_dir=Path("/r/p"))
    return caught.value


@pytest.mark.parametrize(("code", "message", "kind", "text"), [
    (libvirt.VIR_ERR_CHECKPOINT_INCONSISTENT, "bitmap broken", BackupError,
     "libvirt reports checkpoint kvmops-1234abcd-X of VM 'web' inconsistent: bitmap broken; "
     "run 'kvmops backup create --full' to start a new chain"),
    (libvirt.VIR_ERR_OPERATION_UNSUPPORTED, "incremental backup is not supported",
     UnsupportedError, "backup of VM 'web' not possible: incremental backup is not supported"),
    (libvirt.VIR_ERR_NO_SUPPORT, "no backup API", UnsupportedError,
     "backup of VM 'web' not possible: no backup API"),
    (libvirt.VIR_ERR_INTERNAL_ERROR, "Could not open '/r/p/vda.qcow2': Permission denied",
     StorageError, "QEMU cannot write the backup of VM 'web' into /r/p: Could not open "
     "'/r/p/vda.qcow2': Permission denied; QEMU runs as libvirt-qemu"),
    (libvirt.VIR_ERR_OPERATION_INVALID, "domain is not running", StateError,
     "starting the backup of VM 'web' failed: domain is not running"),
    (libvirt.VIR_ERR_INTERNAL_ERROR, "unexpected", HypervisorError,
     "starting the backup of VM 'web' failed: unexpected"),
])
def test_begin_errors_are_sorted_by_code(code: int, message: str, kind: type[KvmopsError],
                                         text: str) -> None:
    err = begin_error(code, message)
    assert type(err) is kind
    assert str(err).startswith(text)


def test_a_lost_connection_at_begin_is_host_unavailable() -> None:
    err = begin_error(libvirt.VIR_ERR_INTERNAL_ERROR, "client socket is closed",
                      libvirt.VIR_FROM_RPC)
    assert isinstance(err, HostUnavailableError)
    assert "lost the connection to libvirtd" in str(err)


def test_job_info_reads_backup_jobs_typed() -> None:
    running = backupjobs.job_info(FakeDomain(stats={
        "type": libvirt.VIR_DOMAIN_JOB_UNBOUNDED,
        "operation": libvirt.VIR_DOMAIN_JOB_OPERATION_BACKUP,
        "disk_processed": 10, "disk_total": 64, "data_total": 1, "time_elapsed": 7}))
    assert running == JobInfo(JobState.RUNNING, True, 10, 64, None, 7)
    assert backupjobs.active_backup_job(FakeDomain(stats={
        "type": libvirt.VIR_DOMAIN_JOB_UNBOUNDED,
        "operation": libvirt.VIR_DOMAIN_JOB_OPERATION_DUMP})) is None  # not ours
    failed = JobInfo.from_stats({"type": libvirt.VIR_DOMAIN_JOB_FAILED,
                                 "errmsg": "No space left on device"})
    assert (failed.state, failed.error) == (JobState.FAILED, "No space left on device")
    assert backupjobs.job_info(FakeDomain(stats={})).state is JobState.NONE


def test_no_job_is_none_but_a_lost_connection_is_raised() -> None:
    gone = FakeDomain(stats_error=libvirt_error(libvirt.VIR_ERR_OPERATION_INVALID,
                                                "domain is not running"))
    assert backupjobs.active_backup_job(gone) is None
    lost = FakeDomain(stats_error=libvirt_error(libvirt.VIR_ERR_SYSTEM_ERROR,
                                                "Cannot write data: Broken pipe",
                                                libvirt.VIR_FROM_RPC))
    with pytest.raises(HostUnavailableError, match="following the backup job"):
        backupjobs.job_info(lost)
