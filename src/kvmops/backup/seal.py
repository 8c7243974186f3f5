"""Sealed repository files: zstd compression and AES-256-GCM authenticated encryption.

A sealed file is a header and a sequence of frames, each the seal of up to 4 MiB of
plaintext. Every frame is authenticated with a tag over its bytes *and* over the file's
header, its ``place`` in the repository (``VM/backups/ID/vda.qcow2``), its index and a
last-frame flag -- so a frame cannot be changed, reordered, dropped, appended, or moved
into another file, and a file cannot be truncated or moved to another place without
``check_sealed`` / ``unseal_file`` failing with a ``TamperedError`` naming file and frame.
With a key, the tag is AES-256-GCM's (under a per-file key derived from the data key);
without a key (compression only) it is a SHA-256, which detects corruption (not forgery:
the manifest's HMAC covers that). Format: docs/concepts/backup-encryption.md.

Layout (big-endian)::

    header  magic "KVMOSEAL" | version u16 = 1 | flags u16 (1 zstd, 2 aes-256-gcm)
            | frame size u32 | file id 16 random bytes | header check 16 bytes
    frame*  kind u8 (0 raw, 1 zstd, 2 zero) | flags u8 (1 last) | 0 u16
            | plain length u32 | stored length u32 | payload | tag (16 GCM, 32 SHA-256)

Frames are sealed and opened on every core (zstd, AES-GCM and SHA-256 release the GIL),
a bounded window of them in flight, written in order.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import hashlib
import hmac
import mmap
import os
import secrets
import struct
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, cast

import zstandard
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from kvmops.backup.repository import fsync_dir
from kvmops.errors import (
    KeyRequiredError,
    NotFoundError,
    StorageError,
    TamperedError,
    UnsupportedError,
    ValidationError,
)

FRAME_SIZE = 4 * 1024 * 1024
KEY_BYTES = 32
MAGIC = b"KVMOSEAL"
VERSION = 1
DOMAIN = b"kvmops-seal-v1\x00"

F_ZSTD = 1
F_GCM = 2
K_RAW, K_ZSTD, K_ZERO = 0, 1, 2
LAST = 1

_HEAD = struct.Struct(">8sHHI16s")          # 32 bytes, then the 16-byte header check
HEADER_SIZE = _HEAD.size + 16
_FRAME = struct.Struct(">BBHII")            # 12 bytes
_INDEX = struct.Struct(">Q")
GCM_TAG = 16
SHA_TAG = 32
# A frame whose zstd output would save less than this is stored raw: opening it costs
# nothing, and a sample tells incompressible data before the whole frame is compressed.
_KEEP_RATIO = 0.97
_SAMPLE = 16 * 1024

Progress = Callable[[int, int], None]
# index, plaintext (None: all zero), plain length, buffers to give back once written
_Opened = tuple[int, bytes | memoryview | None, int, tuple[bytearray, ...]]
Buffer = bytes | bytearray


@dataclass(frozen=True)
class Sealing:
    """How a repository's files are sealed."""

    compress_level: int | None = None   # zstd level (1..19); None: not compressed
    key: bytes | None = None            # 32-byte data key (AES-256-GCM); None: not encrypted

    def __post_init__(self) -> None:
        if self.compress_level is not None and not 1 <= self.compress_level <= 22:
            raise ValidationError(f"zstd level {self.compress_level} is not in 1..22")
        if self.key is not None and len(self.key) != KEY_BYTES:
            raise ValidationError(f"a data key is {KEY_BYTES} bytes, not {len(self.key)}")

    @property
    def plain(self) -> bool:
        """Neither compressed nor encrypted."""
        return self.compress_level is None and self.key is None

    def __repr__(self) -> str:  # never print a key
        return (f"Sealing(compress_level={self.compress_level!r}, "
                f"key={'<32 bytes>' if self.key else None})")


@dataclass(frozen=True)
class SealedFile:
    plain_size: int     # bytes of plaintext
    stored_size: int    # bytes of the sealed file
    frames: int
    sha256: str | None = None  # of the plaintext, when asked for (sha256=True in opening)


