"""The records every part of migration shares: what the operator asked for, what stands
in the way, how far a running migration got, and what came of it.

Records (not pydantic): the CLI's paths stay light, and FastAPI serves dataclasses.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from kvmops.records import Record

#: live: a running VM moves with its memory; cold: a shut-off VM's disks are copied.
Kind = Literal["live", "cold"]


@dataclass
class MigrationOptions(Record):
    """``kvmops vm migrate VM --to HOST ...`` as the use cases take it."""

    target: str  # the host's name (``host list``); ``local`` is the machine's own
    copy_storage: bool = False  # copy local disks to the target (live: NBD mirror)
    target_pool: str | None = None  # the target's storage pool for copied disks
    bandwidth_mib: int | None = None  # MiB/s cap for the migration stream
    auto_converge: bool = False  # throttle the guest's vCPUs when memory stays dirty
    postcopy: bool = False  # switch to post-copy when pre-copy does not converge
    max_downtime_ms: int | None = None  # the longest pause the switch-over may take
    dry_run: bool = False  # run the preflight, say the plan, change nothing


@dataclass
class Blocker(Record):
    """One reason the migration cannot run as asked, with what to do about it.

    ``code`` is stable (scripts and tests match it): ``hostdev``, ``vf``, ``cpu``,
    ``network``, ``bridge``, ``pool``, ``local-disk``, ``memory``, ``block-job``,
    ``backup``, ``memory-snapshot``, ``cdrom``, ``name-clash``, ``state``,
    ``same-host``, ``unreachable``; cold migration adds ``snapshot`` (an external one),
    ``backing-file`` and ``disk`` (a disk it cannot copy).
    """

    code: str
    message: str  # what, naming the object: "disk vda (/x/y.qcow2) is local to host a"
    remedy: str  # what to do: "add --copy-storage, or put it on storage both hosts share"


@dataclass
class Preflight(Record):
    """Every blocker at once (empty: the migration may run) and notes that do not block
    (``warnings``: e.g. the next backup will be a full one)."""

    vm: str
    source: str
    target: str
    kind: Kind
    blockers: list[Blocker] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.blockers


@dataclass
class MigrationProgress(Record):
    """One progress report (live: from libvirt's job stats; cold: bytes copied)."""

    phase: str  # "preflight", "memory", "storage", "copy", "verify", "switch-over", ...
    data_total: int | None = None  # bytes
    data_processed: int | None = None
    data_remaining: int | None = None
    dirty_rate: int | None = None  # pages/s or bytes/s as ``dirty_rate_unit`` says
    dirty_rate_unit: str | None = None
    iteration: int | None = None  # memory pass (live)
    expected_downtime_ms: int | None = None
    postcopy: bool = False


@dataclass
class MigrationResult(Record):
    """What ``vm migrate`` reports when done."""

    vm: str
    source: str
    target: str
    kind: Kind
    seconds: float
    downtime_ms: int | None = None  # libvirt's measured downtime (live)
    data_transferred: int | None = None  # bytes
    disks: list[str] = field(default_factory=list)  # the VM's disk paths on the target
    notes: list[str] = field(default_factory=list)  # e.g. "next backup is a full one"


#: Called with each progress report; the use cases call it from their own thread.
ProgressFn = Callable[[MigrationProgress], None]
#: Polled by the use cases: True when the operator asked to cancel.
CancelledFn = Callable[[], bool]
