"""A disk's bytes from one host to another through libvirt streams, hashed on the way
(cold migration, :mod:`kvmops.services.coldmigration`).

A source disk is read as the bytes of its file, never as an image: from the file itself
when the source host is this machine, else through the source's libvirt -- the storage
volume of a pool that holds the file, or, when none does, of a *transient* dir pool made
for the file's directory for the length of the read (destroyed again; a transient pool
does not outlive its libvirtd). The bytes go into a volume the caller created in the
target's pool (``storageVol.upload``) through sparse streams: the file's holes are not
sent (:func:`send`). SHA-256 is computed while the content is sent, and :func:`digest`
reads a volume back (downloaded, or the file itself on this machine) so the copy can be
compared byte for byte. Nothing here reads a format from bytes.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import itertools
import os
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import libvirt

from kvmops.errors import CancelledError, NotFoundError, StorageError
from kvmops.host.connection import Host
from kvmops.host.errors import call, translate
from kvmops.host.pools import (
    CHUNK,
    finishing,
    read_exactly,
    receive,
    send_all,
    volume_at,
)

#: Told the bytes done so far of one disk (called for every chunk: throttle it yourself).
Tick = Callable[[int], None]
#: True when the operator asked to stop.
Stop = Callable[[], bool]

TRANSIENT_PREFIX = "kvmops-xfer-"
#: The last bytes of a file are sent as data even when they are a hole, so the target
#: file reaches its full length whatever the receiving side does with a final hole.
TAIL = 64 * 1024
_ZEROS = bytes(CHUNK)
#: A disk's content in order: bytes, or the length of a hole (zeros not stored).
Segment = bytes | int


@dataclass(frozen=True)
class Digest:
    """What a disk's bytes are: their SHA-256 (hex, holes hashed as the zeros they
    read as) and how many there are; ``wire``: the bytes a copy sent as data (holes
    are not sent)."""

    sha256: str
    length: int
    wire: int = field(default=0, compare=False)


def _zeros(count: int) -> Iterator[memoryview]:
    view = memoryview(_ZEROS)
    while count > 0:
        part = min(count, CHUNK)
        yield view[:part]
        count -= part


def _file_segments(fd: int, length: int) -> Iterator[Segment]:
    """A local file's data and holes (SEEK_DATA/SEEK_HOLE; all data where the file
    system cannot tell)."""
    pos = 0
    sparse = True
    while pos < length:
        end = length
        if sparse:
            try:
                data_at = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError as err:
                if err.errno == errno.ENXIO:  # no data after pos: a hole to the end
                    yield length - pos
                    return
                sparse = False  # EINVAL, EOPNOTSUPP: read it all
                data_at = pos
            if data_at > pos:
                hole = min(data_at, length) - pos
                yield hole
                pos += hole
                continue
            if sparse:
                end = min(os.lseek(fd, pos, os.SEEK_HOLE), length)
        os.lseek(fd, pos, os.SEEK_SET)
        while pos < end:
            chunk = os.read(fd, min(CHUNK, end - pos))
            if not chunk:
                raise StorageError(f"the file ended after {pos} of {length} bytes",
                                   hint="was the disk changed while it was read? (the VM "
                                        "must stay shut off)")
            yield chunk
            pos += len(chunk)


def _stream_segments(stream: Any, what: str, *, sparse: bool) -> Iterator[Segment]:
    """A download stream's data and (``sparse``) holes, to its end."""
    stop_at_hole = getattr(libvirt, "VIR_STREAM_RECV_STOP_AT_HOLE", 1)
    while True:
        if sparse:
            data = call(what, stream.recvFlags, CHUNK, stop_at_hole)
        else:
            data = call(what, stream.recv, CHUNK)
        if isinstance(data, int):
            if data == -3:  # a hole here
                hole = int(call(what, stream.recvHole, 0))
                if hole:
                    yield hole
                continue
            if data == -2:  # would block: never on a blocking stream
                continue
            raise StorageError(f"{what}: the stream failed")
        if not data:
            return
        yield bytes(data)


class Disk:
    """A disk file on a host, opened by :func:`open_disk`: its length, its first bytes,
    its content in order with its holes (:meth:`segments`), and its removal."""

    path: str
    length: int

    def head(self, size: int) -> bytes:
        raise NotImplementedError

    def segments(self) -> contextlib.AbstractContextManager[Iterator[Segment]]:
        raise NotImplementedError

    def delete(self) -> None:
        raise NotImplementedError


