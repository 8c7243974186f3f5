"""Store-backed repositories: compressed (zstd), encrypted (AES-256-GCM) or remote.

A repository is *store-backed* when its identity (``kvmops-repository.json``, signed
with the installation's manifest key) names a compression or an encryption, or when it
is remote (``sftp://``, ``s3://``). Its bytes live in an :class:`ObjectStore`
(:mod:`kvmops.backup.store`) with the plain layout's keys, each file sealed
(:mod:`kvmops.backup.seal`) for its place::

    kvmops-repository.json (+ .hmac)          id, format, compress, encryption (clear)
    VM/backups/ID/vda.qcow2                   sealed qcow2 (backing ../PARENT/vda.qcow2)
    VM/backups/ID/manifest.json (+ .hmac)     sealed manifest; HMAC over the stored bytes
    VM/checkpoints/NAME.xml (+ .hmac)         sealed checkpoint XML

The engines do not change: they write their qcow2 chain into a local *work directory*
(``settings().backup_work_dir / REPO-ID``, plain :class:`Repository` layout) that QEMU
can reach. :meth:`StoreRepository.publish` seals every data file into the store, then
the manifest (HMAC sidecar first, manifest last: a backup is listed only once whole),
then removes the plaintext from the work directory. Reading goes through the store:
manifests are authenticated (HMAC) and opened (AEAD); data files are fetched and opened
into a temporary directory only when restore, verify or prune needs them.

A plain local repository stays a plain :class:`Repository` (no change, no cost).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kvmops.backup import ramwork, repokey
from kvmops.backup.keys import Keyring, Signature
from kvmops.backup.model import Manifest, disk_chain
from kvmops.backup.repository import (
    _REPO_ID,
    DIGEST_PENDING,
    IDENTITY,
    MANIFEST,
    SIG_SUFFIX,
    Repository,
    check_signature,
    digest_matches,
    identity_lock,
    parse_manifest,
    sha256_file,
)
from kvmops.backup.seal import (
    Sealing,
    check_sealed,
    seal_bytes,
    seal_file,
    unseal_bytes,
    unseal_file,
)
from kvmops.backup.store import LocalStore, ObjectStore, is_remote_url, open_store
from kvmops.config import settings
from kvmops.errors import (
    KeyRequiredError,
    KvmopsError,
    NotFoundError,
    StorageError,
    TamperedError,
    ValidationError,
)

if TYPE_CHECKING:
    from kvmops.backup.retention import PruneResult, RetentionPolicy

FORMAT = 2  # store-backed (sealed files); a plain repository's identity has no format
PENDING = "manifest.pending"  # a prune's rewritten manifest until its files are in place
DEFAULT_ZSTD_LEVEL = 3
_ZSTD = re.compile(r"^zstd(?::(\d{1,2}))?$")
_MANIFEST_KEY = re.compile(r"^([^/]+)/backups/([^/.][^/]*)/manifest\.json$")

ProgressFn = Callable[[int, int], None]
CheckFn = Callable[[Repository, str, Manifest, str, dict[str, Manifest], bool], "str | None"]


# ---------------------------------------------------------------- options
def parse_compress(value: bool | str | None) -> tuple[bool, str | None]:
    """``--compress``: (qcow2 zlib compression, zstd spec ``zstd:LEVEL``).

    ``True``/``"qcow2"`` is the old qcow2 compression of the backup files; ``"zstd"`` or
    ``"zstd:N"`` (1..19) makes the repository zstd-compressed.
    """
    if value is None or value is False or value == "":
        return False, None
    if value is True or value in ("qcow2", "zlib"):
        return True, None
    match = _ZSTD.match(str(value).strip().lower())
    if not match:
        raise ValidationError(f"unknown compression '{value}'",
                              hint="use --compress zstd[:LEVEL] (LEVEL 1..19), or bare "
                                   "--compress for qcow2's own compression")
    level = int(match.group(1) or DEFAULT_ZSTD_LEVEL)
    if not 1 <= level <= 19:
        raise ValidationError(f"zstd level {level} is out of range", hint="use 1..19")
    return False, f"zstd:{level}"


def zstd_level(spec: str | None) -> int | None:
    if not spec:
        return None
    match = _ZSTD.match(spec)
    if not match:
        raise TamperedError(f"repository compression '{spec}' is not one kvmops writes")
    return int(match.group(1) or DEFAULT_ZSTD_LEVEL)


@dataclass(frozen=True)
class RepoConfig:
    """What a repository's identity file says."""

    id: str
    compress: str | None = None  # "zstd:3"
    encryption: dict[str, Any] | None = None  # repokey's block
    format: int | None = None

    @property
    def sealed(self) -> bool:
        return bool(self.compress or self.encryption)

    @classmethod
    def parse(cls, data: bytes, where: str) -> RepoConfig:
        try:
            value = json.loads(data)
        except ValueError as err:
            raise TamperedError(f"repository identity {where} is unreadable") from err
        if not isinstance(value, dict):
            raise TamperedError(f"repository identity {where} is not valid")
        ident = value.get("id")
        compress = value.get("compress")
        encryption = value.get("encryption")
        fmt = value.get("format")
        if not isinstance(ident, str) or not _REPO_ID.match(ident) \
                or not (compress is None or isinstance(compress, str)) \
                or not (encryption is None or isinstance(encryption, dict)) \
                or not (fmt is None or isinstance(fmt, int)):
            raise TamperedError(f"repository identity {where} is not valid")
        if fmt is not None and fmt > FORMAT:
            raise ValidationError(f"repository {where} has format {fmt}, newer than this "
                                  "kvmops knows", hint="upgrade kvmops")
        zstd_level(compress)
        return cls(ident, compress, encryption, fmt)

    def to_json(self) -> str:
        value: dict[str, Any] = {"id": self.id}
        if self.sealed or self.format:
            value.update(format=self.format or FORMAT, compress=self.compress,
                         encryption=self.encryption)
        return json.dumps(value, indent=2) + "\n"


