"""Where a store-backed repository's bytes live: a local directory, or a remote store.

An :class:`ObjectStore` holds objects under ``/``-separated relative keys
(``VM/backups/ID/vda.qcow2``); every write is atomic (a reader sees the old object or
the new one, whole). :class:`LocalStore` is a directory (temporary file, fsync, rename,
fsync of the directory). Remote backends register a URL scheme with
:func:`register_scheme` (``sftp``, ``s3``: :mod:`kvmops.backup.remote`), and
:func:`open_store` picks the backend from the URL; anything without a scheme is a
local directory.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import Protocol, runtime_checkable

from kvmops.backup.repository import fsync_dir
from kvmops.errors import NotFoundError, StorageError, UnsupportedError, ValidationError

Progress = Callable[[int, int], None]

_SCHEME = re.compile(r"^([a-z][a-z0-9+.-]*)://", re.IGNORECASE)
_COPY_BLOCK = 4 * 1024 * 1024


@runtime_checkable
class ObjectStore(Protocol):
    """The bytes of one repository (see the module's docstring)."""

    url: str  # for messages

    def list(self, prefix: str) -> list[str]:
        """Keys under ``prefix`` (a key prefix, '' for all), sorted."""
        ...

    def get_bytes(self, key: str) -> bytes:
        """The object's bytes; NotFoundError when missing."""
        ...

    def put_bytes(self, key: str, data: bytes) -> None:
        """Write the object atomically (old or new, whole)."""
        ...

    def get_file(self, key: str, dst: Path, progress: Progress | None = None) -> None:
        """Copy the object into ``dst`` (written atomically); NotFoundError when missing."""
        ...

    def put_file(self, key: str, src: Path, progress: Progress | None = None) -> None:
        """Upload ``src`` as the object, atomically; resumable where the backend can."""
        ...

    def delete(self, key: str) -> None:
        """Remove the object; a missing one is fine."""
        ...

    def size(self, key: str) -> int | None:
        """The object's size, None when missing."""
        ...

    def close(self) -> None:
        ...


_FACTORIES: dict[str, Callable[[str], ObjectStore]] = {}


def register_scheme(scheme: str, factory: Callable[[str], ObjectStore]) -> None:
    """Make ``open_store`` open ``SCHEME://...`` URLs with ``factory(url)``."""
    _FACTORIES[scheme.lower()] = factory


def url_scheme(text: str) -> str | None:
    match = _SCHEME.match(str(text))
    return match.group(1).lower() if match else None


def is_remote_url(text: str | os.PathLike[str]) -> bool:
    """Does ``text`` name a remote repository (``sftp://``, ``s3://``, any URL scheme)?"""
    scheme = url_scheme(str(text))
    return scheme is not None and scheme != "file"


def _load_remote_backends() -> None:
    """The remote backends register themselves when imported (they may not exist yet)."""
    with contextlib.suppress(ImportError):
        import kvmops.backup.remote  # noqa: F401


def open_store(url: str | os.PathLike[str]) -> ObjectStore:
    """The store for ``url``: a registered scheme's backend, or a local directory."""
    text = str(url)
    scheme = url_scheme(text)
    if scheme is None:
        return LocalStore(Path(text))
    if scheme == "file":
        return LocalStore(Path(text[len("file://"):]))
    if scheme not in _FACTORIES:
        _load_remote_backends()
    factory = _FACTORIES.get(scheme)
    if factory is None:
        known = ", ".join(sorted(_FACTORIES)) or "none"
        raise UnsupportedError(f"no repository backend for '{scheme}://' ({text})",
                               hint=f"remote schemes known here: {known}; or give a "
                                    "local directory")
    return factory(text)


def check_key(key: str) -> str:
    """A relative ``/``-separated key without ``..``, empty or absolute parts."""
    parts = key.split("/")
    if not key or key.startswith("/") or any(p in ("", ".", "..") for p in parts) \
            or "\x00" in key:
        raise ValidationError(f"invalid repository key '{key}'")
    return key


class LocalStore:
    """A directory as an object store: keys are relative paths below ``root``.

    Writes go to a hidden temporary file next to the object (``.NAME.tmp-PID``), are
    fsynced and renamed over it; the directory is fsynced after. Listing skips hidden
    files (temporaries, locks).
    """

    def __init__(self, root: Path) -> None:
        self.root = root.absolute()
        self.url = str(self.root)

    def path(self, key: str) -> Path:
        """Where ``key`` lies on disk (callers that can write into it directly)."""
        return self.root / PurePosixPath(check_key(key))

    def tmp_path(self, key: str) -> Path:
        """A temporary file for ``key``, next to it (its directory created): write it,
        then :meth:`commit` it."""
        final = self.path(key)
        try:
            final.parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise StorageError(f"cannot create {final.parent}: {err.strerror}") from err
        return final.with_name(f".{final.name}.tmp-{os.getpid()}")

    def commit(self, tmp: Path, key: str) -> None:
        """fsync ``tmp`` and rename it into ``key`` (then fsync the directory)."""
        final = self.path(key)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, final)
        fsync_dir(final.parent)

    # ------------------------------------------------------------ the protocol
    def list(self, prefix: str) -> list[str]:
        if not self.root.is_dir():
            return []
        start = self.root
        if prefix:
            head = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
            start = self.root / PurePosixPath(head) if head else self.root
            if not start.is_dir():
                return []
        found: list[str] = []
        for directory, dirs, files in os.walk(start):
            dirs[:] = [d for d in dirs if not d.startswith(".")]
            base = Path(directory)
            for name in files:
                if name.startswith("."):
                    continue
                key = (base / name).relative_to(self.root).as_posix()
                if key.startswith(prefix):
                    found.append(key)
        return sorted(found)

    def get_bytes(self, key: str) -> bytes:
        path = self.path(key)
        try:
            return path.read_bytes()
        except FileNotFoundError as err:
            raise NotFoundError(f"{path} does not exist") from err
        except OSError as err:
            raise StorageError(f"cannot read {path}: {err.strerror}") from err

    def put_bytes(self, key: str, data: bytes) -> None:
        tmp = self.tmp_path(key)
        try:
            with open(tmp, "wb") as fh:
                fh.write(data)
            self.commit(tmp, key)
        except OSError as err:
            raise StorageError(f"cannot write {self.path(key)}: {err.strerror}") from err
        finally:
            tmp.unlink(missing_ok=True)

    def get_file(self, key: str, dst: Path, progress: Progress | None = None) -> None:
        src = self.path(key)
        if not src.is_file():
            raise NotFoundError(f"{src} does not exist")
        _copy(src, dst, progress)

    def put_file(self, key: str, src: Path, progress: Progress | None = None) -> None:
        tmp = self.tmp_path(key)
        try:
            _copy(src, tmp, progress, atomic=False)
            self.commit(tmp, key)
        except OSError as err:
            raise StorageError(f"cannot write {self.path(key)}: {err.strerror}") from err
        finally:
            tmp.unlink(missing_ok=True)

    def delete(self, key: str) -> None:
        path = self.path(key)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        # Empty directories left behind (VM/backups/ID) go too, up to the root.
        parent = path.parent
        while parent != self.root and parent.is_relative_to(self.root):
            try:
                parent.rmdir()
            except OSError:
                break
            parent = parent.parent

    def size(self, key: str) -> int | None:
        try:
            return self.path(key).stat().st_size
        except FileNotFoundError:
            return None

    def close(self) -> None:
        pass


def _copy(src: Path, dst: Path, progress: Progress | None, *, atomic: bool = True) -> None:
    """Copy ``src`` to ``dst`` (through a temporary file and rename when ``atomic``)."""
    total = src.stat().st_size
    out = dst.with_name(f".{dst.name}.tmp-{os.getpid()}") if atomic else dst
    try:
        with open(src, "rb") as fin, open(out, "wb") as fout:
            if progress is None:
                shutil.copyfileobj(fin, fout, _COPY_BLOCK)
            else:
                done = 0
                while block := fin.read(_COPY_BLOCK):
                    fout.write(block)
                    done += len(block)
                    progress(done, total)
            fout.flush()
            os.fsync(fout.fileno())
        if atomic:
            os.replace(out, dst)
    finally:
        if atomic:
            out.unlink(missing_ok=True)
