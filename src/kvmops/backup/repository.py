"""The on-disk backup repository.

Layout, per VM::

    REPO/VM/lock                         flock: one writer (backup, prune) at a time
    REPO/VM/backups/ID/manifest.json     published backups (complete)
    REPO/VM/backups/ID/vda.qcow2         backing file: ../PARENT/vda.qcow2 (relative)
    REPO/VM/backups/.partial-ID/         a backup being written; never listed as complete
    REPO/VM/checkpoints/NAME.xml         libvirt checkpoint XML, to redefine lost metadata
    ....json.hmac / ....xml.hmac         authentication of manifests and checkpoint XML

A backup is written under ``.partial-ID``, every file fsynced, the manifest
written last, then the directory is renamed to ``ID`` and the parent fsynced:
a crash at any point leaves either no backup or a complete one. Relative
backing links keep the repository valid when moved or copied.

Manifests and checkpoint XML are authenticated (:mod:`kvmops.backup.keys`): a
repository is storage someone else may have written to, so nothing in it is
trusted unless its HMAC matches. :meth:`Repository.manifests` returns only
authenticated manifests; :meth:`Repository.scan` also names the rejected ones.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import re
import secrets
import shutil
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import blake3

from kvmops.backup.keys import Keyring, Signature
from kvmops.backup.model import Manifest
from kvmops.errors import (
    KeyRequiredError,
    KvmopsError,
    NotFoundError,
    StateError,
    StorageError,
    TamperedError,
)

PARTIAL_PREFIX = ".partial-"
MANIFEST = "manifest.json"
SIG_SUFFIX = ".hmac"
IDENTITY = "kvmops-repository.json"
_REPO_ID = re.compile(r"^[0-9a-f]{8}$")


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


def atomic_write(path: Path, data: str, *, sync_dir: bool = True) -> None:
    """``data`` into ``path`` through a fsynced temporary file renamed over it; the
    directory is fsynced too unless the caller does it once for several files."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    if sync_dir:
        fsync_dir(path.parent)


HASH_PIECE = 64 * 1024 * 1024
HASH_SCHEME = "blake3"  # what new manifests record (``blake3:HEX``)
OLD_HASH_SCHEMES = ("sha256-64m", "sha256")  # still checked: manifests written before


def _piece_digest(path: Path, offset: int, length: int, block: int = 4 * 1024 * 1024
                  ) -> bytes:
    digest = hashlib.sha256()
    buffer = bytearray(block)
    view = memoryview(buffer)
    with open(path, "rb", buffering=0) as fh:
        fh.seek(offset)
        while length > 0:
            got = fh.readinto(view[:min(block, length)])
            if not got:
                break
            digest.update(view[:got])
            length -= got
    return digest.digest()


def sha256_64m_file(path: Path) -> str:
    """``sha256-64m:HEX``: sha256 over the file size and the sha256 of each 64 MiB piece
    (the scheme of manifests written before ``blake3``; pieces hashed on every core)."""
    size = os.path.getsize(path)
    pieces = [(offset, min(HASH_PIECE, size - offset))
              for offset in range(0, size, HASH_PIECE)]
    with ThreadPoolExecutor(max_workers=max(1, min(len(pieces), os.cpu_count() or 1))
                            ) as pool:
        digests = list(pool.map(lambda piece: _piece_digest(path, *piece), pieces))
    top = hashlib.sha256(size.to_bytes(8, "big") + b"".join(digests)).hexdigest()
    return f"sha256-64m:{top}"


def blake3_file(path: Path) -> str:
    """``blake3:HEX``: the BLAKE3 hash of the file's bytes.

    The hash of every backup file is computed after QEMU wrote it, on the backup's
    critical path: sha256 (even in 64 MiB pieces on every core) was a fifth to a third of
    a full backup's time; BLAKE3 (SIMD, memory-mapped, its own threads without the GIL)
    reads the file at several times that rate with the same collision resistance.
    """
    if os.path.getsize(path) == 0:
        return f"{HASH_SCHEME}:{blake3.blake3().hexdigest()}"
    hasher = blake3.blake3(max_threads=blake3.blake3.AUTO)
    hasher.update_mmap(path)
    return f"{HASH_SCHEME}:{hasher.hexdigest()}"