# ---------------------------------------------------------------- signed objects
def read_signed_object(store: ObjectStore, keyring: Keyring, key: str) -> bytes:
    """An object's stored bytes after its HMAC sidecar (over ``key`` and the bytes)."""
    where = f"{store.url}/{key}"
    try:
        data = store.get_bytes(key)
    except NotFoundError as err:
        raise NotFoundError(f"{where} does not exist") from err
    try:
        signature = Signature.parse(store.get_bytes(key + SIG_SUFFIX).decode())
    except NotFoundError:
        raise TamperedError(f"{where} is not signed: it was not written by this kvmops",
                            hint="it is never used") from None
    except (KvmopsError, UnicodeDecodeError) as err:
        raise TamperedError(f"the signature of {where} is unreadable: {err}") from err
    check_signature(keyring, key, data, signature, where)
    return data


def write_signed_object(store: ObjectStore, keyring: Keyring, key: str, data: bytes) -> None:
    """The HMAC sidecar first, the object last (the object is only seen when whole)."""
    store.put_bytes(key + SIG_SUFFIX, keyring.sign(key, data).to_json().encode())
    store.put_bytes(key, data)


def read_config(store: ObjectStore, keyring: Keyring) -> RepoConfig | None:
    """The repository's identity, authenticated; None when there is none yet."""
    if store.size(IDENTITY) is None:
        return None
    return RepoConfig.parse(read_signed_object(store, keyring, IDENTITY),
                            f"{store.url}/{IDENTITY}")


# ---------------------------------------------------------------- the repository
def _secret(key_file: Path | str | None, passphrase: str | None) -> bytes:
    return repokey.read_secret(Path(key_file) if key_file else None, passphrase)


def unlock(config: RepoConfig, where: str, key_file: Path | str | None,
           passphrase: str | None) -> Sealing:
    """The sealing of a repository: its data key unwrapped with the caller's secret."""
    key = None
    if config.encryption is not None:
        if key_file is None and passphrase is None:
            raise KeyRequiredError(f"repository {where} is encrypted: its key is needed",
                                   hint="give --key-file FILE (or --passphrase-stdin)")
        key = repokey.unlock(config.encryption, _secret(key_file, passphrase), where)
    return Sealing(compress_level=zstd_level(config.compress), key=key)


