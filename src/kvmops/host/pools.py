"""libvirt storage pools and volumes behind typed calls: define, build, start, stop,
refresh, undefine, autostart, volumes (create, clone, resize, delete), the one lookup of
the pool or volume holding a directory or file (:func:`volume_at`), and volume data
through libvirt streams (upload, download; the stream helpers the cold migration shares).
Errors translated in :mod:`kvmops.host.errors`."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import libvirt
from lxml import etree

from kvmops.errors import NotFoundError, StorageError
from kvmops.host.connection import Host
from kvmops.host.errors import call, translate

# libvirt's stream packets carry at most 256 KiB (VIR_NET_MESSAGE_LEGACY_PAYLOAD_MAX): a
# larger send is cut into packets and its rest copied again on every partial send.
CHUNK = 256 * 1024
Progress = Callable[[int, int], None]  # (bytes done, bytes total)


class Source(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...


class Sink(Protocol):
    def write(self, data: bytes, /) -> object: ...

# How often the loops tell ``progress``: a terminal bar redrawn for every 256 KiB packet
# cost a third of an upload's time (bench/pool_bench.py); a job's row is written less.
PROGRESS_INTERVAL = 0.1  # seconds


class _Ticker:
    """Calls ``progress`` at most every PROGRESS_INTERVAL seconds, and at the end."""

    def __init__(self, progress: Progress | None) -> None:
        self.progress = progress
        self.next = 0.0

    def __call__(self, done: int, total: int, *, final: bool = False) -> None:
        if self.progress is None:
            return
        now = time.monotonic()
        if final or now >= self.next:
            self.next = now + PROGRESS_INTERVAL
            self.progress(done, total)


@contextlib.contextmanager
def finishing(stream: Any, what: str) -> Iterator[None]:
    """A libvirt stream finished when the block ends (a download's read to its end
    first: a stream is finished only there), aborted when the block fails."""
    try:
        yield
        call(what, stream.finish)
    except BaseException:
        with contextlib.suppress(libvirt.libvirtError):
            stream.abort()
        raise


def send_all(stream: Any, data: bytes | memoryview, what: str) -> None:
    """All of ``data`` into a libvirt ``stream`` (one send may take less)."""
    rest = bytes(data)
    while rest:
        written = call(what, stream.send, rest)
        if written < 0:
            raise StorageError(f"{what}: the stream refused the data")
        rest = rest[written:]


def receive(stream: Any, what: str, size: int) -> bytes:
    """At most ``size`` bytes of a download ``stream`` (b"": its end)."""
    while True:
        data = call(what, stream.recv, size)
        if not isinstance(data, int):
            return bytes(data)
        if data != -2:  # -2: would block (never, on a blocking stream)
            raise StorageError(f"{what}: the stream failed")


def read_exactly(read: Callable[[int], bytes], size: int) -> bytes:
    """``size`` bytes from ``read`` (fewer only at the end of its data): one read may
    return less than asked."""
    parts, got = [], 0
    while got < size:
        part = read(size - got)
        if not part:
            break
        parts.append(part)
        got += len(part)
    return b"".join(parts)


@dataclass(frozen=True)
class PoolState:
    """One pool: its definition (the persistent one when there is one) and state."""

    name: str
    active: bool
    persistent: bool
    autostart: bool
    xml: str


def _lookup(host: Host, name: str) -> Any:
    try:
        return host.conn.storagePoolLookupByName(name)
    except libvirt.libvirtError as err:
        if err.get_error_code() == libvirt.VIR_ERR_NO_STORAGE_POOL:
            raise NotFoundError(f"storage pool '{name}' not found on {host.uri}",
                                hint="see 'kvmops pool list'") from err
        raise translate(err, f"looking up storage pool '{name}'") from err


def _volume(host: Host, pool: str, name: str) -> Any:
    handle = _lookup(host, pool)
    try:
        return handle.storageVolLookupByName(name)
    except libvirt.libvirtError as err:
        if err.get_error_code() == libvirt.VIR_ERR_NO_STORAGE_VOL:
            raise NotFoundError(f"volume '{name}' not found in storage pool '{pool}'",
                                hint=f"see 'kvmops volume list {pool}' (after 'kvmops "
                                     f"pool refresh {pool}' if it was added outside "
                                     "libvirt)") from err
        raise translate(err, f"looking up volume '{name}' of pool '{pool}'") from err


def _state(pool: Any) -> PoolState:
    name = str(pool.name())
    persistent = bool(call(f"reading storage pool '{name}'", pool.isPersistent))
    active = bool(call(f"reading storage pool '{name}'", pool.isActive))
    # The live XML carries capacity/allocation; the inactive one what was defined.
    flags = libvirt.VIR_STORAGE_XML_INACTIVE if persistent and not active else 0
    return PoolState(
        name=name, active=active, persistent=persistent,
        autostart=bool(call(f"reading storage pool '{name}'", pool.autostart))
        if persistent else False,
        xml=str(call(f"reading the XML of storage pool '{name}'", pool.XMLDesc, flags)))


def all_pools(host: Host) -> list[PoolState]:
    """Every storage pool, active or not, by name."""
    found = []
    for pool in call("listing storage pools", host.conn.listAllStoragePools, 0):
        try:
            found.append(_state(pool))
        except NotFoundError:
            continue  # removed while listed
    return sorted(found, key=lambda p: p.name)


def pool(host: Host, name: str) -> PoolState:
    return _state(_lookup(host, name))


def exists(host: Host, name: str) -> bool:
    try:
        _lookup(host, name)
    except NotFoundError:
        return False
    return True


def _target_dir(handle: Any) -> str | None:
    """A pool's target directory, normalised (None: the pool has none)."""
    root = etree.fromstring(str(handle.XMLDesc(0)).encode(), etree.XMLParser(
        resolve_entities=False, no_network=True))
    path = root.findtext("target/path")
    return os.path.normpath(path) if path else None