def sha256_file(path: Path) -> str:
    """The file's checksum in the current scheme (:data:`HASH_SCHEME`), as manifests
    record it (the name is the historical one; see :func:`file_digest`)."""
    return blake3_file(path)


file_digest = sha256_file


def digest_matches(path: Path, recorded: str) -> bool:
    """Does the file still hash to ``recorded``, in the scheme ``recorded`` names
    (``blake3:``, ``sha256-64m:``, or a bare sha256 hex digest of old manifests)?"""
    scheme, _, value = recorded.partition(":")
    if not value:  # a bare hex digest: plain sha256 of the whole file
        whole = hashlib.sha256()
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(4 * 1024 * 1024), b""):
                whole.update(chunk)
        return whole.hexdigest() == recorded
    if scheme == HASH_SCHEME:
        return blake3_file(path) == recorded
    if scheme == "sha256-64m":
        return sha256_64m_file(path) == recorded
    return False


@contextlib.contextmanager
def identity_lock(root: Path) -> Iterator[None]:
    """Made the repository directory ``root``; held, two first backups into it make one
    identity."""
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise StorageError(f"cannot create backup repository {root}: "
                           f"{err.strerror}") from err
    fd = os.open(root / ".identity.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def check_signature(keyring: Keyring, place: str, data: bytes, signature: Signature,
                    where: Path | str) -> None:
    """TamperedError unless ``signature`` authenticates ``data`` stored at ``place``."""
    problem = keyring.check(place, data, signature)
    if problem:
        raise TamperedError(f"{where} failed authentication: {problem}",
                            hint="it is never used; run 'kvmops backup verify'")


def parse_manifest(data: bytes, vm: str, backup_id: str, where: Path | str) -> Manifest:
    """The manifest in authenticated ``data``, which must describe where it lies."""
    try:
        manifest = Manifest.model_validate_json(data)
    except ValueError as err:
        raise StorageError(f"unreadable backup manifest {where}: {err}",
                           hint="run 'kvmops backup verify'") from err
    if manifest.vm != vm or manifest.id != backup_id:
        raise TamperedError(f"manifest {where} describes backup {manifest.id} of VM "
                            f"'{manifest.vm}', not where it lies")
    return manifest


@dataclass(frozen=True)
class Rejected:
    """A published backup whose manifest failed authentication (never used)."""

    vm: str
    backup_id: str
    reason: str


# A disk record's digest left for ``publish`` to fill (see Repository.digests_in_publish).
DIGEST_PENDING = ""