class StoreRepository(Repository):
    """A repository whose files live sealed in a store (see the module's docstring).

    ``root`` is the local work directory: the engines' partial backups, the per-VM
    locks, and temporary directories of opened files. ``location`` names the
    repository in messages (the directory or URL the user gave).
    """

    digests_in_publish = True  # hashed while sealed (see publish)

    def __init__(self, store: ObjectStore, config: RepoConfig, sealing: Sealing, *,
                 keyring: Keyring | None = None, work_dir: Path | None = None) -> None:
        super().__init__((work_dir or settings().backup_work_dir) / config.id, keyring)
        self.store = store
        self.config = config
        self.sealing = sealing

    @property
    def location(self) -> str:
        return self.store.url

    def exists(self) -> bool:
        return True

    def identity(self) -> str:
        return self.config.id

    # ------------------------------------------------------------ objects
    def read_object(self, key: str) -> bytes:
        """A small object (manifest, checkpoint XML): HMAC checked, then opened."""
        blob = read_signed_object(self.store, self.keyring, key)
        return blob if self.sealing.plain else unseal_bytes(blob, self.sealing, key)

    def write_object(self, key: str, data: bytes) -> None:
        blob = data if self.sealing.plain else seal_bytes(data, self.sealing, key)
        write_signed_object(self.store, self.keyring, key, blob)

    def delete_object(self, key: str) -> None:
        """The object first (no longer seen), then its sidecar."""
        self.store.delete(key)
        self.store.delete(key + SIG_SUFFIX)

    def put_data(self, src: Path, key: str, progress: ProgressFn | None = None) -> None:
        """Seal a local file into the store at ``key`` (atomic)."""
        if self.sealing.plain:
            self.store.put_file(key, src, progress)
            return
        if isinstance(self.store, LocalStore):
            dst = self.store.path(key)
            dst.parent.mkdir(parents=True, exist_ok=True)
            seal_file(src, dst, self.sealing, key, progress=progress)
            return
        with self.scratch() as tmp:
            sealed = tmp / "sealed"
            seal_file(src, sealed, self.sealing, key)
            self.store.put_file(key, sealed, progress)

    def get_data(self, key: str, dst: Path, progress: ProgressFn | None = None, *,
                 durable: bool = True) -> None:
        """Fetch and open ``key`` into ``dst`` (every frame authenticated); ``durable``:
        fsynced (a copy a VM runs on), not for a scratch copy read once."""
        if self.sealing.plain:
            self.store.get_file(key, dst, progress)
            return
        if isinstance(self.store, LocalStore):
            src = self.store.path(key)
            if not src.is_file():
                raise NotFoundError(f"{self.store.url}/{key} does not exist")
            unseal_file(src, dst, self.sealing, key, progress=progress, durable=durable)
            return
        with self.scratch() as tmp:
            sealed = tmp / "sealed"
            self.store.get_file(key, sealed, progress)
            unseal_file(sealed, dst, self.sealing, key, durable=durable)

    def check_data(self, key: str) -> None:
        """Authenticate every frame of a stored data file without keeping the plaintext."""
        if isinstance(self.store, LocalStore):
            src = self.store.path(key)
            if not src.is_file():
                raise NotFoundError(f"{self.store.url}/{key} does not exist")
            check_sealed(src, self.sealing, key)
            return
        with self.scratch() as tmp:
            self.store.get_file(key, tmp / "sealed")
            check_sealed(tmp / "sealed", self.sealing, key)

    @contextlib.contextmanager
    def scratch(self) -> Iterator[Path]:
        """A private temporary directory in the work directory, removed at exit."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise StorageError(f"cannot create the backup work directory {self.root}: "
                               f"{err.strerror}",
                               hint="check backup_work_dir (KVMOPS_BACKUP_WORK_DIR)") from err
        path = Path(tempfile.mkdtemp(prefix=".scratch-", dir=self.root))
        try:
            yield path
        finally:
            shutil.rmtree(path, ignore_errors=True)

    @staticmethod
    def data_key(vm: str, backup_id: str, name: str) -> str:
        return f"{vm}/backups/{backup_id}/{name}"

    # ------------------------------------------------------------ reading
    def vms(self) -> list[str]:
        names = set()
        for key in self.store.list(""):
            match = _MANIFEST_KEY.match(key)
            if match:
                names.add(match.group(1))
        return sorted(names)

    def backup_ids(self, vm: str) -> list[str]:
        """Ids of the published backups of ``vm`` (those with a manifest object)."""
        ids = set()
        for key in self.store.list(f"{vm}/backups/"):
            match = _MANIFEST_KEY.match(key)
            if match and match.group(1) == vm:
                ids.add(match.group(2))
        return sorted(ids)

    def load(self, vm: str, backup_id: str) -> Manifest:
        key = self.data_key(vm, backup_id, MANIFEST)
        return parse_manifest(self.read_object(key), vm, backup_id, f"{self.store.url}/{key}")

    def has_file(self, vm: str, backup_id: str, name: str) -> bool:
        return self.store.size(self.data_key(vm, backup_id, name)) is not None

    def backup_dir(self, vm: str, backup_id: str) -> Path:
        raise NotFoundError(f"backup {backup_id} of VM '{vm}' lies sealed in "
                            f"{self.store.url}: it has no local directory",
                            hint="use point_images() or restore it")

    # ------------------------------------------------------------ writing
    def start_partial(self, vm: str, backup_id: str, work_bytes: int | None = None) -> Path:
        """The usual partial directory -- or, when ``work_bytes`` fit in the memory work
        directory (:mod:`kvmops.backup.ramwork`), a symbolic link to a directory there:
        QEMU's work file then never reaches the disk, only the sealed copy does."""
        ram = settings().backup_ram_work_dir
        target = (ramwork.make_work_dir(ram, f"{self.config.id}-{backup_id}-", work_bytes)
                  if ram is not None else None)
        if target is None:
            return super().start_partial(vm, backup_id)
        partial = self.partial_path(vm, backup_id)
        try:
            partial.symlink_to(target, target_is_directory=True)
        except BaseException:
            shutil.rmtree(target, ignore_errors=True)
            raise
        return partial

    def discard_partial(self, partial: Path) -> None:
        """Remove a partial backup; a link into a memory work directory kvmops used goes
        with what it points to (only there: a link elsewhere is only unlinked)."""
        if not partial.is_symlink():
            super().discard_partial(partial)
            return
        target = Path(os.readlink(partial))
        if ramwork.owns(target):  # also after the setting changed since the link was made
            shutil.rmtree(target, ignore_errors=True)
        partial.unlink(missing_ok=True)

    def publish(self, vm: str, partial: Path, manifest: Manifest) -> Path:
        """Seal every data file into the store, then the manifest; drop the plaintext.

        The digests finish_files left pending are computed here, each file's while it is
        sealed (a thread beside the sealing workers: the sealing waits on the disk part of
        the time), and filled into ``manifest``'s records before it is written."""
        self.drop_orphans(vm)
        uploaded: list[str] = []
        try:
            with ThreadPoolExecutor(1, thread_name_prefix="digest") as hasher:
                for disk in manifest.disks:
                    key = self.data_key(vm, manifest.id, disk.file)
                    uploaded.append(key)
                    digest = (hasher.submit(sha256_file, partial / disk.file)
                              if disk.sha256 == DIGEST_PENDING else None)
                    self.put_data(partial / disk.file, key)
                    if digest is not None:
                        disk.sha256 = digest.result()
            self.write_object(self.data_key(vm, manifest.id, MANIFEST),
                              manifest.model_dump_json(indent=2).encode())
        except BaseException:
            for key in uploaded:  # never listed without a manifest; do not leave it
                with contextlib.suppress(Exception):
                    self.store.delete(key)
            raise
        self.discard_partial(partial)
        return partial

    def drop_orphans(self, vm: str) -> list[str]:
        """Delete the objects of ``vm``'s backups that have no manifest: what a killed
        publish or prune left (never listed, never used), after finishing or undoing a
        killed prune's rewrite (:meth:`finish_pending`). The caller holds the VM's lock."""
        self.finish_pending(vm)
        listed = set(self.backup_ids(vm))
        orphans = []
        for key in self.store.list(f"{vm}/backups/"):
            parts = key.split("/")
            if len(parts) == 4 and parts[2] not in listed:
                orphans.append(key)
                self.store.delete(key)
        return orphans

    def rewrite_backup(self, local: Path, updated: Manifest) -> None:
        """Put a prune's rewritten backup (its files in ``local``) in place of the stored
        one: the new manifest as pending first, then the files, then the manifest, then
        the pending one goes; a kill in between is finished or undone by
        :meth:`finish_pending`."""
        vm = updated.vm
        pending = self.data_key(vm, updated.id, PENDING)
        self.write_object(pending, updated.model_dump_json(indent=2).encode())
        for disk in updated.disks:
            self.put_data(local / disk.file, self.data_key(vm, updated.id, disk.file))
        self.write_object(self.data_key(vm, updated.id, MANIFEST),
                          updated.model_dump_json(indent=2).encode())
        self.delete_object(pending)

    def finish_pending(self, vm: str) -> list[str]:
        """A prune killed while rewriting a backup: when every stored file of it is the
        rewritten one (its digest is the pending manifest's), the pending manifest is
        put in place; otherwise the old files are still there and it is dropped."""
        finished = []
        for key in self.store.list(f"{vm}/backups/"):
            parts = key.split("/")
            if len(parts) != 4 or parts[3] != PENDING:
                continue
            try:
                updated = Manifest.model_validate_json(self.read_object(key))
                with self.scratch() as tmp:
                    done = True
                    for disk in updated.disks:
                        self.get_data(self.data_key(vm, parts[2], disk.file), tmp / disk.file)
                        done = done and digest_matches(tmp / disk.file, disk.sha256)
            except (KvmopsError, ValueError):
                done = False
            if done and updated.id == parts[2] and updated.vm == vm:
                self.write_object(self.data_key(vm, parts[2], MANIFEST),
                                  updated.model_dump_json(indent=2).encode())
                finished.append(parts[2])
            self.delete_object(key)
        return finished

    def save_checkpoint_xml(self, vm: str, name: str, xml: str) -> None:
        self.write_object(f"{vm}/checkpoints/{name}.xml", xml.encode())

    def checkpoint_xml(self, vm: str, name: str) -> str | None:
        key = f"{vm}/checkpoints/{name}.xml"
        if self.store.size(key) is None:
            return None
        try:
            return self.read_object(key).decode()
        except (KvmopsError, UnicodeDecodeError):
            return None

    def remove_checkpoint_xml(self, vm: str, name: str) -> None:
        self.delete_object(f"{vm}/checkpoints/{name}.xml")

    def remove_backup(self, manifest: Manifest) -> None:
        """Unlist it first (the manifest), then delete its files."""
        vm = manifest.vm
        self.delete_object(self.data_key(vm, manifest.id, MANIFEST))
        for disk in manifest.disks:
            self.store.delete(self.data_key(vm, manifest.id, disk.file))

    # ------------------------------------------------------------ opened chains
    @contextlib.contextmanager
    def local_chains(self, vm: str, point: Manifest, by_id: dict[str, Manifest],
                     targets: Iterable[str]) -> Iterator[Repository]:
        """A plain repository in a private temporary directory holding the opened files
        of ``targets``' chains at ``point`` (removed at exit)."""
        needed = {(m.id, t) for t in targets for m in disk_chain(by_id, point.id, t)}
        with self.fetched(vm, by_id, needed) as view:
            yield view

    @contextlib.contextmanager
    def fetched(self, vm: str, by_id: dict[str, Manifest], files: Iterable[tuple[str, str]]
                ) -> Iterator[Repository]:
        """The ``(backup id, target)`` files opened into a temporary plain layout."""
        with self.scratch() as tmp:
            view = FetchedView(tmp, self)
            for backup_id, target in sorted(files):
                record = by_id[backup_id].disk(target)
                dst = view.backups_dir(vm) / backup_id / record.file
                dst.parent.mkdir(parents=True, exist_ok=True)
                # a scratch copy, read by verify/restore/mount and removed: no fsync
                self.get_data(self.data_key(vm, backup_id, record.file), dst, durable=False)
            yield view

    # ------------------------------------------------------------ verify
    def check_stored(self, vm: str, manifest: Manifest, target: str,
                     by_id: dict[str, Manifest], checksums: bool, check_local: CheckFn
                     ) -> str | None:
        """One stored data file: every frame authenticated; with ``checksums`` also opened
        and checked like a local one (sha256 of the plaintext, qemu-img check, link)."""
        record = manifest.disk(target)
        key = self.data_key(vm, manifest.id, record.file)
        where = f"{self.store.url}/{key}"
        if self.store.size(key) is None:
            return f"file {where} is missing"
        try:
            if not checksums:
                if self.sealing.plain:
                    return None
                self.check_data(key)
                return None
            with self.fetched(vm, by_id, [(manifest.id, target)]) as view:
                problem = check_local(view, vm, manifest, target, by_id, True)
        except TamperedError as err:
            return f"{where} failed authentication: {err.message}"
        except KvmopsError as err:
            return f"{where} cannot be opened: {err.message}"
        return problem.replace(str(view.root), self.store.url) if problem else None

    def check_checkpoints(self, vm: str) -> list[str]:
        """Problems of the saved checkpoint XMLs (authentication)."""
        problems = []
        for key in self.store.list(f"{vm}/checkpoints/"):
            if not key.endswith(".xml"):
                continue
            try:
                self.read_object(key)
            except KvmopsError as err:
                problems.append(err.message)
        return problems


