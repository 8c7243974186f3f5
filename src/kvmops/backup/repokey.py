"""The repository encryption key: never stored in the repository or the database.

Key hierarchy: the user's secret (a key file's bytes, or a passphrase) -> scrypt with a
per-repository salt -> a key-encryption key (KEK) -> unwraps (AES-256-GCM) the random
32-byte data key that seals the repository's files (backup/seal.py). The repository
identity keeps only the ``encryption`` block (salt, wrapped data key, key check, key id),
so changing the key (``rewrap``) rewrites that block alone: the old key file no longer
opens the repository and no data is re-encrypted. docs/concepts/backup-encryption.md.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def read_secret(key_file: Path | None, passphrase: str | None) -> bytes:
    """The secret from a key file (its bytes; refused when empty or readable by others)
    or a passphrase. Neither given: KeyRequiredError; both: ValidationError."""
    raise NotImplementedError


def create_key_file(path: Path) -> None:
    """Write a new random key file (mode 0600, refusing to overwrite one)."""
    raise NotImplementedError


def new_encryption(secret: bytes) -> tuple[dict[str, Any], bytes]:
    """A new random data key and the JSON-able ``encryption`` block that wraps it."""
    raise NotImplementedError


def unlock(config: dict[str, Any], secret: bytes, repo: str) -> bytes:
    """The data key of repository ``repo``. KeyRequiredError when the secret is not the
    repository's key; TamperedError when the block was changed."""
    raise NotImplementedError


def rewrap(config: dict[str, Any], old_secret: bytes, new_secret: bytes,
           repo: str = "the repository") -> dict[str, Any]:
    """The block with the same data key wrapped by ``new_secret`` (key change); the old
    secret no longer opens it once the repository keeps the new block."""
    raise NotImplementedError