class _LocalDisk(Disk):
    """A file on this machine (read directly; removed through its pool when in one)."""

    def __init__(self, path: str, volume: Any | None) -> None:
        self.path = path
        self.volume = volume
        try:
            self.length = os.stat(path).st_size
        except OSError as err:
            raise NotFoundError(f"disk file {path} cannot be read: {err.strerror}",
                                hint="is the VM's disk where its definition says?") from err

    def head(self, size: int) -> bytes:
        with open(self.path, "rb") as fh:
            return fh.read(size)

    @contextlib.contextmanager
    def segments(self) -> Iterator[Iterator[Segment]]:
        with open(self.path, "rb", buffering=0) as fh:
            yield _file_segments(fh.fileno(), self.length)

    def delete(self) -> None:
        if self.volume is not None:
            call(f"deleting {self.path}", self.volume.delete, 0)
        else:
            os.unlink(self.path)


class _StreamReader:
    """A volume's download stream as a reader: ``read`` gives at most ``size`` bytes,
    b"" at the end."""

    def __init__(self, stream: Any, what: str) -> None:
        self.stream = stream
        self.what = what
        self.ended = False

    def read(self, size: int, /) -> bytes:
        if self.ended:
            return b""
        data = receive(self.stream, self.what, size)
        self.ended = not data
        return data


class _VolumeDisk(Disk):
    """A volume of a pool on a host that may be another machine (read through libvirt)."""

    def __init__(self, host: Host, path: str, volume: Any) -> None:
        self.host = host
        self.path = path
        self.volume = volume
        flags = getattr(libvirt, "VIR_STORAGE_VOL_GET_PHYSICAL", 1)
        info = call(f"reading volume {path}", volume.infoFlags, flags)
        self.length = int(info[2])  # the file's size (not libvirt's guess of a capacity)

    def head(self, size: int) -> bytes:
        what = f"reading {self.path} on {self.host.uri}"
        stream = call(what, self.host.conn.newStream, 0)
        call(what, self.volume.download, stream, 0, min(size, self.length) or 1, 0)
        reader = _StreamReader(stream, what)
        with finishing(stream, what):
            head = read_exactly(reader.read, size)
            while reader.read(CHUNK):  # to the end: a stream is finished only there
                pass
        return head

    @contextlib.contextmanager
    def segments(self) -> Iterator[Iterator[Segment]]:
        what = f"reading {self.path} on {self.host.uri}"
        flags = getattr(libvirt, "VIR_STORAGE_VOL_DOWNLOAD_SPARSE_STREAM", 0)
        stream = call(what, self.host.conn.newStream, 0)
        call(what, self.volume.download, stream, 0, self.length, flags)
        found = _stream_segments(stream, what, sparse=bool(flags))
        with finishing(stream, what):
            yield found
            for _rest in found:  # to the end: a stream is finished only there
                pass

    def delete(self) -> None:
        call(f"deleting {self.path} on {self.host.uri}", self.volume.delete, 0)


@contextlib.contextmanager
def _transient_pool(host: Host, directory: str) -> Iterator[Any]:
    name = f"{TRANSIENT_PREFIX}{uuid.uuid4().hex[:12]}"
    xml = (f"<pool type='dir'><name>{name}</name><target><path>"
           f"{_xml_text(directory)}</path></target></pool>")
    pool = call(f"reading directory {directory} on {host.uri} (a transient pool)",
                host.conn.storagePoolCreateXML, xml, 0)
    try:
        yield pool
    finally:
        with contextlib.suppress(libvirt.libvirtError):
            pool.destroy()


def _xml_text(text: str) -> str:
    return (text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
            .replace("'", "&apos;"))


@contextlib.contextmanager
def open_disk(host: Host, path: str, *, local: bool) -> Iterator[Disk]:
    """The disk file ``path`` of ``host``; ``local``: that host is this machine (its
    files are read directly)."""
    if not os.path.isabs(path):
        raise StorageError(f"disk path {path!r} is not absolute")
    if local:
        yield _LocalDisk(path, volume_at(host, path))
        return
    volume = volume_at(host, path)
    if volume is not None:
        yield _VolumeDisk(host, path, volume)
        return
    with _transient_pool(host, os.path.dirname(path)) as pool:
        try:
            volume = pool.storageVolLookupByName(os.path.basename(path))
        except libvirt.libvirtError as err:
            if err.get_error_code() == libvirt.VIR_ERR_NO_STORAGE_VOL:
                raise NotFoundError(f"disk file {path} not found on {host.uri}",
                                    hint="is the VM's disk where its definition says?"
                                    ) from err
            raise translate(err, f"looking up {path} on {host.uri}") from err
        yield _VolumeDisk(host, path, volume)


