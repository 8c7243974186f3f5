"""Storage pool and volume use cases: pools (create, list, info, start, stop, refresh,
delete, autostart) and their volumes (create, list, clone, resize, delete, upload,
download).

Rules (see docs/concepts/storage.md): a dir/fs/netfs pool's directory lies inside an
allowed image directory and never in the state directory, for every caller; an fs
pool's device is a block device that is not mounted; volume formats are always named
and checked against the format kvmops recorded (:mod:`kvmops.storage.volumes`); an
upload's qcow2 may not name a backing or data file; a volume a VM uses is not deleted or
shrunk, and a pool whose volumes VMs use is not stopped or deleted. Changes are audited
(command line here, the API's middleware for requests), refusals included.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO, Protocol

from kvmops.errors import (
    AlreadyExistsError,
    KvmopsError,
    NotFoundError,
    PathRefusedError,
    StateError,
    StorageError,
    UnsupportedError,
    ValidationError,
)
from kvmops.host import pools as host_pools
from kvmops.host.connection import Host
from kvmops.paths import policy
from kvmops.services.audit import audited
from kvmops.services.caller import Caller
from kvmops.services.jobs import track
from kvmops.storage import qcow2
from kvmops.storage.model import (
    BLOCK_TYPES,
    FILE_TYPES,
    POOL_TYPES,
    TESTED_TYPES,
    VOLUME_FORMATS,
    PoolInfo,
    PoolSpec,
    VolumeInfo,
    VolumeSpec,
    check_format,
    check_name,
    check_volume_name,
    disk_references,
    parse_pool,
    parse_volume,
)
from kvmops.storage.volumes import record, trusted_format

__all__ = ["POOL_TYPES", "TESTED_TYPES", "VOLUME_FORMATS", "PoolInfo", "PoolSpec",
           "VolumeInfo", "VolumeSpec", "clone_volume", "create", "create_volume", "delete",
           "delete_volume", "download", "download_data", "download_size", "info",
           "list_pools", "list_volumes", "refresh",
           "resize_volume", "set_autostart", "start", "stop", "upload", "upload_data",
           "upload_limit", "volume_info"]

Progress = Callable[[int, int], None]


def _info(state: host_pools.PoolState) -> PoolInfo:
    return parse_pool(state.xml, active=state.active, persistent=state.persistent,
                      autostart=state.autostart)


def list_pools(caller: Caller, host: Host) -> list[PoolInfo]:
    """Every libvirt storage pool (kvmops' and others'), by name."""
    return [_info(state) for state in host_pools.all_pools(host)]


def info(caller: Caller, host: Host, name: str) -> PoolInfo:
    """One pool, with its volume count when active."""
    check_name(name)
    pool = _info(host_pools.pool(host, name))
    if pool.active:
        pool.volumes = len(host_pools.volume_xmls(host, name))
    return pool


# ------------------------------------------------------------------ pool checks
def _check_paths(caller: Caller, spec: PoolSpec) -> PoolSpec:
    """A local directory of a pool: inside an allowed image directory (for every caller:
    a pool hands out every file under it), never the state directory; an fs pool's
    device: a block device, not mounted. The spec with the resolved directory (libvirt
    gets the path that was checked, not a symbolic link that could change)."""
    rules = policy()
    if spec.type in FILE_TYPES and spec.target is not None:
        real = rules.image_path(spec.target, trusted=False, what=f"pool '{spec.name}' target")
        if real.exists() and not real.is_dir():
            raise ValidationError(f"pool '{spec.name}' target {real} is not a directory",
                                  hint="name a directory (or a new one, with --build)")
        spec = dataclasses.replace(spec, target=str(real))
    if spec.type == "fs" and spec.device is not None:
        _check_block_device(spec.device, spec.name)
    return spec


def _mounted_devices() -> set[str]:
    found = set()
    with contextlib.suppress(OSError), open("/proc/self/mounts", encoding="utf-8") as fh:
        for line in fh:
            device = line.split(" ", 1)[0]
            if device.startswith("/"):
                with contextlib.suppress(OSError):
                    found.add(os.path.realpath(device))
    return found


def _check_block_device(device: str, pool: str) -> None:
    real = os.path.realpath(device)
    try:
        mode = os.stat(real).st_mode
    except OSError:
        raise NotFoundError(f"device {device} of pool '{pool}' does not exist",
                            hint="name a block device, e.g. a loop device made with "
                                 "'losetup --find --show FILE'") from None
    if not stat.S_ISBLK(mode):
        raise ValidationError(f"{device} (pool '{pool}') is not a block device",
                              hint="for a file, attach it first: 'losetup --find --show "
                                   "FILE', and name the loop device")
    if real in _mounted_devices():
        raise StateError(f"device {device} (pool '{pool}') is mounted already",
                         hint="an fs pool mounts its device itself: name one that is "
                              "not in use")


@audited("pool.create", target="spec")
def create(caller: Caller, host: Host, spec: PoolSpec, *, build: bool = False,
           start: bool = True) -> PoolInfo:
    """Define ``spec`` as a persistent pool, build it when asked (a dir pool's
    directory, an fs pool's file system on an empty device: never over existing data),
    set its autostart and start it. A failure leaves no pool defined."""
    if host_pools.exists(host, spec.name):
        raise AlreadyExistsError(f"storage pool '{spec.name}' already exists",
                                 hint="choose another name, or delete it first ('kvmops "
                                      "pool delete NAME')")
    spec = _check_paths(caller, spec)
    supported = host_pools.supported_types(host)
    if supported is not None and spec.type not in supported:
        raise UnsupportedError(
            f"this libvirtd has no '{spec.type}' storage backend (pool '{spec.name}')",
            hint=f"install libvirt's storage driver for it (Debian: "
                 f"libvirt-daemon-driver-storage-{_PACKAGE.get(spec.type, spec.type)}) and "
                 "restart libvirtd")
    for other in list_pools(caller, host):
        if spec.target and other.target and spec.type in FILE_TYPES \
                and os.path.realpath(other.target) == os.path.realpath(spec.target):
            raise AlreadyExistsError(f"directory {spec.target} is already the target of "
                                     f"pool '{other.name}'",
                                     hint="one directory belongs to one pool")
        if spec.type == "iscsi-direct" and other.type == "iscsi-direct" \
                and other.target_iqn == spec.target_iqn and other.host == spec.host:
            raise AlreadyExistsError(f"iSCSI target {spec.target_iqn} is already pool "
                                     f"'{other.name}'", hint="use that pool")
    if spec.type in FILE_TYPES and spec.target and not Path(spec.target).is_dir() \
            and not build:
        raise NotFoundError(f"pool '{spec.name}' target {spec.target} does not exist",
                            hint="create it, or pass --build to let libvirt create it")
    host_pools.define(host, spec.to_xml())
    try:
        if build:
            host_pools.build(host, spec.name, formats=spec.type in ("fs", "logical"))
        if spec.autostart:
            host_pools.set_autostart(host, spec.name, True)
        if start:
            host_pools.start(host, spec.name)
    except KvmopsError:
        with contextlib.suppress(KvmopsError):
            host_pools.undefine(host, spec.name)
        raise
    return info(caller, host, spec.name)


_PACKAGE = {"dir": "fs", "fs": "fs", "netfs": "fs", "logical": "logical",
            "iscsi-direct": "iscsi-direct", "rbd": "rbd"}


def _volume_users(host: Host, pool: PoolInfo, volumes: list[VolumeInfo]
                  ) -> dict[str, list[str]]:
    """Volume name -> the VMs with a disk on it (live and persistent definitions)."""
    paths = {v.path: v.name for v in volumes if v.path}
    users: dict[str, list[str]] = {}
    for domain in host.all_domains():
        try:
            documents = [domain.xml(what=f"reading VM '{domain.name}'")]
            if domain.is_active() and domain.is_persistent():
                documents.append(domain.xml(inactive=True, what=f"reading VM '{domain.name}'"))
        except NotFoundError:
            continue
        for xml in documents:
            for path, ref_pool, ref_volume in disk_references(xml):
                name = None
                if ref_pool == pool.name and ref_volume:
                    name = ref_volume
                elif path and pool.type in FILE_TYPES and path in paths:
                    name = paths[path]
                if name is not None and domain.name not in users.setdefault(name, []):
                    users[name].append(domain.name)
    return users


def _pool_users(host: Host, pool: PoolInfo) -> list[str]:
    if not pool.active:
        return []
    volumes = [parse_volume(x, pool.name) for x in host_pools.volume_xmls(host, pool.name)]
    return sorted({vm for vms in _volume_users(host, pool, volumes).values() for vm in vms})


@audited("pool.start", target="name")
def start(caller: Caller, host: Host, name: str) -> PoolInfo:
    state = host_pools.pool(host, name)
    if state.active:
        raise StateError(f"storage pool '{name}' is already active", actual="active",
                         required="inactive")
    host_pools.start(host, name)
    return info(caller, host, name)


@audited("pool.stop", target="name")
def stop(caller: Caller, host: Host, name: str) -> PoolInfo:
    """Stop a pool (an fs pool is unmounted) whose volumes no VM uses."""
    state = host_pools.pool(host, name)
    if not state.active:
        raise StateError(f"storage pool '{name}' is not active", actual="inactive",
                         required="active")
    _refuse_if_used(host, _info(state), "stop")
    host_pools.stop(host, name)
    if not state.persistent:
        pool = _info(state)
        pool.active = False
        return pool
    return info(caller, host, name)


def _refuse_if_used(host: Host, pool: PoolInfo, action: str) -> None:
    users = _pool_users(host, pool)
    if users:
        raise StateError(f"cannot {action} storage pool '{pool.name}': VM(s) "
                         f"{', '.join(users)} use its volumes",
                         hint="remove those disks (or the VMs) first")


@audited("pool.refresh", target="name")
def refresh(caller: Caller, host: Host, name: str) -> PoolInfo:
    """Read the pool's volumes again (files or LUNs added outside libvirt)."""
    state = host_pools.pool(host, name)
    if not state.active:
        raise StateError(f"storage pool '{name}' is not active: nothing to refresh",
                         hint=f"start it first ('kvmops pool start {name}')")
    host_pools.refresh(host, name)
    return info(caller, host, name)


@audited("pool.delete", target="name")
def delete(caller: Caller, host: Host, name: str) -> None:
    """Stop (when active) and undefine a pool whose volumes no VM uses. The data stays:
    the directory and its files, the device's file system, the iSCSI target's LUNs."""
    state = host_pools.pool(host, name)
    _refuse_if_used(host, _info(state), "delete")
    if state.active:
        host_pools.stop(host, name)
    if state.persistent:
        host_pools.undefine(host, name)


@audited("pool.autostart", target="name")
def set_autostart(caller: Caller, host: Host, name: str, enabled: bool) -> PoolInfo:
    state = host_pools.pool(host, name)
    if not state.persistent:
        raise StateError(f"storage pool '{name}' is transient: it has no autostart",
                         hint="define it persistently first")
    host_pools.set_autostart(host, name, enabled)
    return info(caller, host, name)


# ------------------------------------------------------------------ volumes
def _active_pool(host: Host, name: str) -> PoolInfo:
    check_name(name)
    pool = _info(host_pools.pool(host, name))
    if not pool.active:
        raise StateError(f"storage pool '{name}' is not active",
                         hint=f"start it first ('kvmops pool start {name}')")
    return pool


def list_volumes(caller: Caller, host: Host, pool: str) -> list[VolumeInfo]:
    """The volumes of an active pool, each with the VMs that use it."""
    info_ = _active_pool(host, pool)
    volumes = [parse_volume(x, pool) for x in host_pools.volume_xmls(host, pool)]
    users = _volume_users(host, info_, volumes)
    for vol in volumes:
        vol.used_by = sorted(users.get(vol.name, []))
    return volumes


def volume_info(caller: Caller, host: Host, pool: str, name: str) -> VolumeInfo:
    info_ = _active_pool(host, pool)
    check_volume_name(name)
    vol = parse_volume(host_pools.volume_xml(host, pool, name), pool)
    vol.used_by = sorted(_volume_users(host, info_, [vol]).get(vol.name, []))
    return vol


def _no_volume_management(pool: PoolInfo, action: str) -> None:
    if pool.type == "iscsi-direct":
        raise UnsupportedError(f"cannot {action} in storage pool '{pool.name}': an "
                               "iscsi-direct pool's volumes are the target's LUNs",
                               hint="manage LUNs on the iSCSI target, then 'kvmops pool "
                                    f"refresh {pool.name}'")


def _target(pool: str, volume: str) -> str:
    return f"{pool}/{volume}"


@audited("volume.create", target=lambda a: _target(a["pool"], a["spec"].name))
def create_volume(caller: Caller, host: Host, pool: str, spec: VolumeSpec) -> VolumeInfo:
    """A new volume of ``spec.capacity`` bytes and the named format (raw only in block
    pools)."""
    info_ = _active_pool(host, pool)
    _no_volume_management(info_, "create a volume")
    if info_.type in BLOCK_TYPES and spec.format != "raw":
        raise ValidationError(f"a {info_.type} pool's volumes are raw, not {spec.format}",
                              hint="give --format raw")
    if host_pools.volume_exists(host, pool, spec.name):
        raise AlreadyExistsError(f"volume '{spec.name}' already exists in storage pool "
                                 f"'{pool}'", hint="choose another name")
    path = host_pools.create_volume(host, pool, spec.to_xml(pool_type=info_.type))
    record(path, info_.type, spec.format)
    return volume_info(caller, host, pool, spec.name)


@audited("volume.clone", target=lambda a: _target(a["pool"], a["source"]))
def clone_volume(caller: Caller, host: Host, pool: str, source: str, name: str,
                 fmt: str | None = None) -> VolumeInfo:
    """A copy of ``source`` as ``name`` in the same pool, read as the format kvmops
    recorded for it (never a probed one); ``fmt`` converts (default: the same)."""
    info_ = _active_pool(host, pool)
    _no_volume_management(info_, "clone a volume")
    check_volume_name(name)
    src = volume_info(caller, host, pool, source)
    src_fmt = trusted_format(src, info_.type)
    new_fmt = check_format(fmt) if fmt else src_fmt
    if info_.type in BLOCK_TYPES and new_fmt != "raw":
        raise ValidationError(f"a {info_.type} pool's volumes are raw, not {new_fmt}")
    if src.backing:
        raise UnsupportedError(f"volume '{source}' has a backing file ({src.backing})",
                               hint="kvmops clones only volumes without a backing chain")
    if host_pools.volume_exists(host, pool, name):
        raise AlreadyExistsError(f"volume '{name}' already exists in storage pool '{pool}'",
                                 hint="choose another name")
    spec = VolumeSpec(name=name, capacity=max(src.capacity, 1024 * 1024), format=new_fmt)
    path = host_pools.clone_volume(host, pool, source, spec.to_xml(pool_type=info_.type))
    record(path, info_.type, new_fmt)
    return volume_info(caller, host, pool, name)


@audited("volume.resize", target=lambda a: _target(a["pool"], a["name"]))
def resize_volume(caller: Caller, host: Host, pool: str, name: str, capacity: int, *,
                  shrink: bool = False) -> VolumeInfo:
    """Grow a volume (or, with ``shrink``, shrink one no VM uses: the data past the new
    end is lost)."""
    info_ = _active_pool(host, pool)
    _no_volume_management(info_, "resize a volume")
    vol = volume_info(caller, host, pool, name)
    trusted_format(vol, info_.type)
    if capacity == vol.capacity:
        return vol
    if capacity < vol.capacity:
        if not shrink:
            raise ValidationError(f"volume '{name}' is {vol.capacity} bytes: {capacity} "
                                  "would shrink it", hint="pass --shrink to cut it (the "
                                  "data past the new end is lost)")
        if vol.used_by:
            raise StateError(f"cannot shrink volume '{name}': VM(s) "
                             f"{', '.join(vol.used_by)} use it", hint="remove the disk first")
    host_pools.resize_volume(host, pool, name, capacity, shrink=capacity < vol.capacity)
    return volume_info(caller, host, pool, name)


@audited("volume.delete", target=lambda a: _target(a["pool"], a["name"]))
def delete_volume(caller: Caller, host: Host, pool: str, name: str) -> None:
    """Delete a volume no VM uses (its data is gone)."""
    info_ = _active_pool(host, pool)
    _no_volume_management(info_, "delete a volume")
    vol = volume_info(caller, host, pool, name)
    if vol.used_by:
        raise StateError(f"cannot delete volume '{name}' of pool '{pool}': VM(s) "
                         f"{', '.join(vol.used_by)} use it",
                         hint="remove the disk (or the VM) first")
    host_pools.delete_volume(host, pool, name)


# ------------------------------------------------------------------ data
class Reader(Protocol):
    """Where upload bytes come from: a file, or a request body."""

    def read(self, size: int = -1, /) -> bytes: ...


class Writer(Protocol):
    """Where download bytes go: a file, or a response."""

    def write(self, data: bytes, /) -> object: ...


def upload_limit(vol: VolumeInfo, fmt: str) -> int:
    """The most bytes an upload of ``fmt`` into ``vol`` may carry: its capacity (raw);
    for a qcow2 file, the capacity plus room for its metadata (tables and header: at
    most 1/64 of the virtual size plus a few clusters, given with a margin)."""
    if fmt == "qcow2":
        return vol.capacity + vol.capacity // 8 + 4 * 1024 * 1024
    return vol.capacity


def check_upload(caller: Caller, host: Host, pool: str, name: str, fmt: str, length: int
                 ) -> VolumeInfo:
    """Every refusal an upload of ``length`` bytes of ``fmt`` can meet before its bytes
    are read (the API asks before it reads a request body): the format named and the
    volume's, no VM using the volume, the size. The volume."""
    return _checked_upload(caller, host, pool, name, fmt, length)[1]


def _checked_upload(caller: Caller, host: Host, pool: str, name: str, fmt: str, length: int
                    ) -> tuple[PoolInfo, VolumeInfo]:
    info_ = _active_pool(host, pool)
    fmt = check_format(fmt, "uploaded file")
    vol = volume_info(caller, host, pool, name)
    vol_fmt = trusted_format(vol, info_.type)
    if fmt != vol_fmt:
        raise ValidationError(f"volume '{name}' of pool '{pool}' is {vol_fmt}; the file is "
                              f"{fmt}", hint=f"upload a {vol_fmt} file, or create a {fmt} "
                              "volume for it")
    if vol.used_by:
        raise StateError(f"cannot upload into volume '{name}': VM(s) "
                         f"{', '.join(vol.used_by)} use it", hint="shut them down and "
                         "remove the disk first")
    limit = upload_limit(vol, fmt)
    if length > limit:
        raise ValidationError(f"the upload is {length} bytes; volume '{name}' of pool "
                              f"'{pool}' holds {vol.capacity}" + (
                                  f" (a qcow2 file up to {limit})" if fmt == "qcow2" else ""),
                              hint=f"resize the volume first ('kvmops volume resize {pool} "
                                   f"{name} SIZE') or upload less")
    return info_, vol


class _Prefixed:
    """``head`` (bytes already read from ``rest``), then the rest."""

    def __init__(self, head: bytes, rest: Reader) -> None:
        self.head = head
        self.rest = rest

    def read(self, size: int = -1, /) -> bytes:
        if self.head:
            out, self.head = self.head[:size], self.head[size:]
            return out
        return self.rest.read(size)


def _check_qcow2(source: Reader, length: int, vol: VolumeInfo, what: str) -> bytes:
    """Read the qcow2 header of an upload and refuse what :mod:`kvmops.storage.qcow2`
    finds; the bytes read (they are sent first)."""
    head = host_pools.read_exactly(source.read, min(length, qcow2.V3_MIN_HEADER))
    head += host_pools.read_exactly(source.read, min(length, qcow2.needed(head)) - len(head))
    try:
        header = qcow2.parse(head)
    except qcow2.HeaderError as err:
        raise ValidationError(f"{what} is not a qcow2 file kvmops can read: {err}",
                              hint="name its real format (--format raw), or convert it "
                                   "('qemu-img convert -O qcow2 IN OUT')") from None
    if header.backing or header.data_file:
        raise PathRefusedError(f"{what} names a backing or data file "
                               f"({'backing file' if header.backing else 'data file'})",
                               hint="flatten it first ('qemu-img convert -f qcow2 -O "
                                    "qcow2 IN OUT')")
    if header.encrypted:
        raise UnsupportedError(f"{what} is encrypted", hint="decrypt it first")
    if header.virtual_size > vol.capacity:
        raise ValidationError(f"{what} is a qcow2 disk of {header.virtual_size} bytes; "
                              f"volume '{vol.name}' holds {vol.capacity}",
                              hint=f"resize the volume first ('kvmops volume resize "
                                   f"{vol.pool} {vol.name} {header.virtual_size}')")
    return head


def _both(job: Progress, progress: Progress | None) -> Progress:
    """Progress to the command's job row (``kvmops job list``, the API's jobs) and to
    its bar."""
    if progress is None:
        return job

    def report(done: int, total: int) -> None:
        job(done, total)
        progress(done, total)

    return report


def _upload(caller: Caller, host: Host, pool: str, name: str, source: Reader, length: int,
            fmt: str, what: str, progress: Progress | None) -> VolumeInfo:
    info_, vol = _checked_upload(caller, host, pool, name, fmt, length)
    fmt = check_format(fmt, "uploaded file")
    if fmt == "qcow2":
        source = _Prefixed(_check_qcow2(source, length, vol, what), source)
    with track(caller, "volume.upload", _target(pool, name)) as job:
        host_pools.upload(host, pool, name, source, length, _both(job.bytes, progress))
    record(vol.path, info_.type, fmt)
    with contextlib.suppress(KvmopsError):
        host_pools.refresh(host, pool)
    done = parse_volume(host_pools.volume_xml(host, pool, name), pool)
    done.used_by = []  # checked above: no VM uses it (no second scan of every VM)
    return done


@audited("volume.upload", target=lambda a: _target(a["pool"], a["name"]))
def upload(caller: Caller, host: Host, pool: str, name: str, source: Path, fmt: str,
           progress: Progress | None = None) -> VolumeInfo:
    """Write the file ``source`` (of the named format ``fmt``, which must be the
    volume's) into the volume through a libvirt stream. A qcow2 file is read as qcow2
    from its header (never probed) and refused when it names a backing or data file
    (the volume would reach files outside the pool), is encrypted or larger than the
    volume; a raw one may not be longer than the volume."""
    _active_pool(host, pool)
    check_format(fmt, "uploaded file")
    real = policy().image_path(source, trusted=caller.trusted_paths, what="upload source")
    if not real.is_file():
        raise NotFoundError(f"upload source {source} is not a file", hint="check the path")
    with open(real, "rb") as fh:
        return _upload(caller, host, pool, name, fh, os.fstat(fh.fileno()).st_size, fmt,
                       str(real), progress)


@audited("volume.upload", target=lambda a: _target(a["pool"], a["name"]))
def upload_data(caller: Caller, host: Host, pool: str, name: str, data: Reader, length: int,
                fmt: str, progress: Progress | None = None) -> VolumeInfo:
    """:func:`upload` from a stream of ``length`` bytes (a request body: never held
    whole in memory), with the same checks."""
    return _upload(caller, host, pool, name, data, length, fmt, "the uploaded data",
                   progress)


def download_size(caller: Caller, host: Host, pool: str, name: str) -> tuple[VolumeInfo, int]:
    """The volume and how many bytes a download of it carries: a file volume's file
    size (a qcow2 volume comes as its qcow2 file), a block volume's capacity."""
    _pool, vol, length = _download_size(host, pool, name)
    return vol, length


def _download_size(host: Host, pool: str, name: str) -> tuple[PoolInfo, VolumeInfo, int]:
    info_ = _active_pool(host, pool)
    check_volume_name(name)
    # Who uses the volume does not matter to a read: no scan of every VM's definition.
    vol = parse_volume(host_pools.volume_xml(host, pool, name), pool)
    length = vol.capacity
    if info_.type in FILE_TYPES and vol.path:
        trusted_format(vol, info_.type)
        with contextlib.suppress(OSError):
            length = os.stat(vol.path).st_size
    return info_, vol, length


@audited("volume.download", target=lambda a: _target(a["pool"], a["name"]))
def download_data(caller: Caller, host: Host, pool: str, name: str, sink: Writer,
                  length: int, progress: Progress | None = None) -> int:
    """Send the volume's first ``length`` bytes (:func:`download_size`) into ``sink``
    through a libvirt stream (a response: never held whole in memory); the bytes."""
    return host_pools.download(host, pool, name, sink, length, progress, limit=length)


class _WrittenBack:
    """A file that asks the kernel to start writing back each WRITEBACK bytes once
    written (``posix_fadvise`` DONTNEED: write-back begins, clean pages leave the page
    cache): the closing fdatasync then waits for the last few MiB instead of the whole
    volume, and a large download does not push the host's cache out."""

    WRITEBACK = 8 * 1024 * 1024

    def __init__(self, fh: BinaryIO) -> None:
        self.fh = fh
        self.fd = fh.fileno()
        self.written = 0
        self.started = 0

    def write(self, data: bytes, /) -> int:
        count = self.fh.write(data)
        self.written += len(data)
        if self.written - self.started >= self.WRITEBACK:
            with contextlib.suppress(OSError):
                os.posix_fadvise(self.fd, self.started, self.written - self.started,
                                 os.POSIX_FADV_DONTNEED)
            self.started = self.written
        return count if count is not None else len(data)


@audited("volume.download", target=lambda a: _target(a["pool"], a["name"]))
def download(caller: Caller, host: Host, pool: str, name: str, dest: Path, *,
             overwrite: bool = False, progress: Progress | None = None) -> int:
    """Copy the volume's bytes (a qcow2 volume as its qcow2 file) to ``dest`` through a
    libvirt stream; written to a temporary file and renamed when complete. The bytes."""
    info_, vol, length = _download_size(host, pool, name)
    real = policy().image_path(dest, trusted=caller.trusted_paths, what="download target")
    if real.exists() and not overwrite:
        raise AlreadyExistsError(f"{real} exists", hint="choose another file, or pass "
                                 "--overwrite")
    if not real.parent.is_dir():
        raise NotFoundError(f"directory {real.parent} does not exist",
                            hint="create it first")
    fd, tmp = tempfile.mkstemp(prefix=f".{real.name}.", dir=real.parent)
    try:
        with os.fdopen(fd, "wb", buffering=0) as fh, \
                track(caller, "volume.download", _target(pool, name)) as job:
            got = host_pools.download(host, pool, name, _WrittenBack(fh), length,
                                      _both(job.bytes, progress))
            os.fdatasync(fh.fileno())
        os.replace(tmp, real)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    if info_.type in FILE_TYPES:
        with contextlib.suppress(StorageError):
            record(str(real), "dir", trusted_format(vol, info_.type))
    return got