def default_workers() -> int:
    return max(1, min(os.cpu_count() or 1, 16))


# ------------------------------------------------------------------ the codec
_local = threading.local()


def _compressor(level: int) -> zstandard.ZstdCompressor:
    # Not thread-safe: one per thread and level.
    cache: dict[int, zstandard.ZstdCompressor] = _local.__dict__.setdefault("zc", {})
    if level not in cache:
        cache[level] = zstandard.ZstdCompressor(level=level)
    return cache[level]


def _decompressor() -> zstandard.ZstdDecompressor:
    if not hasattr(_local, "zd"):
        _local.zd = zstandard.ZstdDecompressor()
    return _local.zd  # type: ignore[no-any-return]


_ZEROS = bytes(FRAME_SIZE)
_ZERO_VIEW = memoryview(_ZEROS)
_SLACK = 65536 + 64  # a zstd frame may be a little larger than its input; tags


class _Pool:
    """Frame buffers used again and again, by the one thread that reads and writes.

    A fresh 4 MiB allocation per frame costs a page fault per 4 KiB page (the kernel
    zeroes each one), more CPU than AES-GCM itself on a virtual machine."""

    def __init__(self, size: int, reuse: bool = True) -> None:
        self.size, self.reuse = size, reuse
        self.free: list[bytearray] = []

    def get(self) -> bytearray:
        return self.free.pop() if self.free else bytearray(self.size)

    def put(self, *buffers: bytearray) -> None:
        if self.reuse:
            self.free.extend(buffers)


def _readinto_full(f: BinaryIO, buf: bytearray, size: int) -> int:
    view, got = memoryview(buf)[:size], 0
    while got < size:
        n = f.readinto(view[got:])  # type: ignore[attr-defined]
        if not n:
            break
        got += n
    return got


def _compressible(data: memoryview) -> bool:
    """A cheap guess from four 16 KiB samples: worth compressing the whole frame?"""
    if len(data) <= 4 * _SAMPLE:
        return True
    step = (len(data) - _SAMPLE) // 3
    sample = b"".join(data[i * step:i * step + _SAMPLE] for i in range(4))
    return len(_compressor(1).compress(sample)) < len(sample) * _KEEP_RATIO