class FetchedView(Repository):
    """Opened files of a store-backed repository in a temporary directory; what is not
    fetched is asked of the store (``has_file``)."""

    def __init__(self, root: Path, origin: StoreRepository) -> None:
        super().__init__(root, origin.keyring)
        self.origin = origin

    def has_file(self, vm: str, backup_id: str, name: str) -> bool:
        return super().has_file(vm, backup_id, name) or self.origin.has_file(vm, backup_id,
                                                                              name)


# ---------------------------------------------------------------- opening
def _split_location(repo: str | Path) -> tuple[ObjectStore, bool]:
    text = str(repo)
    if is_remote_url(text):
        return open_store(text), True
    if text.startswith("file://"):
        text = text[len("file://"):]
    return LocalStore(Path(text)), False


def open_repository(repo: str | Path, *, key_file: Path | str | None = None,
                    passphrase: str | None = None, keyring: Keyring | None = None
                    ) -> Repository:
    """The repository at ``repo`` (a directory or a URL): a plain :class:`Repository`, or
    a :class:`StoreRepository` unlocked with the key when it is encrypted
    (KeyRequiredError without it; nothing is written)."""
    keyring = keyring or Keyring()
    store, remote = _split_location(repo)
    if not remote:
        assert isinstance(store, LocalStore)
        if not _claims_sealed(store.root / IDENTITY):
            # A plain repository, exactly as before: its identity and manifests are
            # authenticated where they are used. (An identity changed to claim "plain"
            # gains nothing: a sealed manifest never passes as a plain one.)
            return Repository(store.root, keyring)
    config = read_config(store, keyring)
    if config is None:
        raise NotFoundError(f"no kvmops repository at {store.url}",
                            hint="a backup into it ('kvmops backup create VM --repo URL') "
                                 "makes one")
    if isinstance(store, LocalStore) and not remote and not config.sealed:
        return Repository(store.root, keyring)
    return StoreRepository(store, config, unlock(config, store.url, key_file, passphrase),
                           keyring=keyring)


