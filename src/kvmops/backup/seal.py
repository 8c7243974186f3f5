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
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

FRAME_SIZE = 4 * 1024 * 1024
KEY_BYTES = 32

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class Sealing:
    """How a repository's files are sealed."""

    compress_level: int | None = None   # zstd level (1..19); None: not compressed
    key: bytes | None = None            # 32-byte data key (AES-256-GCM); None: not encrypted

    @property
    def plain(self) -> bool:
        """Neither compressed nor encrypted."""
        return self.compress_level is None and self.key is None


@dataclass(frozen=True)
class SealedFile:
    plain_size: int     # bytes of plaintext
    stored_size: int    # bytes of the sealed file
    frames: int


def seal_file(src: Path, dst: Path, sealing: Sealing, place: str, *,
              progress: Progress | None = None) -> SealedFile:
    """Seal ``src`` into ``dst`` (atomic: tmp, fsync, rename) for ``place``.

    ``progress(done, total)`` in plaintext bytes."""
    raise NotImplementedError


def unseal_file(src: Path, dst: Path, sealing: Sealing, place: str, *,
                progress: Progress | None = None) -> None:
    """Check and open ``src`` into ``dst`` (atomic; all-zero frames become holes).

    Nothing is left at ``dst`` unless every frame authenticated. ``progress(done, total)``
    in sealed bytes read. Raises TamperedError (file, frame, offset) or KeyRequiredError."""
    raise NotImplementedError


def check_sealed(src: Path, sealing: Sealing, place: str, *,
                 progress: Progress | None = None) -> SealedFile:
    """Authenticate every frame of ``src`` without writing anything (backup verify)."""
    raise NotImplementedError


def seal_bytes(data: bytes, sealing: Sealing, place: str) -> bytes:
    """Seal a small object (manifest, checkpoint XML) held in memory."""
    raise NotImplementedError


def unseal_bytes(blob: bytes, sealing: Sealing, place: str) -> bytes:
    """Check and open what ``seal_bytes`` made for the same place."""
    raise NotImplementedError
