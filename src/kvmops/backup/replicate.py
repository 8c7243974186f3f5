"""Replication: ship the backup points a second repository lacks, verified there.

``replicate(source, target)`` copies a repository's objects as they are stored -- the
sealed (or plain) data files, the manifests with their HMAC sidecars, the identity --
to another repository, local or remote (:mod:`kvmops.backup.store`). Nothing is
re-encoded: every object is bound to its place (``VM/backups/ID/vda.qcow2``), and the
places are the same in the replica, so a replica opens with the same key file and the
same manifest key as its source (on another host: ``kvmops backup key export/import``).

* **Which points**: per VM, the authenticated points of the source newer than the
  replica's newest (all of them for a new replica), oldest first. A point is shipped only
  when each disk's parent is in the replica already (or was shipped before it), so the
  replica's chains are whole at every moment; older points missing from the replica
  (pruned there) are not shipped again, and named in a note.
* **Order inside a point**: data files first, then the manifest's HMAC sidecar, the
  manifest last -- a point is listed in the replica only once whole. A cut-off run
  leaves at most unlisted files, overwritten by the next run, which goes on from the
  replica's newest point (the S3 store resumes a cut-off multipart upload of a local
  file from its parts).
* **Verification**: each shipped point is read back from the replica: its manifest
  authenticated (HMAC), each data file checked as ``backup verify`` does (frames
  authenticated for a sealed repository, sha256 against the manifest, qemu-img check,
  backing link). A point that fails is unlisted again and the run stops.
* **Identity**: a new replica gets the source's identity (id, compression, encryption
  block) and a signed replica mark; a repository with another identity is refused. A
  replica is for restores, verify and prune -- a backup into it is refused (both carry
  the same identity, which names the VM's checkpoints).
"""

from __future__ import annotations

import contextlib
import json
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from pydantic import BaseModel, Field

from kvmops.backup.keys import Keyring
from kvmops.backup.model import Manifest
from kvmops.backup.repository import IDENTITY, MANIFEST, SIG_SUFFIX, Repository
from kvmops.backup.store import LocalStore, ObjectStore, is_remote_url, open_store
from kvmops.errors import (
    BackupInconsistentError,
    KvmopsError,
    NotFoundError,
    ValidationError,
)

ProgressFn = Callable[[int, int], None]
NoteFn = Callable[[str], None]


class ShippedPoint(BaseModel):
    vm: str
    backup_id: str
    type: str
    files: int
    bytes: int


class ReplicateResult(BaseModel):
    source: str
    target: str
    vms: list[str]
    shipped: list[ShippedPoint] = Field(default_factory=list)
    up_to_date: list[str] = Field(default_factory=list, description="VMs with nothing new")
    notes: list[str] = Field(default_factory=list)

    @property
    def bytes(self) -> int:
        return sum(p.bytes for p in self.shipped)


def store_of(repo: Repository) -> ObjectStore:
    """The store holding an opened repository's objects (a plain one: its directory)."""
    from kvmops.backup.storerepo import StoreRepository

    if isinstance(repo, StoreRepository):
        return repo.store
    return LocalStore(repo.root)


def target_store(target: str | Path) -> ObjectStore:
    text = str(target)
    return open_store(text) if is_remote_url(text) else LocalStore(Path(text))


def _copy_object(src: ObjectStore, dst: ObjectStore, key: str, scratch: Path,
                 progress: ProgressFn | None) -> None:
    """One data file, as stored (a local source is uploaded straight from its file)."""
    if isinstance(src, LocalStore):
        path = src.path(key)
        if not path.is_file():
            raise NotFoundError(f"{src.url}/{key} does not exist")
        dst.put_file(key, path, progress)
        return
    tmp = scratch / "object"
    try:
        src.get_file(key, tmp)
        dst.put_file(key, tmp, progress)
    finally:
        tmp.unlink(missing_ok=True)


