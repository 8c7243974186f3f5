"""File-level restore use cases: mount a backup point read-only, list its files, copy
one file or directory out (to a host directory, or into the running guest through its
agent), unmount -- the faces (CLI, API, web) call these.

A point's chain is opened through :func:`kvmops.backup.storerepo.point_images`: a plain
local repository's own files (read only) after :func:`kvmops.backup.restore.checked_chain`
checked them, a sealed one's unsealed into a private work directory.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from kvmops.backup import guestfs, mount
from kvmops.backup.guestfs import CopyResult, Entry
from kvmops.backup.model import Manifest
from kvmops.backup.mount import MountRecord
from kvmops.errors import NotFoundError, ValidationError
from kvmops.services.audit import audited
from kvmops.services.caller import Caller
from kvmops.services.jobs import track

BytesFn = Callable[[int, int], None]
NoteFn = Callable[[str], None]


class FilesResult(BaseModel):
    vm: str
    backup_id: str
    disk: str
    partition: int | None
    path: str
    entries: list[Entry]


class RestoreFileResult(BaseModel):
    vm: str
    backup_id: str
    disk: str
    partition: int | None
    path: str  # in the guest, as asked
    written: str  # host path, or guest path with into_guest
    into_guest: bool = False
    kind: str  # file or dir
    files: int
    bytes: int
    sha256: str | None = None  # of a single file
    skipped: list[str] = []


# ---------------------------------------------------------------- opening a point
def where(caller: Caller, repo: str | Path) -> Path | str:
    """The repository: a directory through the path policy (it must exist), or a remote
    URL (an API caller's only when the settings allow it)."""
    from kvmops.services.backups import location

    found = location(caller, repo)
    if isinstance(found, Path) and not found.is_dir():
        raise NotFoundError(f"backup repository {found} does not exist",
                            hint="check --repo (a backup creates it)")
    return found


def _key(caller: Caller, key_file: str | Path | None) -> Path | None:
    """A key file: any for the command line, the server's key directory for the API."""
    from kvmops.services.backups import key_path

    return key_path(caller, key_file)


def _pick_disk(point: Manifest, disk: str | None) -> str:
    targets = [d.target for d in point.disks]
    if disk is not None:
        if disk not in targets:
            raise NotFoundError(f"backup {point.id} of VM '{point.vm}' has no disk {disk}",
                                hint=f"its disks: {', '.join(targets)}")
        return disk
    if len(targets) == 1 or "vda" not in targets:
        return targets[0]
    return "vda"


@contextlib.contextmanager
def open_point(repo: Path | str, vm: str, at: str | None, disk: str | None, *,
               key_file: Path | None = None, passphrase: str | None = None
               ) -> Iterator[tuple[Manifest, str, list[Path]]]:
    """The point's manifest, the chosen disk and its checked chain (base first), local
    for the length of the block (read-only: the repository's own files when plain)."""
    from kvmops.backup.storerepo import point_images
    from kvmops.images.chain import inspect

    with contextlib.ExitStack() as stack:
        try:  # only the disk needed is opened (a sealed one is unsealed)
            point, tops = stack.enter_context(point_images(
                repo, vm, at, key_file=key_file, passphrase=passphrase,
                disks=[disk or "vda"]))
        except NotFoundError as err:
            if disk is not None or "has no disk 'vda'" not in err.message:
                raise
            point, tops = stack.enter_context(point_images(
                repo, vm, at, key_file=key_file, passphrase=passphrase))
        target = _pick_disk(point, disk)
        top = tops[target]
        within = [Path(os.path.realpath(top)).parent.parent]
        links = inspect(top, "qcow2", within=within, trusted_top=True, force_share=True).links
        yield point, target, [link.path for link in reversed(links)]


def _persist_chain(files: list[Path], repo: Path | str, work: Path) -> list[Path]:
    """Files outside the repository (unsealed into a temporary directory) are linked or
    copied into the mount's work directory, so they outlive this process."""
    real = os.path.realpath(repo) if isinstance(repo, Path) else None
    if real is not None and all(str(f).startswith(real + os.sep) for f in files):
        return files
    keep = work / "chain"
    keep.mkdir(mode=0o700, parents=True, exist_ok=True)
    kept = []
    for index, path in enumerate(files):
        dst = keep / f"{index}-{path.name}"
        try:
            os.link(path, dst)
        except OSError:
            subprocess.run(["cp", "--sparse=always", "--reflink=auto", str(path), str(dst)],
                           check=True)
        kept.append(dst)
    return kept


# ---------------------------------------------------------------- mount / umount
@audited("backup.mount", target="vm")
def mount_point(caller: Caller, repo: str | Path, vm: str, at: str | None,
                mountpoint: str | Path, *, disk: str | None = None,
                key_file: str | Path | None = None, passphrase: str | None = None
                ) -> MountRecord:
    """Expose a point read-only at ``mountpoint`` until :func:`unmount_point`."""
    checked = where(caller, repo)
    key_file = _key(caller, key_file)
    path, made = mount.prepare_mountpoint(mountpoint)
    try:
        with open_point(checked, vm, at, disk, key_file=key_file,
                        passphrase=passphrase) as (point, target, files):
            record = mount.new_record(vm=vm, repo=checked, backup_id=point.id, disk=target,
                                      mountpoint=path, made=made)
            Path(record.work).mkdir(mode=0o700, parents=True)
            chain = _persist_chain(files, checked, Path(record.work))
            return mount.expose(record, chain)
    except BaseException:
        if made:
            with contextlib.suppress(OSError):
                path.rmdir()
        raise


@audited("backup.umount", target="mountpoint")
def unmount_point(caller: Caller, mountpoint: str | Path) -> tuple[MountRecord, list[str]]:
    record = mount.find(mountpoint)
    return record, mount.unmount(record)


@audited("backup.umount", target=None)
def unmount_all(caller: Caller) -> list[tuple[MountRecord, list[str] | str]]:
    """Every recorded mount taken down; a failure is reported and the others go on.
    A temporary mount whose command still runs (a listing, a restore-file) is left to it."""
    from kvmops.errors import KvmopsError

    results: list[tuple[MountRecord, list[str] | str]] = []
    for record in mount.records():
        if record.temporary and record.owner_pid != os.getpid() and \
                mount.owner_running(record):
            continue
        try:
            results.append((record, mount.unmount(record)))
        except KvmopsError as err:
            results.append((record, err.message))
    return results


def list_mounts() -> list[dict[str, Any]]:
    return [mount.summary(r) for r in mount.records()]


# ---------------------------------------------------------------- temporary mounts
def _choose_fs(record: MountRecord, partition: int | None) -> tuple[Path, int | None]:
    mounted = [fs for fs in record.filesystems if fs.mounted]
    if partition is not None:
        for fs in mounted:
            if fs.partition == partition:
                return Path(fs.path), partition
        raise NotFoundError(f"disk {record.disk} has no mounted file system on partition "
                            f"{partition}", hint=_which(record))
    if len(mounted) == 1:
        return Path(mounted[0].path), mounted[0].partition
    raise ValidationError(f"disk {record.disk} of backup {record.backup_id} holds "
                          f"{len(mounted)} file systems: choose one with --partition",
                          hint=_which(record))


def _which(record: MountRecord) -> str:
    found = [f"partition {fs.partition} ({fs.fstype})" for fs in record.filesystems
             if fs.mounted]
    return "mounted: " + (", ".join(found) or "none") + (
        "; " + "; ".join(record.notes) if record.notes else "")


@contextlib.contextmanager
def _temporary(repo: Path | str, vm: str, at: str | None, disk: str | None,
               partition: int | None, key_file: Path | None, passphrase: str | None
               ) -> Iterator[tuple[MountRecord, Path, int | None]]:
    with open_point(repo, vm, at, disk, key_file=key_file,
                    passphrase=passphrase) as (point, target, files):
        record = mount.new_record(vm=vm, repo=repo, backup_id=point.id, disk=target,
                                  mountpoint=Path("/"), made=False, temporary=True)
        record.mountpoint = str(Path(record.work) / "mnt")
        Path(record.work).mkdir(mode=0o700, parents=True)
        Path(record.mountpoint).mkdir(mode=0o700)
        with mount.temporary(record, files):
            root, number = _choose_fs(record, partition)
            yield record, root, number


def list_files(caller: Caller, repo: str | Path, vm: str, at: str | None, path: str, *,
               disk: str | None = None, partition: int | None = None,
               key_file: str | Path | None = None, passphrase: str | None = None
               ) -> FilesResult:
    """A directory of the guest's file system at a point (mounted for the call)."""
    checked = where(caller, repo)
    with _temporary(checked, vm, at, disk, partition, _key(caller, key_file), passphrase) as (
            record, root, number):
        entries = guestfs.list_dir(root, path)
    return FilesResult(vm=vm, backup_id=record.backup_id, disk=record.disk,
                       partition=number, path=path, entries=entries)


def _sha256(path: Path) -> str:
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(4 << 20):
            digest.update(block)
    return digest.hexdigest()


@audited("backup.restore-file", target="vm")
def restore_file(caller: Caller, uri: str | None, repo: str | Path, vm: str,
                 at: str | None, path: str, *, to: str | Path | None = None,
                 into_guest: bool = False, guest_path: str | None = None,
                 disk: str | None = None, partition: int | None = None, force: bool = False,
                 key_file: str | Path | None = None, passphrase: str | None = None,
                 progress: BytesFn | None = None, note: NoteFn | None = None,
                 trusted_to: bool = False) -> RestoreFileResult:
    """Copy ``path`` of a point to ``to/<basename>`` or, with ``into_guest``, into the
    running guest at ``guest_path`` (default: the same path). ``trusted_to``: ``to`` was
    chosen by kvmops itself (the API's download staging), not by the caller."""
    from kvmops.services.backups import restore_dir

    if into_guest == (to is not None):
        raise ValidationError("give exactly one of --to DIR and --into-guest")
    if guest_path is not None and not into_guest:
        raise ValidationError("--guest-path goes with --into-guest")
    checked = where(caller, repo)
    key_file = _key(caller, key_file)
    if to is not None and not trusted_to:
        check_to(caller, to)  # before any work; made only once the point opened
    with track(caller, "backup.restore-file", vm) as job:
        def report(done: int, total: int) -> None:
            job.bytes(done, total)
            if progress is not None:
                progress(done, total)

        with _temporary(checked, vm, at, disk, partition, key_file, passphrase) as (
                record, root, number):
            target_dir = None if to is None else Path(to) if trusted_to else \
                restore_dir(caller, to)
            if target_dir is not None:
                copied = guestfs.copy_out(root, path, target_dir, force=force,
                                          progress=report)
                written = copied.path
                digest = _sha256(Path(written)) if copied.kind == "file" else None
            else:
                copied, digest, written = _into_guest(caller, uri, vm, root, path,
                                                      guest_path or path, force, report)
        if copied.kind == "dir" and note is not None:
            note(f"{path} is a directory: copied recursively ({copied.files} files)")
        for item in copied.skipped:
            if note is not None:
                note(f"skipped {item}: not a regular file, directory or link")
        result = RestoreFileResult(
            vm=vm, backup_id=record.backup_id, disk=record.disk, partition=number,
            path=path, written=written, into_guest=into_guest, kind=copied.kind,
            files=copied.files, bytes=copied.bytes, sha256=digest, skipped=copied.skipped)
        job.result = result
    return result


def check_to(caller: Caller, to: str | Path) -> Path:
    """A restore target through the path policy, without creating anything."""
    from kvmops.paths import policy

    path = policy().image_path(to, trusted=caller.trusted_paths, what="restore directory")
    if path.exists() and not path.is_dir():
        raise ValidationError(f"restore directory {path} is not a directory")
    return path


def _into_guest(caller: Caller, uri: str | None, vm: str, root: Path, path: str,
                remote: str, force: bool, progress: BytesFn
                ) -> tuple[CopyResult, str | None, str]:
    """Stage the file on the host (state dir, never the repository), then push it through
    the guest agent (atomic in the guest: the push service's temp + rename)."""
    from kvmops.services.guest import open_guest

    if not remote.startswith("/") or remote.endswith("/"):
        raise ValidationError(f"guest path '{remote}' must be an absolute file path")
    if guestfs.resolve(root, path).is_dir():
        raise ValidationError(f"{path} is a directory: --into-guest copies one file",
                              hint="restore it with --to DIR, then copy it in")
    stage = Path(tempfile.mkdtemp(prefix="restore-file-", dir=mount.mounts_dir()))
    try:
        with open_guest(caller, vm, uri=uri) as guest:
            if not force:  # before any copying
                _refuse_existing(guest, vm, remote)
            copied = guestfs.copy_out(root, path, stage, progress=progress)
            digest = _sha256(Path(copied.path))
            guest.push(Path(copied.path), remote,
                       mode=guestfs.entry(Path(copied.path)).mode)
        return copied, digest, remote
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def _refuse_existing(guest: Any, vm: str, remote: str) -> None:
    """Reads at most one chunk: an empty file comes back, a longer one exceeds limit 0."""
    from kvmops.errors import AlreadyExistsError, KvmopsError

    try:
        guest.read_bytes(remote, limit=0)
    except ValidationError:
        pass  # longer than 0 bytes: it exists
    except KvmopsError:
        return  # missing (or unreadable): the push decides
    raise AlreadyExistsError(f"{remote} already exists in the guest of VM '{vm}'",
                             hint="give --force to replace it")


def staging_dir() -> Path:
    """A private (0700) directory for a download's copy, in the state directory."""
    return mount.mounts_dir()