# ``backup replicate`` marks the replicas it makes (a signed object beside the identity):
# a replica carries its source's identity, so the checkpoints a backup into it would make
# and delete are the source's. It takes restores, verify, prune and further replication.
REPLICA_MARK = "kvmops-replica-of.json"


def _replica_source_in(store: ObjectStore, keyring: Keyring) -> str | None:
    try:
        data = read_signed_object(store, keyring, REPLICA_MARK)
    except NotFoundError:
        return None
    except TamperedError:
        return "an unknown source (its replica mark fails authentication)"
    try:
        return str(json.loads(data)["source"])
    except (ValueError, KeyError, TypeError):
        return "an unknown source"


def _refuse_replica_in(store: ObjectStore, keyring: Keyring) -> None:
    source = _replica_source_in(store, keyring)
    if source is not None:
        raise ValidationError(
            f"repository {store.url} is a replica of {source}; backups go into the source",
            hint="back up into the source repository (a replica takes restores, verify, "
                 "prune and replication), or into a new --repo")


def replica_source(repo: str | Path, keyring: Keyring | None = None) -> str | None:
    """The source's location when ``repo`` is a replica; None when it is not one."""
    store, _remote = _split_location(repo)
    try:
        return _replica_source_in(store, keyring or Keyring())
    finally:
        store.close()


