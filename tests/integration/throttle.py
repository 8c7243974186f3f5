"""Slow a VM's QEMU reads of its image so that a backup runs long enough to be
interrupted (cgroup blkio through libvirt): libvirt's backup API has no bandwidth setting
that holds from the first byte. Lifting writes the cgroup directly, since libvirt would
first wait for the domain job in progress (a cancel drains reads in flight at the limit).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable
from pathlib import Path

import libvirt

from kvmops.host.connection import Host


def throttle_reads(host: Host, vm: str, image: Path, bytes_per_s: int) -> None:
    """Limit the VM's reads of the block device under ``image`` (0 lifts the limit)."""
    dev = os.stat(image).st_dev
    sysfs = Path(f"/sys/dev/block/{os.major(dev)}:{os.minor(dev)}").resolve()
    if (sysfs / "partition").exists():  # blkio throttles whole disks
        sysfs = sysfs.parent
    uevent = (sysfs / "uevent").read_text()
    device = "/dev/" + next(line.split("=", 1)[1] for line in uevent.splitlines()
                            if line.startswith("DEVNAME="))
    host.domain(vm).setBlkioParameters({"device_read_bytes_sec": f"{device},{bytes_per_s}"},
                                       libvirt.VIR_DOMAIN_AFFECT_LIVE)


def lift_read_throttle(vm: str) -> None:
    """Lift the read limit of a VM's QEMU at once; a VM that is gone has none left."""
    try:
        pid = int(Path(f"/run/libvirt/qemu/{vm}.pid").read_text().strip())
        lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
    except (OSError, ValueError):
        return
    root = Path("/sys/fs/cgroup/blkio")
    for line in lines:
        _num, controllers, path = line.split(":", 2)
        if "blkio" not in controllers.split(","):
            continue
        group = root / path.lstrip("/")
        while group != root.parent:  # libvirt sets the rule on the VM's group
            rules = group / "blkio.throttle.read_bps_device"
            with contextlib.suppress(OSError):
                for rule in rules.read_text().splitlines():
                    rules.write_text(f"{rule.split()[0]} 0\n")
            group = group.parent


def wait_backup_job(host: Host, vm: str, partial_parent: Path,
                    still_running: Callable[[], bool], timeout: float = 60) -> None:
    """Wait until libvirt runs a backup job of ``vm`` into a partial directory (failing at
    once when ``still_running`` says the backup is over)."""
    deadline = time.monotonic() + timeout
    domain = host.domain(vm)
    while time.monotonic() < deadline:
        partials = list(partial_parent.glob(".partial-*")) if partial_parent.is_dir() else []
        with contextlib.suppress(libvirt.libvirtError):
            stats = domain.jobStats(0)
            if partials and stats.get("operation") == libvirt.VIR_DOMAIN_JOB_OPERATION_BACKUP \
                    and stats.get("type") != libvirt.VIR_DOMAIN_JOB_NONE:
                return
        assert still_running(), "the backup ended before its job was seen"
        time.sleep(0.1)
    raise AssertionError(f"no backup job of {vm} started within {timeout:g}s")
