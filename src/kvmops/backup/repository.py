"""The on-disk backup repository.

Layout, per VM::

    REPO/VM/lock                         flock: one writer (backup, prune) at a time
    REPO/VM/backups/ID/manifest.json     published backups (complete)
    REPO/VM/backups/ID/vda.qcow2         backing file: ../PARENT/vda.qcow2 (relative)
    REPO/VM/backups/.partial-ID/         a backup being written; never listed as complete
    REPO/VM/checkpoints/NAME.xml         libvirt checkpoint XML, to redefine lost metadata

A backup is written under ``.partial-ID``, every file fsynced, the manifest
written last, then the directory is renamed to ``ID`` and the parent fsynced:
a crash at any point leaves either no backup or a complete one. Relative
backing links keep the repository valid when moved or copied.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import shutil
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from kvmops.backup.model import Manifest
from kvmops.errors import NotFoundError, StateError, StorageError

PARTIAL_PREFIX = ".partial-"
MANIFEST = "manifest.json"


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


HASH_PIECE = 64 * 1024 * 1024
HASH_SCHEME = "sha256-64m"


def _piece_digest(path: Path, offset: int, length: int, block: int = 4 * 1024 * 1024
                  ) -> bytes:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        fh.seek(offset)
        while length > 0:
            data = fh.read(min(block, length))
            if not data:
                break
            digest.update(data)
            length -= len(data)
    return digest.digest()


def sha256_file(path: Path) -> str:
    """``sha256-64m:HEX``: sha256 over the file size and the sha256 of each 64 MiB piece.

    A plain sha256 is one serial pass on one core and was a third of a full backup's
    time; the pieces are hashed on every core (hashlib releases the GIL), and any
    changed byte still changes the result.
    """
    size = os.path.getsize(path)
    pieces = [(offset, min(HASH_PIECE, size - offset))
              for offset in range(0, size, HASH_PIECE)]
    with ThreadPoolExecutor(max_workers=max(1, min(len(pieces), os.cpu_count() or 1))
                            ) as pool:
        digests = list(pool.map(lambda piece: _piece_digest(path, *piece), pieces))
    top = hashlib.sha256(size.to_bytes(8, "big") + b"".join(digests)).hexdigest()
    return f"{HASH_SCHEME}:{top}"


class Repository:
    """A backup repository directory holding any number of VMs."""

    def __init__(self, root: Path) -> None:
        self.root = root.absolute()

    def vm_dir(self, vm: str) -> Path:
        return self.root / vm

    def backups_dir(self, vm: str) -> Path:
        return self.vm_dir(vm) / "backups"

    def checkpoints_dir(self, vm: str) -> Path:
        return self.vm_dir(vm) / "checkpoints"

    def vms(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if (p / "backups").is_dir())

    # ------------------------------------------------------------ reading
    def manifests(self, vm: str) -> list[Manifest]:
        """Published backups, oldest first (partial ones are never returned)."""
        base = self.backups_dir(vm)
        if not base.is_dir():
            return []
        found = []
        for entry in sorted(base.iterdir()):
            if entry.name.startswith(".") or not (entry / MANIFEST).is_file():
                continue
            found.append(self.load(entry / MANIFEST))
        return sorted(found, key=lambda m: m.id)

    def partials(self, vm: str) -> list[Path]:
        base = self.backups_dir(vm)
        return sorted(base.glob(f"{PARTIAL_PREFIX}*")) if base.is_dir() else []

    @staticmethod
    def load(path: Path) -> Manifest:
        try:
            return Manifest.model_validate_json(path.read_text())
        except (OSError, ValueError) as err:
            raise StorageError(f"unreadable backup manifest {path}: {err}",
                               hint="run 'kvmops backup verify'") from err

    def backup_dir(self, vm: str, backup_id: str) -> Path:
        path = self.backups_dir(vm) / backup_id
        if not (path / MANIFEST).is_file():
            raise NotFoundError(f"backup {backup_id} of VM '{vm}' not found in {self.root}")
        return path

    # ------------------------------------------------------------ writing
    @contextlib.contextmanager
    def lock(self, vm: str, action: str) -> Iterator[None]:
        """Exclusive per-VM lock; a second writer is refused at once, not queued."""
        vm_dir = self.vm_dir(vm)
        try:
            vm_dir.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise StorageError(f"cannot create backup repository {vm_dir}: {err.strerror}",
                               hint="check the path and its permissions") from err
        fd = os.open(vm_dir / "lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as err:
                if err.errno in (errno.EAGAIN, errno.EWOULDBLOCK):
                    holder = os.pread(fd, 200, 0).decode(errors="replace").strip()
                    raise StateError(
                        f"another kvmops operation on VM '{vm}' holds the repository lock "
                        f"in {self.root}" + (f" ({holder})" if holder else ""),
                        hint="wait for it to finish, or see 'kvmops backup jobs'",
                    ) from err
                raise
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{action} by pid {os.getpid()}\n".encode(), 0)
            yield
        finally:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
            os.close(fd)

    def start_partial(self, vm: str, backup_id: str) -> Path:
        base = self.backups_dir(vm)
        base.mkdir(parents=True, exist_ok=True)
        # QEMU (libvirt-qemu) writes push-mode targets itself.
        for directory in (self.root, self.vm_dir(vm), base):
            with contextlib.suppress(OSError):
                directory.chmod(directory.stat().st_mode | 0o711)
        partial = base / f"{PARTIAL_PREFIX}{backup_id}"
        partial.mkdir()
        partial.chmod(0o777)
        return partial

    def publish(self, vm: str, partial: Path, manifest: Manifest) -> Path:
        """fsync every file, write the manifest, then rename into place."""
        for child in partial.iterdir():
            fsync_file(child)
            child.chmod(0o644)
        partial.chmod(0o755)
        atomic_write(partial / MANIFEST, manifest.model_dump_json(indent=2))
        final = self.backups_dir(vm) / manifest.id
        os.rename(partial, final)
        fsync_dir(final.parent)
        return final

    def discard_partial(self, partial: Path) -> None:
        shutil.rmtree(partial, ignore_errors=True)

    def save_checkpoint_xml(self, vm: str, name: str, xml: str) -> None:
        directory = self.checkpoints_dir(vm)
        directory.mkdir(parents=True, exist_ok=True)
        atomic_write(directory / f"{name}.xml", xml)

    def checkpoint_xml(self, vm: str, name: str) -> str | None:
        path = self.checkpoints_dir(vm) / f"{name}.xml"
        return path.read_text() if path.is_file() else None

    def remove_checkpoint_xml(self, vm: str, name: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            (self.checkpoints_dir(vm) / f"{name}.xml").unlink()


def write_json(path: Path, value: object) -> None:
    atomic_write(path, json.dumps(value, indent=2))
