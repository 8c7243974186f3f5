"""backup/seal.py: sealed repository files round-trip, and every change is caught."""

from __future__ import annotations

import hashlib
import os
import struct
from pathlib import Path

import pytest

from kvmops.backup import seal
from kvmops.backup.seal import (
    FRAME_SIZE,
    HEADER_SIZE,
    Sealing,
    check_sealed,
    seal_bytes,
    seal_file,
    unseal_bytes,
    unseal_file,
)
from kvmops.errors import (
    KeyRequiredError,
    StorageError,
    TamperedError,
    UnsupportedError,
    ValidationError,
)

PLACE = "web1/backups/20261202T100000Z/vda.qcow2"
KEY = bytes(range(32))
SEALINGS = {
    "plain": Sealing(),
    "zstd": Sealing(compress_level=3),
    "aes": Sealing(key=KEY),
    "zstd+aes": Sealing(compress_level=3, key=KEY),
}


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _frames(blob: bytes, tag_len: int) -> list[tuple[int, int]]:
    """(offset, length) of each frame record of a sealed blob."""
    spans, at = [], HEADER_SIZE
    while at < len(blob):
        stored = struct.unpack(">I", blob[at + 8:at + 12])[0]
        length = 12 + stored + tag_len
        spans.append((at, length))
        at += length
    return spans


def _tag_len(sealing: Sealing) -> int:
    return seal.GCM_TAG if sealing.key else seal.SHA_TAG


