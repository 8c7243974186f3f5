"""kvmops.host.pools' one lookup of "which pool holds this directory or file" (the live
copy's target pool, the preflight's shared-storage fact, the cold copy's volumes) against
a fake libvirt connection: a file put there since the pool's last scan is found after one
refresh of the pool of its directory, paths compare normalised, other pools are left.
Also the stream helpers the volume upload/download and the cold migration share:
read_exactly (less than asked at a time), send_all (a send that takes less), receive
(would-block retried, a failure refused), finishing (finish at the end, abort on a
failure)."""

from __future__ import annotations

from typing import Any

import libvirt
import pytest

from kvmops.errors import StorageError
from kvmops.host import pools


class _Volume:
    def __init__(self, pool: _Pool, name: str) -> None:
        self.pool, self.name = pool, name

    def storagePoolLookupByVolume(self) -> _Pool:
        return self.pool


class _Pool:
    def __init__(self, name: str, path: str | None, files: set[str],
                 listed: set[str] | None = None) -> None:
        self._name, self.path, self.files = name, path, files
        self.listed = set(files) if listed is None else listed
        self.refreshed = 0

    def name(self) -> str:
        return self._name

    def XMLDesc(self, flags: int) -> str:
        target = f"<target><path>{self.path}</path></target>" if self.path else ""
        return f"<pool type='dir'><name>{self._name}</name>{target}</pool>"

    def refresh(self, flags: int) -> int:
        self.refreshed += 1
        self.listed = set(self.files)
        return 0

    def storageVolLookupByName(self, name: str) -> _Volume:
        if name not in self.listed:
            raise libvirt.libvirtError(f"no volume {name}")
        return _Volume(self, name)


class _Conn:
    def __init__(self, *pools: _Pool) -> None:
        self.pools = list(pools)

    def listAllStoragePools(self, flags: int) -> list[_Pool]:
        return self.pools

    def storageVolLookupByPath(self, path: str) -> _Volume:
        for pool in self.pools:
            for name in pool.listed:
                if pool.path and f"{pool.path.rstrip('/')}/{name}" == path:
                    return _Volume(pool, name)
        raise libvirt.libvirtError(f"no volume at {path}")


class _Host:
    uri = "test:///fake"

    def __init__(self, conn: _Conn) -> None:
        self.conn = conn


def _host(*found: _Pool) -> Any:
    return _Host(_Conn(*found))


def test_a_listed_file_is_found_without_a_refresh() -> None:
    images = _Pool("images", "/var/lib/images", {"a.qcow2"})
    host = _host(_Pool("iso", "/srv/iso", set()), images)
    assert pools.pool_holding(host, "/var/lib/images/a.qcow2") == "images"
    assert images.refreshed == 0


def test_a_file_new_since_the_scan_is_found_after_one_refresh_of_its_pool() -> None:
    other = _Pool("other", "/srv/other", set())
    images = _Pool("images", "/var/lib/images/", {"new.raw"}, listed=set())
    host = _host(other, images)
    volume = pools.volume_at(host, "/var/lib/images/new.raw")
    assert volume is not None and volume.name == "new.raw"
    assert (images.refreshed, other.refreshed) == (1, 0)


def test_no_pool_of_the_directory_or_no_such_file_is_none() -> None:
    host = _host(_Pool("images", "/var/lib/images", {"a.qcow2"}), _Pool("bare", None, set()))
    assert pools.pool_holding(host, "/elsewhere/a.qcow2") is None
    assert pools.volume_at(host, "/var/lib/images/missing.raw") is None


def test_the_pool_of_a_directory_compares_paths_normalised() -> None:
    host = _host(_Pool("bare", None, set()), _Pool("images", "/var/lib/images/", set()))
    assert pools.pool_in_directory(host, "/var/lib//images") == "images"
    assert pools.pool_in_directory(host, "/var/lib") is None


def test_read_exactly_gathers_short_reads_and_stops_at_the_end() -> None:
    data = iter([b"ab", b"c", b"defg", b""])
    asked: list[int] = []

    def read(size: int) -> bytes:
        asked.append(size)
        return next(data)[:size]

    assert pools.read_exactly(read, 5) == b"abcde"
    assert asked == [5, 3, 2]
    short = [b"xy", b""]
    assert pools.read_exactly(lambda size: short.pop(0), 10) == b"xy"


class _Stream:
    def __init__(self, answers: list[Any] | None = None, takes: int = 3) -> None:
        self.answers, self.takes = answers or [], takes
        self.sent: list[bytes] = []
        self.ended = ""

    def send(self, data: bytes) -> int:
        self.sent.append(data[:self.takes])
        return min(len(data), self.takes)

    def recv(self, size: int) -> Any:
        return self.answers.pop(0)

    def finish(self) -> None:
        self.ended = "finished"

    def abort(self) -> None:
        self.ended = "aborted"


def test_send_all_sends_the_rest_after_a_short_send() -> None:
    stream = _Stream(takes=3)
    pools.send_all(stream, memoryview(b"abcdefg"), "sending")
    assert stream.sent == [b"abc", b"def", b"g"]


def test_receive_retries_would_block_and_refuses_a_failed_stream() -> None:
    stream = _Stream([-2, b"data", b"", -1])
    assert pools.receive(stream, "reading", 8) == b"data"
    assert pools.receive(stream, "reading", 8) == b""
    with pytest.raises(StorageError, match="reading: the stream failed"):
        pools.receive(stream, "reading", 8)


def test_finishing_finishes_at_the_end_and_aborts_on_a_failure() -> None:
    done = _Stream()
    with pools.finishing(done, "copying"):
        pass
    failed = _Stream()
    with pytest.raises(KeyboardInterrupt), pools.finishing(failed, "copying"):
        raise KeyboardInterrupt
    assert (done.ended, failed.ended) == ("finished", "aborted")
