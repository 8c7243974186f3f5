"""The format kvmops recorded for an image it wrote.

Every image kvmops creates or converts gets its format in the extended attribute
``trusted.kvmops.format``. The ``trusted.`` namespace is readable and writable
only by root (CAP_SYS_ADMIN): neither a guest (QEMU runs as libvirt-qemu) nor an
API caller can set it, so a recorded format is one kvmops chose, never one read
from bytes a guest could have written. An image without a record is read as raw
unless its user names another format.

File systems without ``trusted.`` attributes (NFS, some FUSE) simply keep no
record; everything still works with explicit formats.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

ATTRIBUTE = "trusted.kvmops.format"
KNOWN = ("raw", "qcow2")


def record_format(path: Path, fmt: str) -> None:
    """Remember ``fmt`` for ``path`` (best effort: no error where unsupported)."""
    with contextlib.suppress(OSError):
        os.setxattr(path, ATTRIBUTE, fmt.encode(), follow_symlinks=False)


def recorded_format(path: Path) -> str | None:
    try:
        value = os.getxattr(path, ATTRIBUTE, follow_symlinks=False).decode("ascii", "replace")
    except OSError:
        return None
    return value if value in KNOWN else None


def forget_format(path: Path) -> None:
    with contextlib.suppress(OSError):
        os.removexattr(path, ATTRIBUTE, follow_symlinks=False)


# Magic numbers, only to *tell* a user what a raw image's first bytes look like: the
# result never chooses how an image is opened.
_MAGICS = (
    (b"QFI\xfb", "qcow2"),
    (b"LUKS\xba\xbe", "luks"),
    (b"KDMV", "vmdk"),
    (b"# Disk DescriptorFile", "vmdk"),
    (b"conectix", "vpc"),
    (b"vhdxfile", "vhdx"),
    (b"QED\x00", "qed"),
    (b"<<< Oracle VM VirtualBox Disk Image >>>", "vdi"),
)


def header_lookalike(path: Path) -> str | None:
    """The image format whose magic the file starts with, if any (a hint only)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(64)
    except OSError:
        return None
    for magic, name in _MAGICS:
        if head.startswith(magic):
            return name
    return None
