"""What kvmops checks before it acts on a volume: its format (recorded, never probed),
who uses it, and the disk a VM gets from a pool.

libvirt refreshes a file pool by reading each file's first bytes, so the format libvirt
reports for a file volume can be a guess from bytes a guest wrote. kvmops records the
format of each file volume it creates, clones or uploads (:mod:`kvmops.images.records`,
an attribute only root can set) and refuses to clone, resize, upload into or attach a
file volume whose libvirt format differs from that record (or, without a record, is not
raw). Volumes of block pools (iscsi-direct, logical, rbd) are always raw.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from kvmops.errors import StorageError, UnsupportedError
from kvmops.host import pools as host_pools
from kvmops.host.connection import Host
from kvmops.images import records
from kvmops.storage.model import (
    BLOCK_TYPES,
    FILE_TYPES,
    PoolInfo,
    VolumeInfo,
    VolumeSpec,
    check_format,
    parse_pool,
    parse_volume,
)


def pool_info(host: Host, name: str) -> PoolInfo:
    state = host_pools.pool(host, name)
    return parse_pool(state.xml, active=state.active, persistent=state.persistent,
                      autostart=state.autostart)


def volume(host: Host, pool: str, name: str) -> VolumeInfo:
    return parse_volume(host_pools.volume_xml(host, pool, name), pool)


def trusted_format(vol: VolumeInfo, pool_type: str) -> str:
    """The format kvmops may open ``vol`` as (see the module's doc)."""
    if pool_type not in FILE_TYPES:
        return "raw"
    seen = vol.format or "raw"
    recorded = records.recorded_format(Path(vol.path)) if vol.path else None
    if recorded is not None:
        if seen != recorded:
            raise StorageError(
                f"volume '{vol.name}' of pool '{vol.pool}' was made as {recorded} but its "
                f"bytes now look like {seen}", hint="a guest may have written an image "
                "header into it: kvmops will not read it as anything but what it made; "
                "copy the data out with 'kvmops volume download' and inspect it")
        return recorded
    if seen != "raw":
        raise StorageError(
            f"volume '{vol.name}' of pool '{vol.pool}' has no format recorded by kvmops and "
            f"libvirt reads it as {seen} from its bytes", hint="kvmops never trusts a probed "
            "format: if you trust the file, record it with 'setfattr -n "
            f"{records.ATTRIBUTE} -v {seen} {vol.path}' (as root)")
    return "raw"


def record(path: str | None, pool_type: str, fmt: str) -> None:
    if path and pool_type in FILE_TYPES:
        records.record_format(Path(path), fmt)


@dataclass(frozen=True)
class PoolDisk:
    """A VM disk from a pool: a file (file pools) or a pool/volume reference."""

    pool: str
    volume: str
    fmt: str
    path: str | None  # file pools: the volume's file
    created: bool


def vm_disk(host: Host, pool: str, *, volume_name: str | None, size: int | None,
            fmt: str | None, default_name: str) -> PoolDisk:
    """The disk ``vm create --disk pool=NAME,...`` gets: a new volume of ``size`` (named
    ``default_name`` (plus ``.FORMAT`` in file pools) unless ``volume_name``), or the
    existing ``volume_name``."""
    info = pool_info(host, pool)
    if not info.active:
        raise StorageError(f"storage pool '{pool}' is not active",
                           hint=f"start it first ('kvmops pool start {pool}')")
    if size is not None:
        if info.type == "iscsi-direct":
            raise UnsupportedError(
                f"storage pool '{pool}' is iscsi-direct: its volumes are the target's LUNs, "
                "kvmops cannot create one", hint=f"use an existing LUN: --disk pool={pool},"
                f"volume=unit:0:0:1 (see 'kvmops volume list {pool}')")
        fmt = "raw" if info.type in BLOCK_TYPES else (fmt or "qcow2")
        name = volume_name or (f"{default_name}.{fmt}" if info.type in FILE_TYPES
                               else default_name)
        spec = VolumeSpec(name=name, capacity=size, format=fmt)
        path = host_pools.create_volume(host, pool, spec.to_xml(pool_type=info.type))
        record(path, info.type, fmt)
        return PoolDisk(pool, spec.name, fmt, path if info.type in FILE_TYPES else None,
                        True)
    assert volume_name is not None
    vol = volume(host, pool, volume_name)
    trusted = trusted_format(vol, info.type)
    if fmt is not None and check_format(fmt, "disk") != trusted:
        raise StorageError(f"volume '{volume_name}' of pool '{pool}' is {trusted}, not {fmt}",
                           hint=f"leave format= out, or give format={trusted}")
    return PoolDisk(pool, vol.name, trusted, vol.path if info.type in FILE_TYPES else None,
                    False)