def refuse_replica(repo: str | Path, keyring: Keyring | None = None) -> None:
    """Backups go into a replica's source, never into the replica (``prepare_repository``
    checks it on the store it opens)."""
    store, _remote = _split_location(repo)
    try:
        _refuse_replica_in(store, keyring or Keyring())
    finally:
        store.close()


def _claims_sealed(identity: Path) -> bool:
    """Does a local identity file say (authenticated or not) that it is sealed?"""
    try:
        config = RepoConfig.parse(identity.read_bytes(), str(identity))
        return config.sealed or (config.format or 0) >= FORMAT
    except FileNotFoundError:
        return False
    except (KvmopsError, OSError):
        return True  # unreadable: authenticated next, which says what is wrong


def prepare_repository(repo: str | Path, *, compress: str | None = None,
                       encrypt: bool = False, key_file: Path | str | None = None,
                       passphrase: str | None = None, keyring: Keyring | None = None,
                       note: Callable[[str], None] | None = None) -> Repository:
    """The repository a backup goes into, made store-backed on first use when asked (a
    replica made by ``backup replicate`` is refused).

    ``compress`` is a zstd spec (``zstd:3``) or None. A new repository records the
    compression and the encryption (a new data key wrapped by the secret) in its identity;
    an existing one keeps its own (asking for another one is refused, in one line).
    """
    keyring = keyring or Keyring()
    store, remote = _split_location(repo)
    try:
        _refuse_replica_in(store, keyring)  # before the lock: nothing is written into it
    except KvmopsError:
        store.close()
        raise
    lock = _identity_lock(store)
    with lock:
        config = read_config(store, keyring)
        if config is not None and (config.sealed or remote):  # remote: always a store
            if encrypt and config.encryption is None:
                raise ValidationError(
                    f"repository {store.url} is not encrypted; encryption is chosen when a "
                    "repository is made", hint="back up into a new --repo with --encrypt")
            if compress and compress != config.compress:
                raise ValidationError(
                    f"repository {store.url} is compressed with {config.compress or 'nothing'}"
                    f", not {compress}",
                    hint="leave --compress out: the repository's own setting applies")
            return StoreRepository(store, config,
                                   unlock(config, store.url, key_file, passphrase),
                                   keyring=keyring)
        if not (compress or encrypt or remote):
            assert isinstance(store, LocalStore)
            return Repository(store.root, keyring)
        if config is not None and _has_backups(store):
            raise ValidationError(
                f"repository {store.url} holds plain backups: compression and encryption "
                "are chosen when a repository is made",
                hint="back up into a new --repo with --compress zstd / --encrypt")
        encryption = None
        key = None
        if encrypt:
            if key_file is not None and passphrase is None and not Path(key_file).exists():
                repokey.create_key_file(Path(key_file))
                if note:
                    note(f"made a new key file {key_file}: keep a copy away from this host, "
                         "the repository cannot be read without it")
            encryption, key = repokey.new_encryption(_secret(key_file, passphrase))
        new = RepoConfig(id=config.id if config else secrets.token_hex(4),
                         compress=compress, encryption=encryption, format=FORMAT)
        write_signed_object(store, keyring, IDENTITY, new.to_json().encode())
        return StoreRepository(store, new, Sealing(zstd_level(compress), key),
                               keyring=keyring)