class _Codec:
    """Seals and opens the frames of one file (one header, one place)."""

    def __init__(self, header: bytes, sealing: Sealing, place: str) -> None:
        self.header = header
        self.level = sealing.compress_level
        self.place = place
        _magic, _version, flags, self.frame_size, file_id = _HEAD.unpack(header[:_HEAD.size])
        self.encrypted = bool(flags & F_GCM)
        self.digest = hashlib.sha256(DOMAIN + header + b"\x00" + place.encode()).digest()
        self.nonce_prefix = file_id[12:16]
        self.aead: AESGCM | None = None
        if self.encrypted:
            assert sealing.key is not None
            file_key = HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=file_id,
                            info=DOMAIN + b"frames\x00" + place.encode()).derive(sealing.key)
            self.aead = AESGCM(file_key)
        self.tag_len = GCM_TAG if self.encrypted else SHA_TAG

    def _aad(self, index: int, frame_head: bytes) -> bytes:
        return self.digest + _INDEX.pack(index) + frame_head

    def seal(self, index: int, buf: Buffer, n: int, last: bool, out: bytearray | None
             ) -> list[bytes | memoryview]:
        """The record of the frame ``buf[:n]``, in parts (joining 4 MiB would cost a
        copy); the ciphertext goes into ``out`` (None: a new buffer)."""
        data = memoryview(buf)[:n]
        payload: bytes | memoryview
        if n and buf.startswith(_ZERO_VIEW[:n]):  # memcmp, no copy
            kind, payload = K_ZERO, b""
        elif self.level is not None and n and _compressible(data):
            packed = _compressor(self.level).compress(data)
            if len(packed) < n * _KEEP_RATIO:
                kind, payload = K_ZSTD, packed
            else:
                kind, payload = K_RAW, data
        else:
            kind, payload = K_RAW, data
        head = _FRAME.pack(kind, LAST if last else 0, 0, n, len(payload))
        aad = self._aad(index, head)
        if self.aead is not None:
            nonce = self.nonce_prefix + _INDEX.pack(index)
            size = len(payload) + GCM_TAG
            target = memoryview(out if out is not None else bytearray(size))[:size]
            self.aead.encrypt_into(nonce, payload, aad, target)
            return [head, target]
        return [head, payload, _sha(aad, payload)]

    def open(self, index: int, head: bytes, body: memoryview, out: bytearray | None
             ) -> bytes | memoryview | None:
        """The frame's plaintext (None: all zero; else a view of ``out`` or new bytes),
        or ValueError saying why not."""
        kind, _flags, _zero, plain_len, _stored = _FRAME.unpack(head)
        aad = self._aad(index, head)
        payload: bytes | memoryview
        if self.aead is not None:
            nonce = self.nonce_prefix + _INDEX.pack(index)
            size = len(body) - GCM_TAG
            payload = memoryview(out if out is not None else bytearray(size))[:size]
            try:
                self.aead.decrypt_into(nonce, body, aad, payload)
            except InvalidTag:
                raise ValueError("authentication failed (AES-GCM tag)") from None
        else:
            payload, tag = body[:-SHA_TAG], body[-SHA_TAG:]
            if not hmac.compare_digest(_sha(aad, payload), tag):
                raise ValueError("checksum mismatch (SHA-256)")
        if kind == K_ZERO:
            return None
        if kind == K_ZSTD:
            try:
                data = _decompressor().decompress(payload, max_output_size=plain_len)
            except zstandard.ZstdError as err:
                raise ValueError(f"zstd data does not decompress ({err})") from None
            if len(data) != plain_len:
                raise ValueError("zstd data has the wrong length")
            return data
        return payload


def _sha(aad: bytes, payload: bytes | memoryview) -> bytes:
    digest = hashlib.sha256(aad)
    digest.update(payload)
    return digest.digest()


def _new_header(sealing: Sealing) -> bytes:
    flags = (F_ZSTD if sealing.compress_level is not None else 0) | \
        (F_GCM if sealing.key is not None else 0)
    head = _HEAD.pack(MAGIC, VERSION, flags, FRAME_SIZE, secrets.token_bytes(16))
    return head + _header_check(head, sealing.key)


def _header_check(head: bytes, key: bytes | None) -> bytes:
    # Keyed: tells "another key" (another repository's file) from a changed frame.
    if key is not None:
        check_key = HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=None,
                         info=DOMAIN + b"header-check").derive(key)
        return hmac.new(check_key, DOMAIN + head, hashlib.sha256).digest()[:16]
    return hashlib.sha256(DOMAIN + head).digest()[:16]


def _tampered(name: str, what: str) -> TamperedError:
    return TamperedError(
        f"sealed file {name} failed its check: {what}",
        hint="do not use it; restore from another copy (backup replicate) or take a new full")


def _read_header(header: bytes, sealing: Sealing, name: str, place: str) -> _Codec:
    if len(header) < HEADER_SIZE or header[:8] != MAGIC:
        raise _tampered(name, "not a kvmops sealed file (no KVMOSEAL header)")
    _magic, version, flags, frame_size, _file_id = _HEAD.unpack(header[:_HEAD.size])
    if version != VERSION:
        raise UnsupportedError(f"sealed file {name} has format version {version}; this "
                               f"kvmops reads version {VERSION}", hint="upgrade kvmops")
    if flags & ~(F_ZSTD | F_GCM) or not 1 <= frame_size <= len(_ZEROS):
        raise _tampered(name, "header is damaged (flags or frame size)")
    encrypted = bool(flags & F_GCM)
    if encrypted and sealing.key is None:
        raise KeyRequiredError(f"{name} is encrypted and no key was given",
                               hint="give the repository's --key-file or --passphrase-stdin")
    if not encrypted and sealing.key is not None:
        raise _tampered(name, "the file is not encrypted but the repository is "
                              "(it was replaced)")
    check = _header_check(header[:_HEAD.size], sealing.key if encrypted else None)
    if not hmac.compare_digest(check, header[_HEAD.size:HEADER_SIZE]):
        raise _tampered(name, "header check failed at offset 0 (changed, or sealed with "
                              "another repository's key)")
    return _Codec(header[:HEADER_SIZE], sealing, place)