def _copy_signed(src: ObjectStore, dst: ObjectStore, key: str) -> None:
    """A signed object: its sidecar first, the object last."""
    data = src.get_bytes(key)
    signature = src.get_bytes(key + SIG_SUFFIX)
    dst.put_bytes(key + SIG_SUFFIX, signature)
    dst.put_bytes(key, data)


def ensure_replica_identity(src: ObjectStore, dst: ObjectStore, keyring: Keyring) -> str:
    """The replica's identity is the source's (copied to a new replica); a repository
    with another identity is refused. Returns the id."""
    from kvmops.backup.storerepo import REPLICA_MARK, read_config, write_signed_object

    source = read_config(src, keyring)
    if source is None:
        raise NotFoundError(f"{src.url} has no repository identity: nothing to replicate",
                            hint="take a backup into it first")
    existing = read_config(dst, keyring)
    if existing is None:
        if any(not k.startswith(".") for k in dst.list("")):
            raise ValidationError(f"{dst.url} is not empty and not a kvmops repository",
                                  hint="replicate into an empty directory or prefix")
        _copy_signed(src, dst, IDENTITY)
        write_signed_object(dst, keyring, REPLICA_MARK,
                            json.dumps({"source": src.url, "id": source.id}).encode())
    elif existing.id != source.id:
        raise ValidationError(
            f"{dst.url} is repository {existing.id}, not a replica of {source.id} "
            f"({src.url})", hint="replicate into a new (empty) repository location")
    elif dst.get_bytes(IDENTITY) != src.get_bytes(IDENTITY):
        _copy_signed(src, dst, IDENTITY)  # the source's key was changed (rekey): follow
    return source.id


@contextlib.contextmanager
def _scratch(base: Path) -> Iterator[Path]:
    base.mkdir(parents=True, exist_ok=True)
    path = Path(tempfile.mkdtemp(prefix=".replicate-", dir=base))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _check_point(replica: Repository, vm: str, backup_id: str,
                 by_id: dict[str, Manifest]) -> list[str]:
    """Read a shipped point back from the replica: authenticated manifest, every file
    checked as ``backup verify`` does. Returns the problems."""
    from kvmops.backup.restore import _check_file
    from kvmops.backup.storerepo import StoreRepository

    try:
        manifest = replica.load(vm, backup_id)
    except KvmopsError as err:
        return [f"manifest: {err.message}"]
    by_id = {**by_id, backup_id: manifest}
    problems = []
    for disk in manifest.disks:
        if isinstance(replica, StoreRepository):
            problem = replica.check_stored(vm, manifest, disk.target, by_id, True,
                                           _check_file)
        else:
            problem = _check_file(replica, vm, manifest, disk.target, by_id, True)
        if problem:
            problems.append(f"{disk.target}: {problem}")
    return problems


def plan(source: list[Manifest], replica_ids: set[str]) -> tuple[list[Manifest], list[str]]:
    """Pure: the points to ship (newer than the replica's newest, oldest first) and the
    older ones the replica lacks (not shipped)."""
    newest = max(replica_ids) if replica_ids else None
    missing = [m for m in sorted(source, key=lambda m: m.id) if m.id not in replica_ids]
    ship = [m for m in missing if newest is None or m.id > newest]
    older = [m.id for m in missing if newest is not None and m.id < newest]
    return ship, older