def _has_backups(store: ObjectStore) -> bool:
    return any(_MANIFEST_KEY.match(k) for k in store.list(""))


@contextlib.contextmanager
def _identity_lock(store: ObjectStore) -> Iterator[None]:
    """Two first backups into a new local repository make one identity."""
    if not isinstance(store, LocalStore):
        yield
        return
    with identity_lock(store.root):
        yield


def rekey(repo: str | Path, *, old_key_file: Path | str | None = None,
          old_passphrase: str | None = None, new_key_file: Path | str | None = None,
          new_passphrase: str | None = None, keyring: Keyring | None = None) -> RepoConfig:
    """Wrap the repository's data key with a new secret (atomic identity rewrite): the
    old key no longer opens it; no data is rewritten."""
    keyring = keyring or Keyring()
    store, _remote = _split_location(repo)
    with _identity_lock(store):
        config = read_config(store, keyring)
        if config is None or config.encryption is None:
            raise ValidationError(f"repository {store.url} is not encrypted",
                                  hint="only an encrypted repository has a key to change")
        old = _secret(old_key_file, old_passphrase)
        if new_key_file is not None and new_passphrase is None \
                and not Path(new_key_file).exists():
            repokey.create_key_file(Path(new_key_file))
        new = _secret(new_key_file, new_passphrase)
        block = repokey.rewrap(config.encryption, old, new, store.url)
        updated = replace(config, encryption=block)
        write_signed_object(store, keyring, IDENTITY, updated.to_json().encode())
        return updated


