"""Backup file checksums: the current scheme (blake3) and the older ones verify still
checks (sha256-64m, bare sha256)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import blake3
import pytest

from kvmops.backup import repository


def _file(tmp_path: Path, data: bytes, name: str = "f.qcow2") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def test_new_digests_are_blake3_of_the_bytes(tmp_path: Path) -> None:
    data = bytes(range(256)) * 40000 + b"tail"
    path = _file(tmp_path, data)
    digest = repository.sha256_file(path)
    assert digest == f"blake3:{blake3.blake3(data).hexdigest()}"
    assert repository.file_digest(path) == digest
    assert repository.digest_matches(path, digest)


def test_empty_file(tmp_path: Path) -> None:
    path = _file(tmp_path, b"")
    digest = repository.sha256_file(path)
    assert digest == f"blake3:{blake3.blake3(b'').hexdigest()}"
    assert repository.digest_matches(path, digest)


def test_sparse_file_hashes_like_its_bytes(tmp_path: Path) -> None:
    path = tmp_path / "sparse"
    with open(path, "wb") as fh:
        fh.seek(3 * 1024 * 1024)
        fh.write(b"data")
        fh.truncate(8 * 1024 * 1024)
    dense = _file(tmp_path, path.read_bytes(), "dense")
    assert repository.sha256_file(path) == repository.sha256_file(dense)


@pytest.mark.parametrize("where", [0, 1024 * 1024 + 7, -1])
def test_a_flipped_byte_fails_every_scheme(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                           where: int) -> None:
    monkeypatch.setattr(repository, "HASH_PIECE", 1024 * 1024)
    data = bytes(range(256)) * 12289
    path = _file(tmp_path, data)
    recorded = [repository.sha256_file(path), repository.sha256_64m_file(path),
                hashlib.sha256(data).hexdigest()]
    assert all(repository.digest_matches(path, r) for r in recorded)
    changed = bytearray(data)
    changed[where] ^= 0x10
    path.write_bytes(bytes(changed))
    assert not any(repository.digest_matches(path, r) for r in recorded)
    path.write_bytes(data + b"\0")  # appended: the length is covered too
    assert not any(repository.digest_matches(path, r) for r in recorded)


def test_old_sha256_64m_manifests_still_verify(tmp_path: Path) -> None:
    data = b"x" * (3 * 1024 * 1024 + 5)
    path = _file(tmp_path, data)
    pieces = [hashlib.sha256(data[o:o + repository.HASH_PIECE]).digest()
              for o in range(0, len(data), repository.HASH_PIECE)]
    top = hashlib.sha256(len(data).to_bytes(8, "big") + b"".join(pieces)).hexdigest()
    assert repository.sha256_64m_file(path) == f"sha256-64m:{top}"
    assert repository.digest_matches(path, f"sha256-64m:{top}")


def test_unknown_scheme_never_matches(tmp_path: Path) -> None:
    path = _file(tmp_path, b"abc")
    assert not repository.digest_matches(path, "md5:" + hashlib.md5(b"abc").hexdigest())
