"""The qcow2 header of an upload, read from its first bytes (never by qemu-img's probe):
enough to refuse, before one byte reaches a volume, a file that names a backing file
or an external data file (the volume would reach files outside the pool), an
encrypted one, or one whose virtual size is larger than the volume.

The layout (QEMU's docs/interop/qcow2.txt): big-endian; magic ``QFI\\xfb``, version 2
or 3, backing file offset (u64 at 8), cluster bits (u32 at 20), virtual size (u64 at
24), encryption method (u32 at 32); version 3 adds incompatible features (u64 at 72,
bit 2: external data file) and the header length (u32 at 100); header extensions
(u32 type, u32 length, data padded to 8) follow the header inside the first cluster.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

MAGIC = b"QFI\xfb"
V2_HEADER = 72
V3_MIN_HEADER = 104
MAX_CLUSTER_BITS = 21  # 2 MiB: QEMU's limit
EXT_END = 0
EXT_DATA_FILE = 0x44415441
EXT_ENCRYPTION = 0x0537BE77
EXT_BACKING_FORMAT = 0xE2792ACA
MAX_BACKING_NAME = 1023  # QEMU's limit
INCOMPAT_DATA_FILE = 1 << 2


@dataclass(frozen=True)
class Qcow2Header:
    version: int
    cluster_bits: int
    virtual_size: int
    backing: bool
    data_file: bool
    encrypted: bool
    # the backing file's name and format as QEMU reads them (None: not there, or not
    # within the bytes given; QEMU reads the format only from extensions that end
    # before the name)
    backing_name: str | None = None
    backing_format: str | None = None


class HeaderError(ValueError):
    """The bytes are not a qcow2 header kvmops can read."""


def needed(head: bytes) -> int:
    """How many bytes :func:`parse` needs, given at least the first 104 (the first
    cluster, where the header extensions end)."""
    if len(head) < 24:
        return V3_MIN_HEADER
    bits = int(struct.unpack_from(">I", head, 20)[0])
    if not 9 <= bits <= MAX_CLUSTER_BITS:
        return V3_MIN_HEADER
    return 1 << bits


def parse(head: bytes) -> Qcow2Header:
    """The header of a qcow2 file from its first bytes (see :func:`needed`; fewer when
    the file is shorter). HeaderError when they are not a qcow2 header."""
    if len(head) < V2_HEADER or head[:4] != MAGIC:
        raise HeaderError("it has no qcow2 header")
    version, backing_offset, backing_len, bits, size, crypt = struct.unpack_from(
        ">IQIIQI", head, 4)
    if version not in (2, 3):
        raise HeaderError(f"it is qcow2 version {version} (2 and 3 are known)")
    if not 9 <= bits <= MAX_CLUSTER_BITS:
        raise HeaderError(f"its cluster size 2^{bits} is outside qcow2's range")
    data_file = False
    encrypted = crypt != 0
    start = V2_HEADER
    if version == 3:
        if len(head) < V3_MIN_HEADER:
            raise HeaderError("its qcow2 version 3 header is cut short")
        incompatible = struct.unpack_from(">Q", head, 72)[0]
        data_file = bool(incompatible & INCOMPAT_DATA_FILE)
        start = struct.unpack_from(">I", head, 100)[0]
        if start < V3_MIN_HEADER or start % 8:
            raise HeaderError(f"its header length {start} is invalid")
    end = min(len(head), 1 << bits)
    backing_name: str | None = None
    if backing_offset:
        if backing_offset > 1 << bits or backing_len > MAX_BACKING_NAME:
            raise HeaderError("its backing file name lies outside its first cluster")
        raw = head[backing_offset:backing_offset + backing_len]
        if len(raw) == backing_len:
            try:
                backing_name = raw.decode()
            except UnicodeDecodeError:
                raise HeaderError("its backing file name is not UTF-8") from None
    format_end = backing_offset or 1 << bits  # where QEMU stops reading extensions
    formats: list[str] = []
    pos = start
    while pos + 8 <= end:  # the header extensions, up to the end marker
        kind, length = struct.unpack_from(">II", head, pos)
        if kind == EXT_END:
            break
        if kind == EXT_DATA_FILE:
            data_file = True
        elif kind == EXT_ENCRYPTION:
            encrypted = True
        elif kind == EXT_BACKING_FORMAT and pos + 8 + length <= min(format_end, end):
            formats.append(head[pos + 8:pos + 8 + length].decode("ascii", "replace"))
        pos += 8 + ((length + 7) & ~7)
    return Qcow2Header(version=version, cluster_bits=bits, virtual_size=size,
                       backing=backing_offset != 0, data_file=data_file,
                       encrypted=encrypted, backing_name=backing_name,
                       backing_format=formats[0] if len(formats) == 1 else None)
