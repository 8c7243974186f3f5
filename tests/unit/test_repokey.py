"""backup/repokey.py: the repository key is wrapped, checked, changed; never stored."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

import pytest

from kvmops.backup.repokey import create_key_file, new_encryption, read_secret, rewrap, unlock
from kvmops.errors import (
    AlreadyExistsError,
    KeyRequiredError,
    NotFoundError,
    TamperedError,
    ValidationError,
)

REPO = "/var/lib/kvmops/backups/site-a"


def test_new_encryption_unlocks_with_its_secret_only() -> None:
    config, data_key = new_encryption(b"key file bytes")
    assert len(data_key) == 32
    text = json.dumps(config)
    assert base64.b64encode(data_key).decode() not in text and data_key.hex() not in text
    assert unlock(json.loads(text), b"key file bytes", REPO) == data_key
    with pytest.raises(KeyRequiredError, match="does not open repository") as caught:
        unlock(config, b"another key", REPO)
    assert REPO in str(caught.value) and config["key_id"] in str(caught.value)
    other, other_key = new_encryption(b"key file bytes")
    assert other_key != data_key and other["kdf"]["salt"] != config["kdf"]["salt"]


@pytest.mark.parametrize("field", ["wrapped_key", "key_id", "kdf.n", "cipher", "scheme",
                                   "key_check", "kdf.salt"])
def test_a_changed_block_is_refused(field: str) -> None:
    config, _key = new_encryption(b"secret")
    changed = json.loads(json.dumps(config))
    if field == "wrapped_key":
        raw = bytearray(base64.b64decode(changed[field]))
        raw[20] ^= 1
        changed[field] = base64.b64encode(bytes(raw)).decode()
    elif field == "key_id":
        changed[field] = "0" * 16
    elif field == "kdf.n":
        changed["kdf"]["n"] = 2**30  # would cost a terabyte of scrypt memory
    elif field == "kdf.salt":
        changed["kdf"]["salt"] = base64.b64encode(b"x" * 16).decode()
    elif field == "key_check":
        changed[field] = "not base64!"
    else:
        changed[field] = "rot13"
    # a changed salt derives another key-encryption key: it reads as "not this key"
    error = KeyRequiredError if field == "kdf.salt" else TamperedError
    with pytest.raises(error, match=REPO):
        unlock(changed, b"secret", REPO)


def test_rewrap_changes_the_key_not_the_data_key() -> None:
    config, data_key = new_encryption(b"old key")
    changed = rewrap(config, b"old key", b"new key", REPO)
    assert changed["key_id"] == config["key_id"]
    assert changed["kdf"]["salt"] != config["kdf"]["salt"]
    assert unlock(changed, b"new key", REPO) == data_key
    with pytest.raises(KeyRequiredError):
        unlock(changed, b"old key", REPO)
    with pytest.raises(KeyRequiredError):
        rewrap(config, b"not the old key", b"new key", REPO)
    with pytest.raises(ValidationError):
        rewrap(config, b"old key", b"", REPO)


def test_read_secret_from_a_key_file(tmp_path: Path) -> None:
    key = tmp_path / "repo.key"
    create_key_file(key)
    assert key.stat().st_mode & 0o777 == 0o600
    secret = read_secret(key, None)
    assert len(base64.b64decode(secret)) == 32
    with pytest.raises(AlreadyExistsError):
        create_key_file(key)
    assert read_secret(key, None) == secret  # not overwritten
    raw = tmp_path / "raw.key"
    raw.write_bytes(os.urandom(32))
    raw.chmod(0o640)
    assert read_secret(raw, None) == raw.read_bytes()


def test_read_secret_refuses_bad_key_files(tmp_path: Path) -> None:
    empty = tmp_path / "empty.key"
    empty.write_bytes(b"")
    empty.chmod(0o600)
    with pytest.raises(ValidationError, match="is empty"):
        read_secret(empty, None)
    shared = tmp_path / "shared.key"
    shared.write_bytes(b"k" * 32)
    shared.chmod(0o644)
    with pytest.raises(ValidationError, match="chmod 600") as caught:
        read_secret(shared, None)
    assert str(shared) in str(caught.value) and "\n" not in str(caught.value)
    with pytest.raises(NotFoundError):
        read_secret(tmp_path / "missing.key", None)
    with pytest.raises(ValidationError, match="regular file"):
        read_secret(tmp_path, None)
    link = tmp_path / "link.key"
    link.symlink_to(shared)
    with pytest.raises(ValidationError, match="symbolic link"):
        read_secret(link, None)


def test_read_secret_from_a_passphrase_or_nothing(tmp_path: Path) -> None:
    assert read_secret(None, "correct horse\n") == b"correct horse"
    with pytest.raises(ValidationError, match="empty"):
        read_secret(None, "\n")
    with pytest.raises(KeyRequiredError, match="--key-file"):
        read_secret(None, None)
    with pytest.raises(ValidationError, match="not both"):
        read_secret(tmp_path / "k", "x")