def _check(stop: Stop | None, what: str) -> None:
    if stop is not None and stop():
        raise CancelledError(f"{what}: cancelled")


def send(source: Disk, target: Host, pool: str, volume: str, *, dense_until: int,
         tick: Tick | None = None, stop: Stop | None = None) -> Digest:
    """Copy ``source`` into the volume ``volume`` of ``pool`` on ``target`` (created by
    the caller) through a sparse stream: its holes are not sent, except below
    ``dense_until`` (where the new volume's file already holds bytes, e.g. a fresh
    qcow2 header: zeros overwrite them) and in the last TAIL bytes. Their digest as
    sent. ``stop`` is asked after every chunk (CancelledError; the target volume is left
    for the caller to delete)."""
    what = f"copying {source.path} to volume '{volume}' of pool '{pool}' on {target.uri}"
    try:
        vol = target.conn.storagePoolLookupByName(pool).storageVolLookupByName(volume)
    except libvirt.libvirtError as err:
        raise translate(err, what) from err
    length = source.length
    hasher = hashlib.sha256()
    flags = getattr(libvirt, "VIR_STORAGE_VOL_UPLOAD_SPARSE_STREAM", 0)
    stream = call(what, target.conn.newStream, 0)
    call(what, vol.upload, stream, 0, length, flags)
    pos = wire = 0

    def data(chunk: bytes | memoryview) -> None:
        nonlocal wire
        send_all(stream, chunk, what)
        wire += len(chunk)

    with finishing(stream, what):
        with source.segments() as segments:
            for segment in segments:
                if isinstance(segment, int):
                    hole = min(segment, length - pos)
                    for part in _zeros(hole):
                        hasher.update(part)
                    for _start, size, as_data in _hole_parts(pos, hole, length, dense_until,
                                                            sparse=bool(flags)):
                        if as_data:
                            for part in _zeros(size):
                                data(part)
                        else:
                            call(what, stream.sendHole, size, 0)
                    pos += hole
                else:
                    if pos + len(segment) > length:
                        raise StorageError(f"{what}: the source grew while it was copied",
                                           hint="the VM must stay shut off; try again")
                    hasher.update(segment)
                    data(segment)
                    pos += len(segment)
                if tick is not None:
                    tick(pos)
                _check(stop, what)
        if pos != length:
            raise StorageError(f"{what}: the source ended after {pos} of {length} bytes",
                               hint="was the disk changed while it was copied? (the VM "
                                    "must stay shut off)")
    return Digest(hasher.hexdigest(), pos, wire)


def _hole_parts(pos: int, hole: int, length: int, dense_until: int, *, sparse: bool
                ) -> list[tuple[int, int, bool]]:
    """How a hole at ``pos`` goes out: (start, size, as zeros?) parts -- zeros below
    ``dense_until`` and in the file's last TAIL bytes (or all of it on a stream that is
    not sparse), a hole in between."""
    end = pos + hole
    if not sparse:
        return [(pos, hole, True)] if hole else []
    cuts = sorted({pos, end, min(max(dense_until, pos), end), max(min(length - TAIL, end),
                                                                      pos)})
    parts = []
    for start, stop in itertools.pairwise(cuts):
        if stop > start:
            parts.append((start, stop - start, start < dense_until or start >= length - TAIL))
    return parts


def digest(disk: Disk, *, tick: Tick | None = None, stop: Stop | None = None) -> Digest:
    """The SHA-256 of ``disk``'s content as its host reads it now (holes as zeros)."""
    hasher = hashlib.sha256()
    got = 0
    with disk.segments() as segments:
        for segment in segments:
            if isinstance(segment, int):
                for part in _zeros(segment):
                    hasher.update(part)
                got += segment
            else:
                hasher.update(segment)
                got += len(segment)
            if tick is not None:
                tick(got)
            _check(stop, f"verifying {disk.path}")
    return Digest(hasher.hexdigest(), got)


def length_at(host: Host, path: str) -> int | None:
    """The size of the file ``path`` as ``host``'s libvirt sees it through its pools
    (None: no active pool there holds it)."""
    volume = volume_at(host, path)
    if volume is None:
        return None
    flags = getattr(libvirt, "VIR_STORAGE_VOL_GET_PHYSICAL", 1)
    return int(call(f"reading volume {path} on {host.uri}", volume.infoFlags, flags)[2])