@pytest.mark.parametrize("name", list(SEALINGS))
@pytest.mark.parametrize("size", [0, 1, FRAME_SIZE, 2 * FRAME_SIZE, FRAME_SIZE + 1])
def test_round_trip(tmp_path: Path, name: str, size: int) -> None:
    sealing = SEALINGS[name]
    data = os.urandom(size)
    src = _write(tmp_path / "src", data)
    made = seal_file(src, tmp_path / "sealed", sealing, PLACE)
    assert made.plain_size == size
    assert made.frames == max(1, -(-size // FRAME_SIZE))
    assert made.stored_size == (tmp_path / "sealed").stat().st_size
    assert check_sealed(tmp_path / "sealed", sealing, PLACE) == made
    unseal_file(tmp_path / "sealed", tmp_path / "out", sealing, PLACE)
    assert (tmp_path / "out").read_bytes() == data
    assert unseal_bytes(seal_bytes(data, sealing, PLACE), sealing, PLACE) == data
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "sealed", "src"]


def test_random_frames_are_stored_raw_and_text_compressed(tmp_path: Path) -> None:
    random = os.urandom(2 * FRAME_SIZE)
    made = seal_file(_write(tmp_path / "r", random), tmp_path / "rs", SEALINGS["zstd+aes"], PLACE)
    assert made.stored_size == HEADER_SIZE + 2 * (12 + FRAME_SIZE + seal.GCM_TAG)
    text = b"".join(b"line %d of a log file\n" % i for i in range(400_000))
    made = seal_file(_write(tmp_path / "t", text), tmp_path / "ts", SEALINGS["zstd+aes"], PLACE)
    assert made.stored_size < len(text) / 5
    unseal_file(tmp_path / "ts", tmp_path / "to", SEALINGS["zstd+aes"], PLACE)
    assert (tmp_path / "to").read_bytes() == text


@pytest.mark.parametrize("name", ["plain", "zstd+aes"])
def test_zero_frames_become_holes(tmp_path: Path, name: str) -> None:
    sealing = SEALINGS[name]
    head = os.urandom(100)
    data = head + bytes(FRAME_SIZE - 100) + bytes(2 * FRAME_SIZE) + b"x" + bytes(FRAME_SIZE - 1) \
        + bytes(FRAME_SIZE)
    made = seal_file(_write(tmp_path / "src", data), tmp_path / "sealed", sealing, PLACE)
    assert made.frames == 5
    # frames 1, 2 and 4 are all zero: a record without payload each
    assert made.stored_size < 2 * FRAME_SIZE + 5 * 64 + HEADER_SIZE
    unseal_file(tmp_path / "sealed", tmp_path / "out", sealing, PLACE)
    out = tmp_path / "out"
    assert out.stat().st_size == len(data)
    assert out.read_bytes() == data
    assert out.stat().st_blocks * 512 <= 2 * FRAME_SIZE + 1024 * 1024  # holes, not zeros


def test_parallel_equals_serial(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("kvmops.backup.seal.secrets.token_bytes", lambda n: b"\x07" * n)
    text = b"".join(b"row %d\n" % i for i in range(300_000))
    data = os.urandom(FRAME_SIZE) + bytes(FRAME_SIZE) + text + os.urandom(12345)
    src = _write(tmp_path / "src", data)
    sealing = SEALINGS["zstd+aes"]
    seal_file(src, tmp_path / "serial", sealing, PLACE, workers=1)
    seal_file(src, tmp_path / "parallel", sealing, PLACE, workers=4)
    assert (tmp_path / "serial").read_bytes() == (tmp_path / "parallel").read_bytes()
    seen: list[tuple[int, int]] = []
    unseal_file(tmp_path / "parallel", tmp_path / "out4", sealing, PLACE, workers=4,
                progress=lambda done, total: seen.append((done, total)))
    unseal_file(tmp_path / "serial", tmp_path / "out1", sealing, PLACE, workers=1)
    assert (tmp_path / "out4").read_bytes() == (tmp_path / "out1").read_bytes() == data
    stored = (tmp_path / "serial").stat().st_size
    assert seen[-1] == (stored, stored)
    assert [done for done, _total in seen] == sorted(done for done, _total in seen)


def test_plaintext_sha256_while_streaming(tmp_path: Path) -> None:
    data = os.urandom(1000) + bytes(2 * FRAME_SIZE) + b"tail"
    made = seal_file(_write(tmp_path / "src", data), tmp_path / "sealed", SEALINGS["zstd"],
                     PLACE)
    want = hashlib.sha256(data).hexdigest()
    assert made.sha256 is None and made.plain_size == len(data)
    assert check_sealed(tmp_path / "sealed", SEALINGS["zstd"], PLACE, sha256=True).sha256 == want
    made = unseal_file(tmp_path / "sealed", tmp_path / "out", SEALINGS["zstd"], PLACE,
                       sha256=True)
    assert made.sha256 == want and made.plain_size == len(data)
    assert check_sealed(tmp_path / "sealed", SEALINGS["zstd"], PLACE).sha256 is None


def test_seal_progress_counts_plaintext(tmp_path: Path) -> None:
    seen: list[tuple[int, int]] = []
    size = 2 * FRAME_SIZE + 7
    seal_file(_write(tmp_path / "src", os.urandom(size)), tmp_path / "sealed",
              SEALINGS["aes"], PLACE, progress=lambda done, total: seen.append((done, total)))
    assert seen == [(FRAME_SIZE, size), (2 * FRAME_SIZE, size), (size, size)]


# ------------------------------------------------------------------ tampering
@pytest.fixture
def small_frames(monkeypatch: pytest.MonkeyPatch) -> None:
    """64 KiB frames: the same code paths, a fraction of the bytes to check per case."""
    monkeypatch.setattr(seal, "FRAME_SIZE", 64 * 1024)


def _sealed(tmp_path: Path, sealing: Sealing) -> bytes:
    data = os.urandom(2 * seal.FRAME_SIZE + 1000)
    seal_file(_write(tmp_path / "src", data), tmp_path / "sealed", sealing, PLACE)
    return (tmp_path / "sealed").read_bytes()


def _assert_rejected(tmp_path: Path, blob: bytes, sealing: Sealing, *fragments: str,
                     place: str = PLACE, error: type[Exception] = TamperedError) -> None:
    """Refused by check, unseal (writing nothing) and unseal_bytes, one line naming it."""
    bad = _write(tmp_path / "bad", blob)
    with pytest.raises(error) as caught:
        check_sealed(bad, sealing, place)
    message = str(caught.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, (fragment, message)
    with pytest.raises(error):
        unseal_file(bad, tmp_path / "restored", sealing, place)
    assert not (tmp_path / "restored").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "temp file left"
    with pytest.raises(error):
        unseal_bytes(blob, sealing, place)


def _flip(blob: bytes, at: int) -> bytes:
    return blob[:at] + bytes([blob[at] ^ 0x01]) + blob[at + 1:]


@pytest.mark.usefixtures("small_frames")
@pytest.mark.parametrize("name", list(SEALINGS))
def test_a_flipped_byte_anywhere_is_caught(tmp_path: Path, name: str) -> None:
    sealing = SEALINGS[name]
    blob = _sealed(tmp_path, sealing)
    spans = _frames(blob, _tag_len(sealing))
    assert len(spans) == 3
    for at in (0, 11, 13, 20, 40, HEADER_SIZE - 1):  # magic, flags, frame size, id, check
        _assert_rejected(tmp_path, _flip(blob, at), sealing, str(tmp_path / "bad"))
    _assert_rejected(tmp_path, _flip(blob, 9), sealing, "format version 0",
                     error=UnsupportedError)
    for index, (start, length) in enumerate(spans):
        for at in (start, start + 1, start + 5, start + 12, start + length // 2,
                   start + length - 1):  # kind, last flag, length, payload, tag
            _assert_rejected(tmp_path, _flip(blob, at), sealing, str(tmp_path / "bad"),
                             f"frame {index}")


@pytest.mark.usefixtures("small_frames")
@pytest.mark.parametrize("name", list(SEALINGS))
def test_reordered_dropped_truncated_appended(tmp_path: Path, name: str) -> None:
    sealing = SEALINGS[name]
    blob = _sealed(tmp_path, sealing)
    (s0, l0), (s1, l1), (s2, l2) = _frames(blob, _tag_len(sealing))
    head = blob[:HEADER_SIZE]
    frame = [blob[s0:s0 + l0], blob[s1:s1 + l1], blob[s2:s2 + l2]]
    _assert_rejected(tmp_path, head + frame[1] + frame[0] + frame[2], sealing, "frame 0")
    _assert_rejected(tmp_path, head + frame[0] + frame[1], sealing, "truncated")
    _assert_rejected(tmp_path, head + frame[0] + frame[2], sealing, "frame 1")
    _assert_rejected(tmp_path, blob + frame[2], sealing, "after the last frame")
    _assert_rejected(tmp_path, blob + b"\x00", sealing, "after the last frame")
    for cut in (0, 10, HEADER_SIZE, HEADER_SIZE + 5, s1 + 100, len(blob) - 1):
        _assert_rejected(tmp_path, blob[:cut], sealing)
    # the same frames under another file's header (same key, same place)
    (tmp_path / "other").mkdir()
    other = _sealed(tmp_path / "other", sealing)
    _assert_rejected(tmp_path, other[:HEADER_SIZE] + blob[HEADER_SIZE:], sealing, "frame 0")


@pytest.mark.usefixtures("small_frames")
@pytest.mark.parametrize("name", list(SEALINGS))
def test_moved_to_another_place(tmp_path: Path, name: str) -> None:
    sealing = SEALINGS[name]
    blob = _sealed(tmp_path, sealing)
    _assert_rejected(tmp_path, blob, sealing, "frame 0",
                     place="web1/backups/20261202T100000Z/vdb.qcow2")
    _assert_rejected(tmp_path, blob, sealing, "frame 0",
                     place="web2/backups/20261202T100000Z/vda.qcow2")


@pytest.mark.usefixtures("small_frames")
def test_wrong_key_missing_key_and_downgrade(tmp_path: Path) -> None:
    blob = _sealed(tmp_path, SEALINGS["zstd+aes"])
    _assert_rejected(tmp_path, blob, Sealing(compress_level=3, key=b"\x01" * 32),
                     "another repository's key")
    _assert_rejected(tmp_path, blob, Sealing(compress_level=3), "encrypted and no key",
                     error=KeyRequiredError)
    # a compression-only file put in place of an encrypted repository's file
    plain = _sealed(tmp_path, SEALINGS["zstd"])
    _assert_rejected(tmp_path, plain, SEALINGS["zstd+aes"], "not encrypted")
    _assert_rejected(tmp_path, b"QFI\xfb" + bytes(200), SEALINGS["aes"], "not a kvmops sealed")


@pytest.mark.usefixtures("small_frames")
def test_compression_only_detects_corruption(tmp_path: Path) -> None:
    text = b"".join(b"entry %d\n" % i for i in range(100_000))
    seal_file(_write(tmp_path / "src", text), tmp_path / "sealed", SEALINGS["zstd"], PLACE)
    blob = (tmp_path / "sealed").read_bytes()
    assert len(blob) < len(text) / 4
    for at in range(HEADER_SIZE + 12, len(blob), max(1, len(blob) // 7)):
        _assert_rejected(tmp_path, _flip(blob, at), SEALINGS["zstd"], "frame ")


def test_seal_bytes_binds_place_and_key() -> None:
    data = b'{"id": "20261202T100000Z"}'
    blob = seal_bytes(data, SEALINGS["aes"], "web1/backups/X/manifest.json")
    assert data not in blob
    assert unseal_bytes(blob, SEALINGS["aes"], "web1/backups/X/manifest.json") == data
    with pytest.raises(TamperedError, match=r"web1/backups/Y/manifest\.json"):
        unseal_bytes(blob, SEALINGS["aes"], "web1/backups/Y/manifest.json")


def test_sealing_validates_and_hides_its_key() -> None:
    with pytest.raises(ValidationError):
        Sealing(key=b"short")
    with pytest.raises(ValidationError):
        Sealing(compress_level=0)
    assert Sealing().plain and not Sealing(compress_level=1).plain
    assert KEY.hex() not in repr(SEALINGS["aes"]) and str(KEY) not in repr(SEALINGS["aes"])


def _independent_open(blob: bytes, key: bytes, place: str) -> bytes:
    """docs/concepts/backup-encryption.md's format, read with nothing from kvmops: what an
    auditor's own reader does (AES-GCM, HKDF, zstd from the usual libraries)."""
    import hmac

    import zstandard
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    domain = b"kvmops-seal-v1\x00"
    magic, version, flags, _frame_size, file_id = struct.unpack(">8sHHI16s", blob[:32])
    assert (magic, version, flags) == (b"KVMOSEAL", 1, 3)
    check_key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None,
                     info=domain + b"header-check").derive(key)
    assert hmac.new(check_key, domain + blob[:32], hashlib.sha256).digest()[:16] == blob[32:48]
    file_key = HKDF(algorithm=hashes.SHA256(), length=32, salt=file_id,
                    info=domain + b"frames\x00" + place.encode()).derive(key)
    digest = hashlib.sha256(domain + blob[:48] + b"\x00" + place.encode()).digest()
    out, at, index, last = [], 48, 0, False
    while not last:
        head = blob[at:at + 12]
        kind, frame_flags, _zero, plain_len, stored = struct.unpack(">BBHII", head)
        last = bool(frame_flags & 1)
        body = blob[at + 12:at + 12 + stored + 16]
        aad = digest + index.to_bytes(8, "big") + head
        payload = AESGCM(file_key).decrypt(file_id[12:] + index.to_bytes(8, "big"), body, aad)
        out.append(bytes(plain_len) if kind == 2 else
                   zstandard.ZstdDecompressor().decompress(payload) if kind == 1 else payload)
        at, index = at + 12 + stored + 16, index + 1
    assert at == len(blob)
    return b"".join(out)


def test_the_documented_format_is_what_is_written(tmp_path: Path) -> None:
    text = b"".join(b"audit line %d\n" % i for i in range(400_000))
    data = os.urandom(FRAME_SIZE) + bytes(FRAME_SIZE) + text
    seal_file(_write(tmp_path / "src", data), tmp_path / "sealed", SEALINGS["zstd+aes"], PLACE)
    assert _independent_open((tmp_path / "sealed").read_bytes(), KEY, PLACE) == data


def test_without_o_direct_the_same_bytes_are_written(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """A file system without O_DIRECT (tmpfs) refuses the flag: sealing falls back to the
    page cache and writes the same file (the last block's padding cut off either way)."""
    monkeypatch.setattr("kvmops.backup.seal.secrets.token_bytes", lambda n: b"\x05" * n)
    data = os.urandom(FRAME_SIZE + 4097)
    src = _write(tmp_path / "src", data)
    seal_file(src, tmp_path / "direct", SEALINGS["zstd+aes"], PLACE)
    real_open = os.open

    def no_direct(path: str, flags: int, mode: int = 0o777) -> int:
        if flags & os.O_DIRECT:
            raise OSError(22, "Invalid argument")
        return real_open(path, flags, mode)

    monkeypatch.setattr("kvmops.backup.seal.os.open", no_direct)
    seal_file(src, tmp_path / "buffered", SEALINGS["zstd+aes"], PLACE)
    assert (tmp_path / "direct").read_bytes() == (tmp_path / "buffered").read_bytes()
    unseal_file(tmp_path / "buffered", tmp_path / "out", SEALINGS["zstd+aes"], PLACE)
    assert (tmp_path / "out").read_bytes() == data


def test_a_failed_write_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = _write(tmp_path / "src", os.urandom(FRAME_SIZE * 3))

    def full(_fd: int, _data: object, _offset: int) -> int:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("kvmops.backup.seal.os.pwrite", full)
    with pytest.raises(StorageError, match="No space left on device") as caught:
        seal_file(src, tmp_path / "sealed", SEALINGS["aes"], PLACE)
    assert str(tmp_path / "sealed") in str(caught.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]


@pytest.mark.parametrize("change", ["grows", "shrinks"])
def test_a_source_changing_size_while_sealed_is_an_error(tmp_path: Path,
                                                        change: str) -> None:
    """Frames are read by the workers at offsets from the size seen at the start: a file
    that changed meanwhile must fail, never seal half of it."""
    src = _write(tmp_path / "src", os.urandom(3 * FRAME_SIZE))

    def meddle(done: int, _total: int) -> None:
        if done == FRAME_SIZE:  # after the first frame
            with open(src, "r+b") as fh:
                if change == "grows":
                    fh.seek(0, os.SEEK_END)
                    fh.write(b"more")
                else:
                    fh.truncate(FRAME_SIZE + 10)

    with pytest.raises(StorageError, match="grew" if change == "grows" else "shrank"):
        seal_file(src, tmp_path / "sealed", SEALINGS["zstd+aes"], PLACE, progress=meddle,
                  workers=1)
    assert not (tmp_path / "sealed").exists()
    assert not list(tmp_path.glob(".sealed*"))