def _pool_in(host: Host, directory: str) -> Any | None:
    """The active pool whose target directory is ``directory`` (a libvirt handle)."""
    want = os.path.normpath(directory)
    flags = libvirt.VIR_CONNECT_LIST_STORAGE_POOLS_ACTIVE
    for handle in call("listing storage pools", host.conn.listAllStoragePools, flags) or []:
        with contextlib.suppress(libvirt.libvirtError, etree.XMLSyntaxError):
            if _target_dir(handle) == want:
                return handle
    return None


def pool_in_directory(host: Host, directory: str) -> str | None:
    """The name of the active pool whose target directory is ``directory`` (None: none)."""
    handle = _pool_in(host, directory)
    return None if handle is None else str(handle.name())


def volume_at(host: Host, path: str) -> Any | None:
    """The storage volume whose file is ``path``, if an active pool holds it (the pool of
    that directory is refreshed once when it does not list the file yet: a file put there
    since the pool's last scan)."""
    with contextlib.suppress(libvirt.libvirtError):
        return host.conn.storageVolLookupByPath(path)
    handle = _pool_in(host, os.path.dirname(path))
    if handle is not None:
        with contextlib.suppress(libvirt.libvirtError):
            handle.refresh(0)
            return handle.storageVolLookupByName(os.path.basename(path))
    return None


def pool_holding(host: Host, path: str) -> str | None:
    """The name of the active pool that holds the file ``path`` (None: none does)."""
    volume = volume_at(host, path)
    if volume is not None:
        with contextlib.suppress(libvirt.libvirtError):
            return str(volume.storagePoolLookupByVolume().name())
    return None


def supported_types(host: Host) -> set[str] | None:
    """The pool types this libvirtd has a backend for (None when it cannot say)."""
    get = getattr(host.conn, "getStoragePoolCapabilities", None)
    if get is None:
        return None
    try:
        xml = get(0)
    except libvirt.libvirtError:
        return None
    root = etree.fromstring(xml.encode(), etree.XMLParser(resolve_entities=False,
                                                           no_network=True))
    return {str(p.get("type")) for p in root.findall("pool")
            if p.get("supported") == "yes"}


def define(host: Host, xml: str) -> str:
    """Define a persistent pool from its XML (validated by libvirt); its name."""
    flags = getattr(libvirt, "VIR_STORAGE_POOL_DEFINE_VALIDATE", 0)
    handle = call("defining storage pool", host.conn.storagePoolDefineXML, xml, flags)
    return str(handle.name())


def build(host: Host, name: str, *, formats: bool) -> None:
    """libvirt's pool-build: a dir pool's directory; for a pool that ``formats`` (fs,
    logical) never over existing data: an fs pool's file system only on a device that
    carries none (refused when it carries one)."""
    handle = _lookup(host, name)
    call(f"building storage pool '{name}'", handle.build,
         libvirt.VIR_STORAGE_POOL_BUILD_NO_OVERWRITE if formats else 0)


def start(host: Host, name: str) -> None:
    handle = _lookup(host, name)
    call(f"starting storage pool '{name}'", handle.create, 0)


def stop(host: Host, name: str) -> None:
    handle = _lookup(host, name)
    call(f"stopping storage pool '{name}'", handle.destroy)


