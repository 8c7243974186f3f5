"""Read a guest's file system mounted on the host, treating every name in it as untrusted.

A path inside the guest (``/etc/x``) is resolved component by component within the
mounted root, as if the root were ``/`` (a chroot): ``..`` never climbs above it, a
symbolic link is followed only while it stays inside (an absolute target is taken
relative to the root, a relative one from its directory), and a link or ``..`` that
would leave the root is refused. Device files, FIFOs and sockets are never opened.
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from pydantic import BaseModel

from kvmops.backup.repository import fsync_dir
from kvmops.errors import AlreadyExistsError, NotFoundError, PathRefusedError, ValidationError

MAX_LINKS = 40
BLOCK = 4 * 1024 * 1024
BytesFn = Callable[[int, int], None]


def _refuse(path: str, why: str) -> PathRefusedError:
    return PathRefusedError(f"guest path {path} {why}",
                            hint="give a path that stays inside the guest's file system")


def _components(text: str) -> list[str]:
    return [part for part in text.split("/") if part not in ("", ".")]


def resolve(root: Path, guest_path: str, *, follow_last: bool = True) -> Path:
    """The host path of ``guest_path`` inside ``root`` (must exist), never outside it."""
    if "\0" in guest_path:
        raise ValidationError("a guest path must not contain NUL bytes")
    if not guest_path.startswith("/"):
        raise ValidationError(f"guest path '{guest_path}' is not absolute",
                              hint="give the full path in the guest, e.g. /etc/hostname")
    done: list[str] = []  # resolved components below root, no links in them
    todo = _components(guest_path)
    links = 0
    while todo:
        part = todo.pop(0)
        if part == "..":
            if not done:
                raise _refuse(guest_path, "climbs above the root of the file system ('..')")
            done.pop()
            continue
        current = root.joinpath(*done, part)
        try:
            info = os.lstat(current)
        except FileNotFoundError:
            raise NotFoundError(f"{guest_path} does not exist in the backup "
                                f"(no '{'/' + '/'.join([*done, part])}')") from None
        except OSError as err:
            raise NotFoundError(f"cannot read {guest_path} in the backup: "
                                f"{err.strerror}") from None
        if stat.S_ISLNK(info.st_mode) and (todo or follow_last):
            links += 1
            if links > MAX_LINKS:
                raise _refuse(guest_path, "has too many levels of symbolic links")
            target = os.readlink(current)
            if target.startswith("/"):
                done = []
            else:
                # A relative link that climbs more than its depth leaves the root.
                depth = len(done)
                for piece in _components(target):
                    depth = depth - 1 if piece == ".." else depth + 1
                    if depth < 0:
                        raise _refuse(guest_path, f"goes through symbolic link "
                                                  f"'/{'/'.join([*done, part])}' -> "
                                                  f"'{target}', which leaves the file system")
            todo = _components(target) + todo
            continue
        if todo and not stat.S_ISDIR(info.st_mode):
            raise NotFoundError(f"{guest_path}: '/{'/'.join([*done, part])}' is not a "
                                "directory in the backup")
        done.append(part)
    return root.joinpath(*done)


class Entry(BaseModel):
    name: str
    type: str  # file, dir, symlink, char, block, fifo, socket
    size: int
    mode: str  # 0644
    mtime: datetime
    uid: int
    gid: int
    target: str | None = None  # a symlink's target (as stored, never followed)


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISREG, "file"), (stat.S_ISDIR, "dir"), (stat.S_ISLNK, "symlink"),
                       (stat.S_ISCHR, "char"), (stat.S_ISBLK, "block"),
                       (stat.S_ISFIFO, "fifo"), (stat.S_ISSOCK, "socket")):
        if test(mode):
            return name
    return "other"


def entry(path: Path, name: str | None = None) -> Entry:
    info = os.lstat(path)
    kind = _kind(info.st_mode)
    return Entry(name=name or path.name, type=kind, size=info.st_size,
                 mode=f"{stat.S_IMODE(info.st_mode):04o}",
                 mtime=datetime.fromtimestamp(info.st_mtime, UTC), uid=info.st_uid,
                 gid=info.st_gid, target=os.readlink(path) if kind == "symlink" else None)


def list_dir(root: Path, guest_path: str) -> list[Entry]:
    """A directory's entries (or the one entry of a non-directory), sorted by name."""
    real = resolve(root, guest_path)
    if not real.is_dir() or real.is_symlink():
        return [entry(real, os.path.basename(guest_path.rstrip("/")) or "/")]
    found = []
    with os.scandir(real) as items:
        for item in items:
            with contextlib.suppress(OSError):
                found.append(entry(Path(item.path), item.name))
    return sorted(found, key=lambda e: e.name)


