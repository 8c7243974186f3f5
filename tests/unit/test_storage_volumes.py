"""The format kvmops trusts for a volume (its record, never libvirt's guess from the
bytes) and the ``--disk pool=...`` forms of ``vm create``."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from kvmops.errors import StorageError, ValidationError
from kvmops.images import records
from kvmops.storage.model import VolumeInfo
from kvmops.storage.volumes import trusted_format
from kvmops.vm.lifecycle import DiskRequest


def _xattrs_work(path: Path) -> bool:
    try:
        os.setxattr(path, records.ATTRIBUTE, b"raw")
    except OSError:
        return False
    os.removexattr(path, records.ATTRIBUTE)
    return True


@pytest.fixture
def volume_file(tmp_path: Path) -> Path:
    path = tmp_path / "v.img"
    path.write_bytes(b"\0" * 4096)
    if not _xattrs_work(path):
        pytest.skip("this file system (or user) has no trusted.* extended attributes")
    return path


def _vol(path: Path, seen: str | None) -> VolumeInfo:
    return VolumeInfo(name=path.name, pool="p", path=str(path), format=seen)


def test_block_pools_are_raw() -> None:
    assert trusted_format(VolumeInfo(name="unit:0:0:1", pool="p"), "iscsi-direct") == "raw"
    assert trusted_format(VolumeInfo(name="lv", pool="p", format="qcow2"), "logical") == "raw"


def test_recorded_format_must_match_libvirts(volume_file: Path) -> None:
    records.record_format(volume_file, "qcow2")
    assert trusted_format(_vol(volume_file, "qcow2"), "dir") == "qcow2"
    records.record_format(volume_file, "raw")
    assert trusted_format(_vol(volume_file, "raw"), "fs") == "raw"
    with pytest.raises(StorageError) as err:
        trusted_format(_vol(volume_file, "qcow2"), "dir")  # a guest wrote a qcow2 header
    assert "was made as raw but its bytes now look like qcow2" in str(err.value)


def test_unrecorded_volume_is_raw_or_refused(volume_file: Path) -> None:
    assert trusted_format(_vol(volume_file, "raw"), "dir") == "raw"
    assert trusted_format(_vol(volume_file, None), "dir") == "raw"
    with pytest.raises(StorageError) as err:
        trusted_format(_vol(volume_file, "qcow2"), "netfs")
    assert "never trusts a probed format" in (err.value.hint or "")


def test_disk_request_pool_forms() -> None:
    new = DiskRequest.parse("pool=p1,size=64M,format=raw")
    assert (new.pool, new.size, new.fmt, new.volume, new.path) == ("p1", 64 << 20, "raw",
                                                                    None, None)
    existing = DiskRequest.parse("pool=san,volume=unit:0:0:1")
    assert (existing.pool, existing.volume, existing.size) == ("san", "unit:0:0:1", None)
    named = DiskRequest.parse("pool=p1,size=1G,volume=data.qcow2,bus=scsi")
    assert (named.volume, named.bus) == ("data.qcow2", "scsi")
    assert DiskRequest.parse("size=64M").pool is None  # the old forms stay as they were


@pytest.mark.parametrize(("text", "fragment"), [
    ("pool=p1", "give size= (a new volume) or volume="),
    ("pool=p1,path=/x.qcow2", "path= is not for a pool disk"),
    ("volume=v1", "volume= needs pool="),
    ("pool=p1,size=64M,colour=red", "unknown key(s) colour"),
])
def test_disk_request_pool_refusals(text: str, fragment: str) -> None:
    with pytest.raises(ValidationError) as err:
        DiskRequest.parse(text)
    assert fragment in str(err.value)