def repo_info(repo: str | Path, keyring: Keyring | None = None) -> dict[str, Any]:
    """Format, compression, encryption (yes/no, key id) -- never the key."""
    keyring = keyring or Keyring()
    store, remote = _split_location(repo)
    config = read_config(store, keyring)
    if config is None:
        if remote or not (isinstance(store, LocalStore) and store.root.is_dir()):
            raise NotFoundError(f"no kvmops repository at {store.url}")
        config = RepoConfig(id="")
    encryption = config.encryption or {}
    return {
        "repo": store.url,
        "id": config.id or None,
        "format": "sealed" if config.sealed or remote else "plain",
        "store": "remote" if remote else "local",
        "compression": config.compress,
        "encrypted": config.encryption is not None,
        "cipher": encryption.get("cipher", "aes-256-gcm") if config.encryption else None,
        "kdf": (encryption.get("kdf") or {}).get("name") if config.encryption else None,
        "key_id": encryption.get("key_id") if config.encryption else None,
        "vms": (Repository(store.root).vms()
                if isinstance(store, LocalStore) and not config.sealed else _vms(store)),
    }


def _vms(store: ObjectStore) -> list[str]:
    return sorted({m.group(1) for k in store.list("") if (m := _MANIFEST_KEY.match(k))})


# ---------------------------------------------------------------- for file restore, instant
@contextlib.contextmanager
def point_images(repo: str | Path, vm: str, at: str | None, *,
                 key_file: Path | str | None = None, passphrase: str | None = None,
                 disks: list[str] | None = None
                 ) -> Iterator[tuple[Manifest, dict[str, Path]]]:
    """The point's manifest and, per disk target, a local qcow2 top file whose whole
    backing chain is local and checked (a plain repository: its own files, to be opened
    read-only; store-backed: opened into a private temporary directory removed at exit)."""
    from kvmops.backup.restore import _point, checked_chain

    repository = open_repository(repo, key_file=key_file, passphrase=passphrase)
    point, by_id = _point(repository, vm, at)
    targets = list(disks) if disks else [d.target for d in point.disks]
    for target in targets:
        point.disk(target)  # NotFoundError naming the disk
    with repository.local_chains(vm, point, by_id, targets) as view:
        yield point, {t: checked_chain(view, vm, point, by_id, t)[0] for t in targets}


# ---------------------------------------------------------------- prune
def prune_store(repo: StoreRepository, vm: str, policy: RetentionPolicy, *,
                dry_run: bool = False, note: Callable[[str], None] | None = None
                ) -> PruneResult:
    """Prune a store-backed repository: the kept backups whose chain runs through an
    expired one are merged (as for a plain one) in opened copies, re-sealed and put back
    (files first, manifest last); expired backups are unlisted, then deleted."""
    from kvmops.backup.restore import require_sound, verify
    from kvmops.backup.retention import PruneResult, _rewrite, note_merged, scan_for_prune

    with repo.lock(vm, "prune"):
        repo.drop_orphans(vm)
        by_id, plan = scan_for_prune(repo, vm, policy)
        if dry_run or not plan.remove:
            return PruneResult(vm=vm, dry_run=dry_run, plan=plan)
        rewrites = [b for b in plan.keep if b in plan.rewrite]
        needed = {(m.id, d.target) for b in rewrites for d in by_id[b].disks
                  for m in disk_chain(by_id, b, d.target)}
        if rewrites:
            with repo.fetched(vm, by_id, needed) as view:
                for backup_id in rewrites:  # oldest first: a new parent is already final
                    new_parent = plan.rewrite[backup_id]
                    updated = _rewrite(view, vm, by_id, by_id[backup_id], new_parent)
                    repo.rewrite_backup(view.backups_dir(vm) / backup_id, updated)
                    note_merged(note, backup_id, new_parent)
        for backup_id in plan.remove:
            repo.remove_backup(by_id[backup_id])
        require_sound(verify(repo, vm))
    return PruneResult(vm=vm, dry_run=False, plan=plan)


__all__ = ["FORMAT", "FetchedView", "RepoConfig", "StoreRepository", "open_repository",
           "parse_compress", "point_images", "prepare_repository", "prune_store", "rekey",
           "repo_info", "sha256_file"]
