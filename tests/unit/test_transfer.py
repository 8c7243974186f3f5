"""kvmops.host.transfer without a libvirt daemon: a sparse file's data and holes, how a
hole goes out (zeros where the new volume already holds bytes and at the end, a hole in
between), and a copy through a fake sparse stream: the digest is that of the file's
bytes, holes are not sent, cancelling stops it and aborts the stream."""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kvmops.errors import CancelledError
from kvmops.host import transfer
from kvmops.host.transfer import TAIL, Disk, Segment

MIB = 1024 * 1024


def _sparse_file(path: Path) -> bytes:
    """4 MiB: data at 0 and at 2 MiB, holes elsewhere; its full content."""
    with open(path, "wb") as fh:
        fh.write(b"\x01" * 4096)
        fh.seek(2 * MIB)
        fh.write(b"\x02" * 8192)
        fh.truncate(4 * MIB)
    return path.read_bytes()


def test_file_segments_give_data_and_holes(tmp_path: Path) -> None:
    path = tmp_path / "disk.raw"
    content = _sparse_file(path)
    fd = os.open(path, os.O_RDONLY)
    try:
        segments = list(transfer._file_segments(fd, len(content)))
    finally:
        os.close(fd)
    rebuilt = b"".join(s if isinstance(s, bytes) else bytes(s) for s in segments)
    assert rebuilt == content
    holes = [s for s in segments if isinstance(s, int)]
    assert holes and sum(holes) >= 3 * MIB  # the file system keeps the holes


def test_a_hole_is_zeros_over_existing_bytes_and_at_the_end() -> None:
    length = 10 * MIB
    # A hole inside the fresh qcow2 metadata (up to 196 KiB): zeros there, then a hole.
    assert transfer._hole_parts(64 * 1024, MIB, length, 196 * 1024, sparse=True) == [
        (64 * 1024, 132 * 1024, True), (196 * 1024, MIB - 132 * 1024, False)]
    # A hole that ends the file: its last TAIL bytes are zeros.
    assert transfer._hole_parts(8 * MIB, 2 * MIB, length, 0, sparse=True) == [
        (8 * MIB, 2 * MIB - TAIL, False), (length - TAIL, TAIL, True)]
    assert transfer._hole_parts(MIB, MIB, length, 0, sparse=True) == [(MIB, MIB, False)]
    assert transfer._hole_parts(MIB, MIB, length, 0, sparse=False) == [(MIB, MIB, True)]


class _Stream:
    def __init__(self) -> None:
        self.data = bytearray()
        self.holes: list[int] = []
        self.finished = self.aborted = False

    def send(self, data: bytes) -> int:
        self.data += data
        return len(data)

    def sendHole(self, length: int, flags: int) -> int:
        self.holes.append(length)
        self.data += bytes(length)
        return 0

    def finish(self) -> None:
        self.finished = True

    def abort(self) -> None:
        self.aborted = True


class _Volume:
    def upload(self, stream: _Stream, offset: int, length: int, flags: int) -> int:
        assert (offset, flags) == (0, 1)  # the sparse stream
        return 0


class _Conn:
    def __init__(self) -> None:
        self.stream = _Stream()

    def storagePoolLookupByName(self, name: str) -> Any:
        return self

    def storageVolLookupByName(self, name: str) -> _Volume:
        return _Volume()

    def newStream(self, flags: int) -> _Stream:
        return self.stream


class _Target:
    uri = "qemu+tcp://target/system"

    def __init__(self) -> None:
        self.conn = _Conn()


class _Source(Disk):
    def __init__(self, segments: list[Segment]) -> None:
        self.path = "/src/disk.qcow2"
        self.parts = segments
        self.length = sum(s if isinstance(s, int) else len(s) for s in segments)

    @contextlib.contextmanager
    def segments(self) -> Iterator[Iterator[Segment]]:
        yield iter(self.parts)


def test_send_skips_holes_and_hashes_the_content() -> None:
    parts: list[Segment] = [b"Q" * 1000, 300_000, b"d" * 5000, 3 * MIB]
    source = _Source(parts)
    target = _Target()
    done: list[int] = []
    sent = transfer.send(source, target, "p", "v", dense_until=200_000,  # type: ignore[arg-type]
                         tick=done.append)
    content = b"Q" * 1000 + bytes(300_000) + b"d" * 5000 + bytes(3 * MIB)
    assert sent.sha256 == hashlib.sha256(content).hexdigest()
    assert sent.length == len(content) == source.length
    stream = target.conn.stream
    assert bytes(stream.data) == content and stream.finished
    assert stream.holes == [301_000 - 200_000, 3 * MIB - TAIL]
    assert sent.wire == len(content) - sum(stream.holes)
    assert done[-1] == len(content)
    assert transfer.digest(source) == sent  # holes hashed as zeros on the way back too


def test_a_cancelled_send_aborts_the_stream() -> None:
    target = _Target()
    with pytest.raises(CancelledError):
        transfer.send(_Source([b"x" * 10, 5 * MIB]), target, "p", "v",  # type: ignore[arg-type]
                      dense_until=0, stop=lambda: True)
    assert target.conn.stream.aborted and not target.conn.stream.finished