class Repository:
    """A backup repository directory holding any number of VMs."""

    # Whether publish() computes the data files' digests itself (finish_files then leaves
    # them DIGEST_PENDING): a store-backed repository hashes while it seals.
    digests_in_publish = False

    def __init__(self, root: Path, keyring: Keyring | None = None) -> None:
        self.root = root.absolute()
        self.keyring = keyring or Keyring()

    def identity(self) -> str:
        """The repository's identity (8 hex digits, made on first use): it prefixes the
        names of the checkpoints its backups create, so each repository recognises and
        deletes only its own."""
        path = self.root / IDENTITY
        if not path.exists():
            with identity_lock(self.root):
                if not path.exists():
                    self.write_signed(path, json.dumps({"id": secrets.token_hex(4)}) + "\n")
        try:
            value = json.loads(self.read_signed(path)).get("id")
        except (ValueError, AttributeError) as err:
            raise TamperedError(f"repository identity {path} is unreadable") from err
        if not isinstance(value, str) or not _REPO_ID.match(value):
            raise TamperedError(f"repository identity {path} is not valid")
        return value

    @property
    def location(self) -> str:
        """The repository as the user names it (a directory, or a store's URL)."""
        return str(self.root)

    def exists(self) -> bool:
        return self.root.is_dir()

    def vm_dir(self, vm: str) -> Path:
        return self.root / vm

    def backups_dir(self, vm: str) -> Path:
        return self.vm_dir(vm) / "backups"

    def checkpoints_dir(self, vm: str) -> Path:
        return self.vm_dir(vm) / "checkpoints"

    def vms(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir()
                      if p.is_dir() and (p / "backups").is_dir())

    # ------------------------------------------------------------ authentication
    def place(self, path: Path) -> str:
        """Where a file sits in the repository, as signed (``VM/backups/ID/manifest.json``)."""
        return path.relative_to(self.root).as_posix()

    def write_signed(self, path: Path, data: str, place: str | None = None) -> None:
        """Write ``data`` and its signature atomically; ``place`` is where the file will
        end up when it is written in a staging directory renamed later."""
        signature = self.keyring.sign(place or self.place(path), data.encode())
        atomic_write(path, data, sync_dir=False)
        atomic_write(path.with_name(path.name + SIG_SUFFIX), signature.to_json(),
                     sync_dir=False)
        fsync_dir(path.parent)  # both names at once

    def read_signed(self, path: Path) -> bytes:
        """The file's bytes, or TamperedError when its signature is missing or wrong."""
        try:
            data = path.read_bytes()
        except FileNotFoundError as err:
            raise NotFoundError(f"{path} does not exist") from err
        except OSError as err:
            raise StorageError(f"cannot read {path}: {err.strerror}") from err
        sig_path = path.with_name(path.name + SIG_SUFFIX)
        try:
            signature = Signature.parse(sig_path.read_text())
        except FileNotFoundError:
            raise TamperedError(f"{path} is not signed: it was not written by this kvmops",
                                hint="never trusted; if you wrote it with an older kvmops, "
                                     "adopt it with 'kvmops backup key adopt'") from None
        except (OSError, KvmopsError) as err:
            raise TamperedError(f"the signature of {path} is unreadable: {err}") from err
        check_signature(self.keyring, self.place(path), data, signature, path)
        return data

    # ------------------------------------------------------------ reading
    def backup_ids(self, vm: str) -> list[str]:
        """Ids of the published backups of ``vm`` (directories holding a manifest)."""
        base = self.backups_dir(vm)
        if not base.is_dir():
            return []
        return [entry.name for entry in sorted(base.iterdir())
                if not entry.name.startswith(".") and (entry / MANIFEST).is_file()]

    def scan(self, vm: str) -> tuple[list[Manifest], list[Rejected]]:
        """Published backups, oldest first, and those whose manifest was rejected (a
        missing repository key is raised: it rejects nothing)."""
        found: list[Manifest] = []
        rejected: list[Rejected] = []
        for backup_id in self.backup_ids(vm):
            try:
                found.append(self.load(vm, backup_id))
            except KeyRequiredError:
                raise
            except KvmopsError as err:
                rejected.append(Rejected(vm, backup_id, err.message))
        return sorted(found, key=lambda m: m.id), rejected

    def manifests(self, vm: str) -> list[Manifest]:
        """Authenticated published backups, oldest first (partial and rejected ones are
        never returned)."""
        return self.scan(vm)[0]

    def partials(self, vm: str) -> list[Path]:
        base = self.backups_dir(vm)
        return sorted(base.glob(f"{PARTIAL_PREFIX}*")) if base.is_dir() else []

    def load(self, vm: str, backup_id: str) -> Manifest:
        """One authenticated manifest (TamperedError if it fails)."""
        path = self.backups_dir(vm) / backup_id / MANIFEST
        return parse_manifest(self.read_signed(path), vm, backup_id, path)

    def write_manifest(self, directory: Path, manifest: Manifest) -> None:
        """Write (and sign) ``manifest`` into ``directory``, to be published as its id."""
        place = f"{manifest.vm}/backups/{manifest.id}/{MANIFEST}"
        self.write_signed(directory / MANIFEST, manifest.model_dump_json(indent=2), place)

    def has_file(self, vm: str, backup_id: str, name: str) -> bool:
        """Does backup ``backup_id`` hold the file ``name`` (a parent of an incremental)?"""
        return (self.backups_dir(vm) / backup_id / name).is_file()

    @contextlib.contextmanager
    def local_chains(self, vm: str, point: Manifest, by_id: dict[str, Manifest],
                     targets: Iterable[str]) -> Iterator[Repository]:
        """A repository whose files of ``targets``' chains at ``point`` are local: this
        one (a store-backed repository opens them into a temporary directory)."""
        del vm, point, by_id, targets
        yield self

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

    def start_partial(self, vm: str, backup_id: str, work_bytes: int | None = None) -> Path:
        """The directory a backup is written into; ``work_bytes`` (the most it may take)
        lets a store-backed repository put it in memory."""
        partial = self.partial_path(vm, backup_id)
        partial.mkdir()
        partial.chmod(0o777)
        return partial

    def partial_path(self, vm: str, backup_id: str) -> Path:
        """Where backup ``backup_id``'s partial directory goes (its parents made, and
        traversable: QEMU, as libvirt-qemu, writes push-mode targets itself)."""
        base = self.backups_dir(vm)
        base.mkdir(parents=True, exist_ok=True)
        for directory in (self.root, self.vm_dir(vm), base):
            with contextlib.suppress(OSError):
                directory.chmod(directory.stat().st_mode | 0o711)
        return base / f"{PARTIAL_PREFIX}{backup_id}"

    def publish(self, vm: str, partial: Path, manifest: Manifest) -> Path:
        """fsync every file, write the manifest, then rename into place."""
        for disk in manifest.disks:  # never written pending
            if disk.sha256 == DIGEST_PENDING:
                disk.sha256 = sha256_file(partial / disk.file)
        for child in partial.iterdir():
            fsync_file(child)
            child.chmod(0o644)
        partial.chmod(0o755)
        self.write_manifest(partial, manifest)
        final = self.backups_dir(vm) / manifest.id
        os.rename(partial, final)
        fsync_dir(final.parent)
        return final

    def discard_partial(self, partial: Path) -> None:
        shutil.rmtree(partial, ignore_errors=True)

    def save_checkpoint_xml(self, vm: str, name: str, xml: str) -> None:
        directory = self.checkpoints_dir(vm)
        directory.mkdir(parents=True, exist_ok=True)
        self.write_signed(directory / f"{name}.xml", xml)

    def checkpoint_xml(self, vm: str, name: str) -> str | None:
        """The saved checkpoint XML; None when missing or when it fails authentication
        (it is then never redefined into libvirt)."""
        path = self.checkpoints_dir(vm) / f"{name}.xml"
        if not path.is_file():
            return None
        try:
            return self.read_signed(path).decode()
        except (KvmopsError, UnicodeDecodeError):
            return None

    def remove_checkpoint_xml(self, vm: str, name: str) -> None:
        for suffix in ("", SIG_SUFFIX):
            with contextlib.suppress(FileNotFoundError):
                (self.checkpoints_dir(vm) / f"{name}.xml{suffix}").unlink()


