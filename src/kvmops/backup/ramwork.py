"""Memory-backed work directories for backups into sealed repositories.

A backup into a sealed (or remote) repository is written twice: QEMU writes the point as a
qcow2 work file, then kvmops seals that file into the store. On disk, QEMU's write is
flushed when its job ends, so the disk takes the data twice. When the work file fits, it
goes to a tmpfs instead (``backup_ram_work_dir``): the disk then takes only the sealed
copy. "Fits" is measured, not hoped: the disks' virtual sizes (an upper bound of what a
push job writes, whatever the backing chain) must stay under a quarter of the memory
available and half of the tmpfs's free room; otherwise the work directory on disk is used.

The directory is created by kvmops (``0711``) and used only if it is a directory owned by
kvmops' user that nobody else can write: ``/dev/shm`` is world-writable, so a name planted
there by someone else is refused, never followed.

Every directory used so is remembered in the state directory (``backup-ram-roots``), so a
partial a killed run left behind is cleaned by a later run even when the setting has
changed in between; a repository's link into any other directory is only unlinked.
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from pathlib import Path

ROOTS_FILE = "backup-ram-roots"
MEMORY_SHARE = 4   # a backup's work files may take 1/MEMORY_SHARE of MemAvailable
TMPFS_SHARE = 2    # ... and 1/TMPFS_SHARE of the tmpfs's free room
METADATA_SLACK = 8 << 20


def work_bound(virtual_sizes: list[int]) -> int:
    """The most a push backup of disks of these sizes writes: their data and qcow2's
    metadata (an L2 entry per 64 KiB cluster and refcounts, 1/4096 of it at most)."""
    total = sum(virtual_sizes)
    return total + total // 4096 + METADATA_SLACK


def mem_available() -> int | None:
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return None


def room(directory: Path) -> int:
    """Bytes a backup may put into ``directory`` now (0: none, or not usable)."""
    root = usable_root(directory)
    available = mem_available()
    if root is None or available is None:
        return 0
    st = os.statvfs(root)
    return min(available // MEMORY_SHARE, st.f_bavail * st.f_frsize // TMPFS_SHARE)


def usable_root(directory: Path) -> Path | None:
    """``directory``, created if missing, when it is kvmops' own private directory."""
    try:
        os.mkdir(directory, 0o711)
    except FileExistsError:
        pass
    except OSError:
        return None
    try:
        st = os.lstat(directory)
    except OSError:
        return None
    if (not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid()
            or st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)):
        return None
    return directory


def _roots_file() -> Path:
    from kvmops.config import settings

    return settings().state_dir / ROOTS_FILE


def _remembered() -> set[Path]:
    with contextlib.suppress(OSError):
        return {Path(line) for line in _roots_file().read_text().splitlines()
                if line.startswith("/")}
    return set()


def known_roots() -> set[Path]:
    """The memory work directories kvmops has used on this host, and the configured one."""
    from kvmops.config import settings

    configured = settings().backup_ram_work_dir
    return _remembered() | ({configured} if configured is not None else set())


def _remember(directory: Path) -> None:
    from kvmops.backup.repository import atomic_write

    remembered = _remembered()
    if directory in remembered:
        return
    path = _roots_file()
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    atomic_write(path, "".join(f"{r}\n" for r in sorted(map(str, remembered | {directory}))))


def owns(target: Path) -> bool:
    """Is ``target`` (a link's destination, read from a repository) a work directory
    kvmops made: directly inside a memory work directory it used, which is still its
    own private directory, and not itself a link?"""
    if target.parent not in known_roots() or target.is_symlink():
        return False
    try:
        st = os.lstat(target.parent)
    except OSError:
        return False
    return (stat.S_ISDIR(st.st_mode) and st.st_uid == os.geteuid()
            and not st.st_mode & (stat.S_IWGRP | stat.S_IWOTH))


def make_work_dir(directory: Path, prefix: str, need: int | None) -> Path | None:
    """A new private directory under ``directory`` for ``need`` bytes, or None when they
    do not fit (or the size is not known)."""
    if need is None or need > room(directory):
        return None
    try:
        _remember(directory)
    except OSError:  # unrecorded, a killed run's files there could not be found again
        return None
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=directory))
    path.chmod(0o777)  # QEMU (libvirt-qemu) writes push-mode targets itself
    return path
