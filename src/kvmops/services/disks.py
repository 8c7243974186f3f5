"""Disk hot-plug use cases: attach an existing image (format named or recorded, chain
checked) or a new one in an allowed images directory; detach, optionally removing
the image kvmops created."""

from __future__ import annotations

from pathlib import Path

from kvmops.host.connection import Host
from kvmops.images import records
from kvmops.images.chain import open_user_image
from kvmops.paths import policy
from kvmops.services.audit import audited
from kvmops.services.caller import Caller
from kvmops.vm import disks
from kvmops.vm.disks import DetachResult, DiskInfo

__all__ = ["DetachResult", "DiskInfo"]  # the faces' models


def list_disks(caller: Caller, host: Host, vm: str, *, inactive: bool = False
               ) -> list[DiskInfo]:
    """A VM's disks with image, format, size and QEMU node/device names."""
    return disks.list_disks(host, vm, inactive=inactive)


@audited("vm.disk.attach", target="vm")
def attach(caller: Caller, host: Host, vm: str, *, image: Path | None = None,
           size: int | None = None, bus: str = "virtio", fmt: str | None = None,
           images_dir: Path | None = None, target: str | None = None, live: bool = True,
           persistent: bool = True, readonly: bool = False) -> DiskInfo:
    rules = policy()
    path: Path | None = None
    if image is not None:
        checked = open_user_image(image, fmt, rules=rules, trusted=caller.trusted_paths)
        path, fmt = checked.path, checked.format
    directory = rules.new_images_dir(images_dir, trusted=caller.trusted_paths) \
        if image is None else None
    attached = disks.attach(host, vm, image=path, size=size, bus=bus, fmt=fmt,
                            images_dir=directory, target=target, live=live,
                            persistent=persistent, readonly=readonly)
    if path is not None and fmt is not None:
        # From now on the guest writes it: remember how it is read, never its bytes' claim.
        records.record_format(path, fmt)
    return attached


@audited("vm.disk.detach", target="vm")
def detach(caller: Caller, host: Host, vm: str, target: str, *, remove_storage: bool = False,
           timeout: float = 30.0, live: bool = True, persistent: bool = True) -> DetachResult:
    return disks.detach(host, vm, target, remove_storage=remove_storage, timeout=timeout,
                        live=live, persistent=persistent)