def write_json(path: Path, value: object) -> None:
    atomic_write(path, json.dumps(value, indent=2))


def signed_files(repo: Repository) -> list[Path]:
    """Every file of the repository that carries (or should carry) a signature."""
    found: list[Path] = [repo.root / IDENTITY] if (repo.root / IDENTITY).is_file() else []
    for vm in repo.vms():
        base = repo.backups_dir(vm)
        found += sorted(p / MANIFEST for p in base.iterdir()
                        if not p.name.startswith(".") and (p / MANIFEST).is_file())
        checkpoints = repo.checkpoints_dir(vm)
        if checkpoints.is_dir():
            found += sorted(checkpoints.glob("*.xml"))
    return found


def resign(repo: Repository, *, adopt_unsigned: bool = False) -> tuple[int, list[str]]:
    """Re-sign every authentic file with the current key (after a rotation); with
    ``adopt_unsigned`` also sign files that carry no signature at all (an admin's
    decision that they are genuine). Files whose signature fails are never signed.
    Returns the number signed and the problems found."""
    signed = 0
    problems: list[str] = []
    for path in signed_files(repo):
        sig_path = path.with_name(path.name + SIG_SUFFIX)
        try:
            data = repo.read_signed(path)
        except TamperedError as err:
            if not (adopt_unsigned and not sig_path.exists()):
                problems.append(err.message)
                continue
            data = path.read_bytes()
        # The bytes stay as they are (a sealed repository's are binary): a new sidecar.
        atomic_write(sig_path, repo.keyring.sign(repo.place(path), data).to_json())
        signed += 1
    return signed, problems