def replicate(source: Repository, target: str | Path, vms: list[str] | None = None, *,
              key_file: Path | None = None, passphrase: str | None = None,
              work_dir: Path | None = None, progress: ProgressFn | None = None,
              note: NoteFn | None = None) -> ReplicateResult:
    """Ship what ``target`` lacks of ``source`` (module docstring); ``vms`` None: all."""
    from kvmops.backup.storerepo import open_repository
    from kvmops.config import settings

    src = store_of(source)
    dst = target_store(target)
    keyring = source.keyring
    result = ReplicateResult(source=source.location, target=dst.url, vms=[])
    base = work_dir or settings().backup_work_dir

    def tell(message: str) -> None:
        result.notes.append(message)
        if note is not None:
            note(message)

    try:
        ensure_replica_identity(src, dst, keyring)
        replica = open_repository(str(target), key_file=key_file, passphrase=passphrase,
                                  keyring=keyring)
        names = vms if vms else source.vms()
        if vms:
            for name in vms:
                if not source.scan(name)[0] and not source.scan(name)[1]:
                    raise NotFoundError(f"no backups of VM '{name}' in {source.location}")
        result.vms = list(names)
        todo: list[tuple[str, list[Manifest], dict[str, Manifest]]] = []
        total = 0
        for name in names:
            manifests, rejected = source.scan(name)
            for item in rejected:
                tell(f"backup {item.backup_id} of VM '{name}' is not shipped: {item.reason}")
            have, bad = replica.scan(name)
            for item in bad:
                tell(f"the replica's backup {item.backup_id} of VM '{name}' failed "
                     f"authentication: {item.reason}")
            ship, older = plan(manifests, {m.id for m in have} | {r.backup_id for r in bad})
            if older:
                tell(f"VM '{name}': {len(older)} older point(s) absent from the replica "
                     f"(pruned there?) are not shipped again: {', '.join(older[:3])}"
                     + ("..." if len(older) > 3 else ""))
            if not ship:
                result.up_to_date.append(name)
                continue
            todo.append((name, ship, {m.id: m for m in have}))
            total += sum(src.size(f"{name}/backups/{m.id}/{d.file}") or 0
                         for m in ship for d in m.disks)
        done = 0
        if progress is not None:
            progress(0, total)
        with _scratch(base) as scratch:
            for name, ship, replica_by_id in todo:
                with source.lock(name, "replicate"):
                    for manifest in ship:
                        done = _ship(src, dst, replica, name, manifest, replica_by_id,
                                     scratch, done, total, progress)
                        result.shipped.append(ShippedPoint(
                            vm=name, backup_id=manifest.id, type=manifest.type.value,
                            files=len(manifest.disks),
                            bytes=sum(src.size(f"{name}/backups/{manifest.id}/{d.file}")
                                      or 0 for d in manifest.disks)))
                        if note is not None:
                            note(f"shipped and verified {manifest.type.value} backup "
                                 f"{manifest.id} of VM '{name}'")
    finally:
        if dst is not src:
            dst.close()
    return result


def _ship(src: ObjectStore, dst: ObjectStore, replica: Repository, vm: str,
          manifest: Manifest, replica_by_id: dict[str, Manifest], scratch: Path,
          done: int, total: int, progress: ProgressFn | None) -> int:
    """One point: its parents present, files, sidecar, manifest; read back and checked."""
    for disk in manifest.disks:
        if disk.parent is not None and disk.parent not in replica_by_id:
            raise BackupInconsistentError(
                f"backup {manifest.id} of VM '{vm}' (disk {disk.target}) builds on "
                f"{disk.parent}, which the replica {dst.url} lacks: not shipped",
                hint="replicate into a new replica, or take a full backup")
    prefix = f"{vm}/backups/{manifest.id}"
    for disk in manifest.disks:
        key = f"{prefix}/{disk.file}"
        size = src.size(key) or 0

        def step(sent: int, _total: int, start: int = done) -> None:
            if progress is not None:
                progress(start + sent, total)

        _copy_object(src, dst, key, scratch, step)
        done += size
    _copy_signed(src, dst, f"{prefix}/{MANIFEST}")
    problems = _check_point(replica, vm, manifest.id, replica_by_id)
    if problems:
        with contextlib.suppress(Exception):  # unlisted again: never half-trusted
            dst.delete(f"{prefix}/{MANIFEST}")
        raise BackupInconsistentError(
            f"backup {manifest.id} of VM '{vm}' failed verification in the replica "
            f"{dst.url}: {problems[0]}",
            hint="the replica kept the points before it; check the target and run again")
    replica_by_id[manifest.id] = manifest
    return done