# ------------------------------------------------------------------ pipelines
def _pipeline(jobs: Iterator[tuple[Callable[..., object], tuple[object, ...]]],
              sink: Callable[[object], None], workers: int) -> None:
    """Run ``jobs`` on ``workers`` threads, a bounded window in flight, results in order."""
    if workers <= 1:
        for fn, args in jobs:
            sink(fn(*args))
        return
    window: collections.deque[Future[object]] = collections.deque()
    with ThreadPoolExecutor(workers, thread_name_prefix="seal") as pool:
        try:
            try:
                for fn, args in jobs:
                    window.append(pool.submit(fn, *args))
                    while len(window) > 2 * workers:
                        sink(window.popleft().result())
            except Exception:
                # A reading error after frame N: frames before it fail first (the earliest
                # damage is the one reported, as on the serial path).
                while window:
                    window.popleft().result()
                raise
            while window:
                sink(window.popleft().result())
        finally:
            for future in window:
                future.cancel()


def _read_full(f: BinaryIO, size: int) -> bytes:
    data = f.read(size)
    if len(data) == size or not data:
        return data
    parts = [data]
    got = len(data)
    while got < size:
        more = f.read(size - got)
        if not more:
            break
        parts.append(more)
        got += len(more)
    return b"".join(parts)


def _sealed_frames(f: BinaryIO, codec: _Codec, name: str, pool: _Pool
                   ) -> Iterator[tuple[int, int, bytes, memoryview, bytearray]]:
    """(index, offset, frame head, body, its buffer) of a sealed stream, checked for
    structure."""
    index, offset = 0, HEADER_SIZE
    while True:
        head = f.read(_FRAME.size)
        if len(head) < _FRAME.size:
            raise _tampered(name, f"truncated: ends at offset {offset} before the last frame "
                                  f"(frame {index} missing)")
        kind, flags, zero, plain_len, stored = _FRAME.unpack(head)
        last = bool(flags & LAST)
        where = f"frame {index} at offset {offset}"
        bad = (kind not in (K_RAW, K_ZSTD, K_ZERO) or flags & ~LAST or zero
               or plain_len > codec.frame_size
               or (not last and plain_len != codec.frame_size)
               or (kind == K_RAW and stored != plain_len)
               or (kind == K_ZERO and stored != 0)
               or (kind == K_ZSTD and stored > codec.frame_size + 65536))
        if bad:
            raise _tampered(name, f"{where}: frame header is damaged")
        buf = pool.get()
        got = _readinto_full(f, buf, stored + codec.tag_len)
        if got < stored + codec.tag_len:
            raise _tampered(name, f"truncated in {where}")
        yield index, offset, head, memoryview(buf)[:got], buf
        offset += _FRAME.size + got
        index += 1
        if last:
            if f.read(1):
                raise _tampered(name, f"data after the last frame (offset {offset})")
            return


def _open_checked(codec: _Codec, name: str, index: int, offset: int, head: bytes,
                  body: memoryview, buf: bytearray, out: bytearray) -> _Opened:
    try:
        return index, codec.open(index, head, body, out), _FRAME.unpack(head)[3], (buf, out)
    except ValueError as err:
        raise _tampered(name, f"frame {index} at offset {offset}: {err} (changed, moved, "
                              f"reordered, or sealed for another place)") from None


