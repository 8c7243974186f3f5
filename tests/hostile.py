"""Hostile images and host files for the security tests: what a guest can write into its
raw disk, and the root-only host files it would like to reach."""

from __future__ import annotations

import os
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class FileState:
    exists: bool
    content: bytes | None
    uid: int | None
    gid: int | None
    mode: int | None
    mtime_ns: int | None


def state_of(path: Path) -> FileState:
    try:
        st = path.stat()
    except FileNotFoundError:
        return FileState(False, None, None, None, None, None)
    return FileState(True, path.read_bytes(), st.st_uid, st.st_gid, st.st_mode, st.st_mtime_ns)


def host_secret(tag: str) -> Path:
    """A root-only file outside every allowed directory (like /etc/shadow)."""
    fd, name = tempfile.mkstemp(prefix=f"kvmops-test-secret-{tag}-", dir="/tmp")
    os.write(fd, f"root-only secret {tag}\n".encode() * 64)
    os.close(fd)
    os.chmod(name, 0o600)
    return Path(name)


def header(kind: str, target: Path) -> bytes:
    """The first bytes of an image that names ``target``: what a guest writes at offset 0
    of its raw disk. ``kind``: qcow2-backing, qcow2-data-file, luks, vmdk."""
    with tempfile.TemporaryDirectory() as work:
        image = Path(work) / "h"
        if kind == "qcow2-backing":
            subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-u", "-b", str(target),
                            "-F", "raw", str(image), "64M"], check=True)
        elif kind == "qcow2-data-file":
            # create would write the data file: name a scratch one, then only rename it
            subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-o",
                            f"data_file={Path(work) / 'scratch'},data_file_raw=on",
                            str(image), "1M"], check=True)
            subprocess.run(["qemu-img", "amend", "-f", "qcow2", "-o", f"data_file={target}",
                            str(image)], check=True)
        elif kind == "luks":
            return b"LUKS\xba\xbe\x00\x01" + b"\x00" * 504
        elif kind == "vmdk":
            text = ("# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\n"
                    'createType="monolithicFlat"\n\n'
                    f'RW 2048 FLAT "{target}" 0\n\n'
                    'ddb.adapterType = "ide"\n')
            return text.encode().ljust(512, b"\x00")
        else:
            raise ValueError(kind)
        return image.read_bytes()[:65536]


def hostile_raw(path: Path, kind: str, target: Path, size: int = 16 * 1024 * 1024) -> Path:
    """A raw image whose content starts with a hostile header (as a guest would leave it)."""
    data = header(kind, target)
    with open(path, "wb") as fh:
        fh.write(data)
        fh.truncate(size)
    return path
