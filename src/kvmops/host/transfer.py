"""A disk's bytes from one host to another through libvirt streams, hashed on the way
(cold migration, :mod:`kvmops.services.coldmigration`).

A source disk is read as the bytes of its file, never as an image: from the file itself
when the source host is this machine, else through the source's libvirt -- the storage
volume of a pool that holds the file, or, when none does, of a *transient* dir pool made
for the file's directory for the length of the read (destroyed again; a transient pool
does not outlive its libvirtd). The bytes go into a volume the caller created in the
target's pool (``storageVol.upload``); SHA-256 is computed while they are sent, and
:func:`digest` reads a volume back (downloaded, or the file itself on this machine) so
the copy can be compared byte for byte. Nothing here reads a format from bytes.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import libvirt

from kvmops.errors import CancelledError, NotFoundError, StorageError
from kvmops.host.connection import Host
from kvmops.host.errors import call, translate
from kvmops.host.pools import CHUNK

#: Told the bytes done so far of one disk (called for every chunk: throttle it yourself).
Tick = Callable[[int], None]
#: True when the operator asked to stop.
Stop = Callable[[], bool]

TRANSIENT_PREFIX = "kvmops-xfer-"


@dataclass(frozen=True)
class Digest:
    """What a disk's bytes are: their SHA-256 (hex) and how many there are."""

    sha256: str
    length: int


class _Reader(Protocol):
    def read(self, size: int, /) -> bytes: ...


class Disk:
    """A disk file on a host, opened by :func:`open_disk`: its length, its first bytes,
    its bytes in order (:meth:`reader`), and its removal."""

    path: str
    length: int

    def head(self, size: int) -> bytes:
        raise NotImplementedError

    def reader(self) -> contextlib.AbstractContextManager[_Reader]:
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
    def reader(self) -> Iterator[_Reader]:
        with open(self.path, "rb", buffering=0) as fh:
            yield fh

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
        while True:
            data = call(self.what, self.stream.recv, size)
            if isinstance(data, int):
                if data == -2:  # would block: never on a blocking stream
                    continue
                raise StorageError(f"{self.what}: the stream failed")
            if not data:
                self.ended = True
            return bytes(data)


class _VolumeDisk(Disk):
    """A volume of a pool on a host that may be another machine (read through libvirt)."""

    def __init__(self, host: Host, path: str, volume: Any) -> None:
        self.host = host
        self.path = path
        self.volume = volume
        flags = getattr(libvirt, "VIR_STORAGE_VOL_GET_PHYSICAL", 1)
        info = call(f"reading volume {path}", volume.infoFlags, flags)
        self.length = int(info[2])  # the file's size (not libvirt's guess of a capacity)

    @contextlib.contextmanager
    def _download(self, limit: int) -> Iterator[_StreamReader]:
        what = f"reading {self.path} on {self.host.uri}"
        stream = call(what, self.host.conn.newStream, 0)
        call(what, self.volume.download, stream, 0, limit, 0)
        reader = _StreamReader(stream, what)
        try:
            yield reader
            while reader.read(CHUNK):  # to the end: a stream is finished only there
                pass
            call(what, stream.finish)
        except BaseException:
            with contextlib.suppress(libvirt.libvirtError):
                stream.abort()
            raise

    def head(self, size: int) -> bytes:
        parts, got = [], 0
        with self._download(min(size, self.length) or 1) as reader:
            while got < size:
                part = reader.read(size - got)
                if not part:
                    break
                parts.append(part)
                got += len(part)
        return b"".join(parts)[:size]

    def reader(self) -> contextlib.AbstractContextManager[_Reader]:
        return self._download(self.length)

    def delete(self) -> None:
        call(f"deleting {self.path} on {self.host.uri}", self.volume.delete, 0)


def _pool_dirs(host: Host) -> list[tuple[Any, str]]:
    """(pool, its target directory) of the active pools that have one."""
    found = []
    flags = libvirt.VIR_CONNECT_LIST_STORAGE_POOLS_ACTIVE
    for pool in call("listing storage pools", host.conn.listAllStoragePools, flags) or []:
        with contextlib.suppress(libvirt.libvirtError):
            match = re.search(r"<target>\s*<path>([^<]+)</path>", str(pool.XMLDesc(0)))
            if match:
                found.append((pool, match.group(1).strip()))
    return found


def volume_at(host: Host, path: str) -> Any | None:
    """The storage volume whose file is ``path``, if an active pool holds it (a pool of
    that directory is refreshed once when it does not list the file yet)."""
    with contextlib.suppress(libvirt.libvirtError):
        return host.conn.storageVolLookupByPath(path)
    directory = os.path.dirname(path)
    for pool, target in _pool_dirs(host):
        if os.path.normpath(target) == os.path.normpath(directory):
            with contextlib.suppress(libvirt.libvirtError):
                pool.refresh(0)
                return pool.storageVolLookupByName(os.path.basename(path))
    return None


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


def send(source: Disk, target: Host, pool: str, volume: str, *, tick: Tick | None = None,
         stop: Stop | None = None) -> Digest:
    """Copy every byte of ``source`` into the volume ``volume`` of ``pool`` on ``target``
    (created by the caller, at least as long); their digest as sent. ``stop`` is asked
    after every chunk (CancelledError; the target volume is left for the caller to
    delete)."""
    what = f"copying {source.path} to volume '{volume}' of pool '{pool}' on {target.uri}"
    try:
        vol = target.conn.storagePoolLookupByName(pool).storageVolLookupByName(volume)
    except libvirt.libvirtError as err:
        raise translate(err, what) from err
    length = source.length
    hasher = hashlib.sha256()
    stream = call(what, target.conn.newStream, 0)
    call(what, vol.upload, stream, 0, length, 0)
    sent = 0
    try:
        with source.reader() as reader:
            while sent < length:
                chunk = reader.read(min(CHUNK, length - sent))
                if not chunk:
                    raise StorageError(f"{what}: the source ended after {sent} of {length} "
                                       "bytes", hint="was the disk changed while it was "
                                       "copied? (the VM must stay shut off)")
                hasher.update(chunk)
                data = chunk
                while data:
                    written = call(what, stream.send, data)
                    if written < 0:
                        raise StorageError(f"{what}: the stream refused the data")
                    data = data[written:]
                sent += len(chunk)
                if tick is not None:
                    tick(sent)
                _check(stop, what)
        call(what, stream.finish)
    except BaseException:
        with contextlib.suppress(libvirt.libvirtError):
            stream.abort()
        raise
    return Digest(hasher.hexdigest(), sent)


def digest(disk: Disk, *, tick: Tick | None = None, stop: Stop | None = None) -> Digest:
    """The SHA-256 of every byte of ``disk`` as its host reads it now."""
    hasher = hashlib.sha256()
    got = 0
    with disk.reader() as reader:
        while True:
            chunk = reader.read(CHUNK)
            if not chunk:
                break
            hasher.update(chunk)
            got += len(chunk)
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