@contextlib.contextmanager
def _atomic_output(dst: Path, what: str, durable: bool = True) -> Iterator[BinaryIO]:
    """``dst`` appears whole or not at all; ``durable``: on disk too (fsync), which a
    scratch copy read once and removed (verify, restore) does not need."""
    tmp = dst.with_name(f".{dst.name}.{what}-{os.getpid()}-{threading.get_ident()}")
    try:
        with open(tmp, "wb") as out:
            yield out
            out.flush()
            if durable:
                os.fsync(out.fileno())
        os.replace(tmp, dst)
        if durable:
            fsync_dir(dst.parent)
    except OSError as err:
        raise StorageError(f"cannot write {dst}: {err.strerror or err}") from err
    finally:
        tmp.unlink(missing_ok=True)


_ALIGN = 4096
_STAGE = 8 * 1024 * 1024


class _StagedWriter:
    """Appends the sealed records to a file opened with O_DIRECT, through two page-aligned
    8 MiB staging buffers (the last block padded, then the file truncated to its size).

    Measured in a sealed backup on the shared test host: buffered write() calls spent 80 %
    of the sealing time throttled on dirty pages (balance_dirty_pages), fsync 6 %; QEMU's
    own plain backup never meets that throttle. Direct writes skip the page cache (the
    sealed file is not read again soon) and its throttle. A full stage is written by a
    thread while the other one fills: the disk's time overlaps the reading and sealing
    (768 MiB: 0.42 s of direct writes had run one after the other with 0.35 s of reading
    and copying). Without O_DIRECT support (tmpfs) the same code writes through the page
    cache."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.stages = [mmap.mmap(-1, _STAGE) for _ in range(2)]  # page-aligned (O_DIRECT)
        self.views = [memoryview(stage) for stage in self.stages]
        self.current = 0
        self.fill = 0
        self.offset = 0
        self.pending: Future[None] | None = None
        self.io = ThreadPoolExecutor(1, thread_name_prefix="seal-write")

    @property
    def view(self) -> memoryview:
        return self.views[self.current]

    def write(self, data: bytes | memoryview) -> None:
        source = memoryview(data)
        while source:
            take = min(len(source), _STAGE - self.fill)
            self.view[self.fill:self.fill + take] = source[:take]
            self.fill += take
            source = source[take:]
            if self.fill == _STAGE:
                self._hand_over()

    def _hand_over(self) -> None:
        """Write the full stage in the background and go on filling the other one."""
        self._wait()
        self.pending = self.io.submit(self._put, self.view, _STAGE, self.offset)
        self.offset += _STAGE
        self.current ^= 1
        self.fill = 0

    def _wait(self) -> None:
        """The background write done (its error raised here)."""
        pending, self.pending = self.pending, None
        if pending is not None:
            pending.result()

    def _put(self, view: memoryview, size: int, offset: int) -> None:
        done = 0
        while done < size:
            done += os.pwrite(self.fd, view[done:size], offset + done)

    def finish(self) -> None:
        """Write the rest (padded to a whole block) and cut the file to its length."""
        self._wait()
        length = self.offset + self.fill
        if self.fill:
            padded = -(-self.fill // _ALIGN) * _ALIGN
            self.view[self.fill:padded] = bytes(padded - self.fill)
            self._put(self.view, padded, self.offset)
        os.ftruncate(self.fd, length)

    def drain(self) -> None:
        """Let no background write run on (before the file is closed)."""
        self.io.shutdown(wait=True)

    def close(self) -> None:
        self.drain()  # no write still uses a stage
        # After a failure a traceback may still hold a slice of a stage: then the
        # garbage collector frees it, and the original error is what the caller sees.
        with contextlib.suppress(BufferError):
            for view, stage in zip(self.views, self.stages, strict=True):
                view.release()
                stage.close()


@contextlib.contextmanager
def _atomic_direct_output(dst: Path) -> Iterator[_StagedWriter]:
    """Like _atomic_output, for seal_file's records (O_DIRECT where the file system has
    it)."""
    tmp = dst.with_name(f".{dst.name}.sealing-{os.getpid()}-{threading.get_ident()}")
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC
    writer: _StagedWriter | None = None
    try:
        try:
            fd = os.open(tmp, flags | os.O_DIRECT, 0o666)
        except OSError as err:
            if err.errno != errno.EINVAL:
                raise
            fd = os.open(tmp, flags, 0o666)
        try:
            writer = _StagedWriter(fd)
            yield writer
            writer.finish()
            os.fsync(fd)
        finally:
            if writer is not None:
                writer.drain()
            os.close(fd)
        os.replace(tmp, dst)
        fsync_dir(dst.parent)
    except OSError as err:
        raise StorageError(f"cannot write {dst}: {err.strerror or err}") from err
    finally:
        if writer is not None:
            writer.close()
        tmp.unlink(missing_ok=True)


def _open_src(src: Path) -> BinaryIO:
    try:
        return open(src, "rb")
    except FileNotFoundError:
        raise NotFoundError(f"file {src} does not exist") from None
    except OSError as err:
        raise StorageError(f"cannot read {src}: {err.strerror or err}") from err


# ------------------------------------------------------------------ public
def seal_file(src: Path, dst: Path, sealing: Sealing, place: str, *,
              progress: Progress | None = None, workers: int | None = None) -> SealedFile:
    """Seal ``src`` into ``dst`` (atomic: tmp, fsync, rename) for ``place``.

    ``progress(done, total)`` in plaintext bytes; ``workers`` threads (default: every
    core), each reading its own frames (``pread`` releases the GIL: one reading thread
    was a fifth of the time). ``src`` must not change meanwhile (a size that did is an
    error)."""
    header = _new_header(sealing)
    codec = _Codec(header, sealing, place)
    pool = _Pool(FRAME_SIZE + _SLACK)
    with _open_src(src) as f, _atomic_direct_output(dst) as out:
        fd = f.fileno()
        total = os.fstat(fd).st_size
        count = max(1, -(-total // FRAME_SIZE))  # at least one frame, even when empty
        out.write(header)
        counts = {"plain": 0, "stored": len(header), "frames": 0}

        def sink(result: object) -> None:
            plain_len, record, buffers = cast(
                tuple[int, list[bytes], tuple[bytearray, ...]], result)
            for part in record:
                out.write(part)
                counts["stored"] += len(part)
            pool.put(*buffers)
            counts["plain"] += plain_len
            counts["frames"] += 1
            if progress:
                progress(counts["plain"], total)

        def seal_one(index: int, buf: bytearray, target: bytearray
                     ) -> tuple[int, list[bytes | memoryview], tuple[bytearray, ...]]:
            offset = index * FRAME_SIZE
            n = min(FRAME_SIZE, total - offset)
            if _pread_full(fd, buf, n, offset) != n:
                raise StorageError(f"{src} shrank while it was sealed")
            return n, codec.seal(index, buf, n, index == count - 1, target), (buf, target)

        def frames() -> Iterator[tuple[Callable[..., object], tuple[object, ...]]]:
            for index in range(count):
                yield seal_one, (index, pool.get(), pool.get())

        _pipeline(frames(), sink, workers or default_workers())
        if os.fstat(fd).st_size != total:
            raise StorageError(f"{src} grew while it was sealed")
    return SealedFile(counts["plain"], counts["stored"], counts["frames"])


def _pread_full(fd: int, buf: bytearray, size: int, offset: int) -> int:
    view, got = memoryview(buf)[:size], 0
    while got < size:
        n = os.preadv(fd, [view[got:]], offset + got)
        if not n:
            break
        got += n
    return got


def _open_all(src: Path, sealing: Sealing, place: str, sink: Callable[[object], None],
              progress: Progress | None, workers: int | None, sha256: bool) -> SealedFile:
    name = str(src)
    digest = hashlib.sha256() if sha256 else None
    with _open_src(src) as f:
        total = os.fstat(f.fileno()).st_size
        codec = _read_header(_read_full(f, HEADER_SIZE), sealing, name, place)
        pool = _Pool(codec.frame_size + _SLACK)
        counts = {"plain": 0, "frames": 0}

        def counted(result: object) -> None:
            _index, data, plain_len, buffers = cast(_Opened, result)
            if digest is not None:
                digest.update(_ZERO_VIEW[:plain_len] if data is None else data)
            counts["plain"] += plain_len
            counts["frames"] += 1
            sink(result)
            pool.put(*buffers)
            if progress:
                progress(f.tell(), total)

        jobs = ((_open_checked, (codec, name, index, offset, head, body, buf, pool.get()))
                for index, offset, head, body, buf in _sealed_frames(f, codec, name, pool))
        _pipeline(jobs, counted, workers or default_workers())
        return SealedFile(counts["plain"], f.tell(), counts["frames"],
                          digest.hexdigest() if digest is not None else None)


def unseal_file(src: Path, dst: Path, sealing: Sealing, place: str, *,
                progress: Progress | None = None, workers: int | None = None,
                sha256: bool = False, durable: bool = True) -> SealedFile:
    """Check and open ``src`` into ``dst`` (atomic; all-zero frames become holes).

    Nothing is left at ``dst`` unless every frame authenticated. ``progress(done, total)``
    in sealed bytes read; ``sha256``: also hash the plaintext as it streams (saves reading
    the output again to compare with a manifest). Raises TamperedError (file, frame,
    offset) or KeyRequiredError. ``durable=False``: not fsynced (a scratch copy)."""
    with _atomic_output(dst, "unsealing", durable) as out:
        fd = out.fileno()
        position = {"at": 0}

        def sink(result: object) -> None:
            _index, data, plain_len, _buffers = cast(_Opened, result)
            if data is not None:
                view = memoryview(data)
                at = position["at"]
                while view:
                    written = os.pwrite(fd, view, at)
                    view, at = view[written:], at + written
            position["at"] += plain_len

        made = _open_all(src, sealing, place, sink, progress, workers, sha256)
        os.ftruncate(fd, position["at"])  # trailing holes
    return made


def check_sealed(src: Path, sealing: Sealing, place: str, *,
                 progress: Progress | None = None, workers: int | None = None,
                 sha256: bool = False) -> SealedFile:
    """Authenticate every frame of ``src`` without writing anything (backup verify).

    ``sha256``: also the plaintext's SHA-256, to compare with the manifest's (what makes a
    compression-only file tamper-evident, its frame checksums being unkeyed)."""
    return _open_all(src, sealing, place, lambda _result: None, progress, workers, sha256)


def seal_bytes(data: bytes, sealing: Sealing, place: str) -> bytes:
    """Seal a small object (manifest, checkpoint XML) held in memory."""
    header = _new_header(sealing)
    codec = _Codec(header, sealing, place)
    parts: list[bytes | memoryview] = [header]
    count = max(1, -(-len(data) // FRAME_SIZE))
    for index in range(count):
        chunk = data[index * FRAME_SIZE:(index + 1) * FRAME_SIZE]
        parts.extend(codec.seal(index, chunk, len(chunk), index == count - 1, None))
    return b"".join(parts)


def unseal_bytes(blob: bytes, sealing: Sealing, place: str) -> bytes:
    """Check and open what ``seal_bytes`` made for the same place."""
    import io

    name = place
    f = io.BytesIO(blob)
    codec = _read_header(_read_full(f, HEADER_SIZE), sealing, name, place)
    pool = _Pool(codec.frame_size + _SLACK, reuse=False)  # the parts keep their buffers
    parts: list[bytes | memoryview] = []
    for index, offset, head, body, buf in _sealed_frames(f, codec, name, pool):
        _i, data, plain_len, _buffers = _open_checked(codec, name, index, offset, head, body,
                                                      buf, pool.get())
        parts.append(bytes(plain_len) if data is None else data)
    return b"".join(parts)