def refresh(host: Host, name: str) -> None:
    handle = _lookup(host, name)
    call(f"refreshing storage pool '{name}'", handle.refresh, 0)


def undefine(host: Host, name: str) -> None:
    handle = _lookup(host, name)
    call(f"undefining storage pool '{name}'", handle.undefine)


def set_autostart(host: Host, name: str, enabled: bool) -> None:
    handle = _lookup(host, name)
    call(f"setting autostart of storage pool '{name}'", handle.setAutostart,
         1 if enabled else 0)


# ------------------------------------------------------------------ volumes
def volume_xmls(host: Host, pool: str) -> list[str]:
    """The XML of every volume of an active pool, by name."""
    handle = _lookup(host, pool)
    found = []
    for vol in call(f"listing the volumes of storage pool '{pool}'",
                    handle.listAllVolumes, 0) or []:
        try:
            found.append((str(vol.name()), str(vol.XMLDesc(0))))
        except libvirt.libvirtError as err:
            if err.get_error_code() == libvirt.VIR_ERR_NO_STORAGE_VOL:
                continue  # removed while listed
            raise translate(err, f"reading a volume of pool '{pool}'") from err
    return [xml for _name, xml in sorted(found)]


def volume_xml(host: Host, pool: str, name: str) -> str:
    vol = _volume(host, pool, name)
    return str(call(f"reading volume '{name}' of pool '{pool}'", vol.XMLDesc, 0))


def volume_exists(host: Host, pool: str, name: str) -> bool:
    try:
        _volume(host, pool, name)
    except NotFoundError:
        return False
    return True


def create_volume(host: Host, pool: str, xml: str) -> str:
    """Create a volume from its XML; its path (or key)."""
    handle = _lookup(host, pool)
    vol = call(f"creating a volume in storage pool '{pool}'", handle.createXML, xml, 0)
    return str(vol.path() or vol.key())


def clone_volume(host: Host, pool: str, source: str, xml: str) -> str:
    """A new volume (``xml``) in ``pool`` with the data of ``source`` (same pool)."""
    handle = _lookup(host, pool)
    src = _volume(host, pool, source)
    vol = call(f"cloning volume '{source}' of pool '{pool}'", handle.createXMLFrom, xml,
               src, 0)
    return str(vol.path() or vol.key())


def resize_volume(host: Host, pool: str, name: str, capacity: int, *, shrink: bool = False
                  ) -> None:
    vol = _volume(host, pool, name)
    flags = libvirt.VIR_STORAGE_VOL_RESIZE_SHRINK if shrink else 0
    call(f"resizing volume '{name}' of pool '{pool}'", vol.resize, capacity, flags)


def delete_volume(host: Host, pool: str, name: str) -> None:
    vol = _volume(host, pool, name)
    call(f"deleting volume '{name}' of pool '{pool}'", vol.delete, 0)


def upload(host: Host, pool: str, name: str, source: Source, length: int,
           progress: Progress | None = None) -> int:
    """Write ``length`` bytes of ``source`` into the volume from its start, through a
    libvirt stream (libvirt writes the bytes as they are; nothing reads them as an
    image). The bytes sent."""
    vol = _volume(host, pool, name)
    what = f"uploading into volume '{name}' of pool '{pool}'"
    stream = call(what, host.conn.newStream, 0)
    call(what, vol.upload, stream, 0, length, 0)
    sent = 0
    tick = _Ticker(progress)
    with finishing(stream, what):
        while sent < length:
            chunk = source.read(min(CHUNK, length - sent))
            if not chunk:
                raise StorageError(f"{what}: the source ended after {sent} of {length} "
                                   "bytes", hint="was the file changed while it was sent?")
            send_all(stream, chunk, what)
            sent += len(chunk)
            tick(sent, length, final=sent >= length)
    return sent


def download(host: Host, pool: str, name: str, sink: Sink, total: int,
             progress: Progress | None = None, *, limit: int = 0) -> int:
    """Read the volume into ``sink`` through a libvirt stream: all of it, or its first
    ``limit`` bytes (``total``: the size the progress is told to expect); the bytes
    received."""
    vol = _volume(host, pool, name)
    what = f"downloading volume '{name}' of pool '{pool}'"
    stream = call(what, host.conn.newStream, 0)
    call(what, vol.download, stream, 0, limit, 0)
    got = 0
    tick = _Ticker(progress)
    write = sink.write
    with finishing(stream, what):
        while data := receive(stream, what, CHUNK):
            write(data)
            got += len(data)
            tick(got, max(total, got))
        tick(got, max(total, got), final=True)
    return got