# ---------------------------------------------------------------- copying out
class CopyResult(BaseModel):
    path: str  # what was written on the host
    kind: str  # file or dir
    files: int
    bytes: int
    skipped: list[str] = []  # devices, FIFOs, sockets inside a directory


def _copy_file(src: Path, dst_fd: int, total: int, done: list[int],
               progress: BytesFn | None) -> None:
    fd = os.open(src, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise _refuse(str(src), "is not a regular file")
        while True:
            data = os.read(fd, BLOCK)
            if not data:
                break
            view = memoryview(data)
            while view:
                view = view[os.write(dst_fd, view):]
            done[0] += len(data)
            if progress is not None:
                progress(done[0], total)
    finally:
        os.close(fd)


def _write_file(src: Path, dst: Path, total: int, done: list[int],
                progress: BytesFn | None) -> None:
    info = os.lstat(src)
    fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        _copy_file(src, fd, total, done, progress)
        os.fsync(fd)
        os.fchmod(fd, stat.S_IMODE(info.st_mode) & 0o777)  # never setuid/setgid/sticky
    finally:
        os.close(fd)
    os.utime(dst, ns=(info.st_atime_ns, info.st_mtime_ns), follow_symlinks=False)


def _tree_size(src: Path) -> int:
    total = 0
    for base, dirs, files in os.walk(src, followlinks=False):
        del dirs
        for name in files:
            with contextlib.suppress(OSError):
                info = os.lstat(os.path.join(base, name))
                if stat.S_ISREG(info.st_mode):
                    total += info.st_size
    return total


def _copy_tree(src: Path, dst: Path, total: int, done: list[int], result: CopyResult,
               progress: BytesFn | None) -> None:
    """Regular files and directories copied, symbolic links recreated as they are (never
    followed), anything else skipped and named."""
    os.mkdir(dst, 0o700)
    with os.scandir(src) as items:
        children = sorted(items, key=lambda i: i.name)
    for item in children:
        source, target = Path(item.path), dst / item.name
        mode = os.lstat(source).st_mode
        if stat.S_ISDIR(mode):
            _copy_tree(source, target, total, done, result, progress)
        elif stat.S_ISREG(mode):
            _write_file(source, target, total, done, progress)
            result.files += 1
        elif stat.S_ISLNK(mode):
            os.symlink(os.readlink(source), target)
        else:
            result.skipped.append(f"{item.path} ({_kind(mode)})")
    info = os.lstat(src)
    os.chmod(dst, stat.S_IMODE(info.st_mode) & 0o777)
    os.utime(dst, ns=(info.st_atime_ns, info.st_mtime_ns))
    fsync_dir(dst)


def _remove(path: Path) -> None:
    import shutil

    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def copy_out(root: Path, guest_path: str, to_dir: Path, *, force: bool = False,
             progress: BytesFn | None = None) -> CopyResult:
    """Copy ``guest_path`` to ``to_dir/<its basename>`` atomically (a temporary name,
    fsync, rename); a directory is copied recursively."""
    src = resolve(root, guest_path)
    name = os.path.basename(guest_path.rstrip("/"))
    if not name or name == "..":
        name = src.name or "root"
    dst = to_dir / name
    if (dst.exists() or dst.is_symlink()) and not force:
        raise AlreadyExistsError(f"{dst} already exists", hint="give --force to replace it")
    mode = os.lstat(src).st_mode
    if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        raise _refuse(guest_path, f"is a {_kind(mode)}, not a file or directory "
                                  "(never opened)")
    tmp = to_dir / f".{name}.kvmops-restore-{os.getpid()}"
    _remove(tmp)
    done = [0]
    is_dir = stat.S_ISDIR(mode)
    result = CopyResult(path=str(dst), kind="dir" if is_dir else "file", files=0, bytes=0)
    try:
        if is_dir:
            total = _tree_size(src)
            _copy_tree(src, tmp, total, done, result, progress)
        else:
            total = os.lstat(src).st_size
            _write_file(src, tmp, total, done, progress)
            result.files = 1
        old = None
        if dst.is_dir() and not dst.is_symlink():  # rename cannot replace a directory
            old = to_dir / f".{name}.kvmops-replaced-{os.getpid()}"
            os.rename(dst, old)
        os.rename(tmp, dst)
        fsync_dir(to_dir)
        if old is not None:
            _remove(old)
    except BaseException:
        _remove(tmp)
        raise
    result.bytes = done[0]
    return result
