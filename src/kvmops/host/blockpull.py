"""libvirt's block pull for instant recovery: stream a disk's backing chain into its top
image while the VM runs (``virDomainBlockPull`` with no base: QEMU's ``block-stream``).

The job belongs to QEMU, not to the caller: it goes on when the kvmops process that
started it dies, and libvirt drops the backing chain from the live and the persistent
definition when it completes. It dies with QEMU (the VM stopped): the top image then
still names its backing file and a new pull starts over (already copied data stays).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import libvirt
from lxml import etree

from kvmops.host.errors import call

PULL_TYPE = getattr(libvirt, "VIR_DOMAIN_BLOCK_JOB_TYPE_PULL", 1)
_BYTES = getattr(libvirt, "VIR_DOMAIN_BLOCK_PULL_BANDWIDTH_BYTES", 64)
_INFO_BYTES = getattr(libvirt, "VIR_DOMAIN_BLOCK_JOB_INFO_BANDWIDTH_BYTES", 1)
_SPEED_BYTES = getattr(libvirt, "VIR_DOMAIN_BLOCK_JOB_SPEED_BANDWIDTH_BYTES", 1)


@dataclass(frozen=True)
class PullStatus:
    """Where the pull of one disk of a running VM stands."""

    job: bool  # a pull job runs on the disk
    cur: int  # bytes of the disk walked
    end: int  # bytes to walk (the disk's size)
    bandwidth: int  # bytes/s, 0: unlimited
    backed: bool  # the live definition still has a backing chain under the disk

    @property
    def percent(self) -> float:
        if not self.job:
            return 0.0 if self.backed else 100.0
        return round(100.0 * self.cur / self.end, 1) if self.end else 0.0


def _raw(domain: Any) -> Any:
    return getattr(domain, "raw", domain)


def _name(domain: Any) -> str:
    return str(_raw(domain).name())


def start_pull(domain: Any, target: str, bandwidth: int | None) -> None:
    """Start streaming disk ``target``'s whole backing chain into its top image;
    ``bandwidth`` in bytes/s (None or 0: unlimited)."""
    call(f"starting the block pull of disk {target} of VM '{_name(domain)}'",
         _raw(domain).blockPull, target, int(bandwidth or 0), _BYTES)


def set_speed(domain: Any, target: str, bandwidth: int | None) -> None:
    """Change the rate limit of a running pull (bytes/s; None or 0: unlimited)."""
    call(f"setting the speed of the block pull of disk {target} of VM '{_name(domain)}'",
         _raw(domain).blockJobSetSpeed, target, int(bandwidth or 0), _SPEED_BYTES)


def abort_pull(domain: Any, target: str) -> None:
    """Stop the pull; the data copied so far stays in the top image, which keeps its
    backing chain (a later pull goes on from there)."""
    call(f"cancelling the block pull of disk {target} of VM '{_name(domain)}'",
         _raw(domain).blockJobAbort, target, 0)


def is_running(domain: Any) -> bool:
    return bool(_raw(domain).isActive())


def live_backed(domain: Any, target: str) -> bool:
    """Whether the running VM's disk ``target`` still reads from a backing chain."""
    xml = call(f"reading the definition of VM '{_name(domain)}'", _raw(domain).XMLDesc, 0)
    root = etree.fromstring(xml.encode())
    for disk in root.findall("devices/disk"):
        el = disk.find("target")
        if el is not None and el.get("dev") == target:
            backing = disk.find("backingStore")
            return backing is not None and backing.find("source") is not None
    return False


def pull_status(domain: Any, target: str) -> PullStatus | None:
    """The pull of disk ``target`` of a running VM; None when the VM does not run."""
    raw = _raw(domain)
    if not raw.isActive():
        return None
    info = call(f"reading the block job of disk {target} of VM '{_name(domain)}'",
                raw.blockJobInfo, target, _INFO_BYTES)
    backed = live_backed(domain, target)
    if info and int(info.get("type", 0)) == PULL_TYPE:
        return PullStatus(True, int(info.get("cur", 0)), int(info.get("end", 0)),
                          int(info.get("bandwidth", 0)), backed)
    return PullStatus(False, 0, 0, 0, backed)
