"""A minimal writer for the "newc" cpio format the kernel unpacks as initramfs.

Written here rather than driving ``cpio`` so the archive can hold root- and
tester-owned files and a ``/dev/console`` node without the builder being root,
and so the output is byte-for-byte reproducible (fixed mtimes, sorted entries).
"""

from __future__ import annotations

import stat
from dataclasses import dataclass, field
from pathlib import PurePosixPath

_MAGIC = b"070701"


@dataclass(frozen=True)
class Entry:
    mode: int  # full st_mode (type bits and permissions)
    data: bytes = b""  # file content, or symlink target
    uid: int = 0
    gid: int = 0
    rdev: tuple[int, int] = (0, 0)


@dataclass
class Archive:
    """Entries by absolute guest path; parents are created as 0755 directories."""

    entries: dict[str, Entry] = field(default_factory=dict)

    @staticmethod
    def _norm(path: str) -> str:
        norm = str(PurePosixPath("/") / path.lstrip("/"))
        if ".." in PurePosixPath(norm).parts:
            raise ValueError(f"bad archive path {path!r}")
        return norm

    def _parents(self, path: str) -> None:
        for parent in reversed(PurePosixPath(path).parents):
            key = str(parent)
            if key != "/" and key not in self.entries:
                self.entries[key] = Entry(stat.S_IFDIR | 0o755)

    def add(self, path: str, entry: Entry) -> None:
        norm = self._norm(path)
        self._parents(norm)
        self.entries[norm] = entry

    def dir(self, path: str, mode: int = 0o755, uid: int = 0, gid: int = 0) -> None:
        self.add(path, Entry(stat.S_IFDIR | mode, uid=uid, gid=gid))

    def file(self, path: str, data: bytes, mode: int = 0o644, uid: int = 0, gid: int = 0) -> None:
        self.add(path, Entry(stat.S_IFREG | mode, data, uid, gid))

    def symlink(self, path: str, target: str) -> None:
        self.add(path, Entry(stat.S_IFLNK | 0o777, target.encode()))

    def chardev(self, path: str, major: int, minor: int, mode: int = 0o600) -> None:
        self.add(path, Entry(stat.S_IFCHR | mode, rdev=(major, minor)))

    def __contains__(self, path: str) -> bool:
        return self._norm(path) in self.entries

    def to_bytes(self, mtime: int = 0) -> bytes:
        out = bytearray()
        for ino, path in enumerate(sorted(self.entries), start=1):
            entry = self.entries[path]
            nlink = 2 if stat.S_ISDIR(entry.mode) else 1
            _write(out, path.lstrip("/"), entry, ino, nlink, mtime)
        _write(out, "TRAILER!!!", Entry(0), 0, 1, 0)
        return bytes(out)


def _pad4(out: bytearray) -> None:
    out.extend(b"\0" * (-len(out) % 4))


def _write(out: bytearray, name: str, entry: Entry, ino: int, nlink: int, mtime: int) -> None:
    name_bytes = name.encode() + b"\0"
    fields = (
        ino, entry.mode, entry.uid, entry.gid, nlink, mtime, len(entry.data),
        0, 0, entry.rdev[0], entry.rdev[1], len(name_bytes), 0,
    )
    out.extend(_MAGIC + b"".join(b"%08X" % value for value in fields))
    out.extend(name_bytes)
    _pad4(out)
    out.extend(entry.data)
    _pad4(out)
