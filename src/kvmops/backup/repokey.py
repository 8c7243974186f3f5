"""The repository encryption key: never stored in the repository or the database.

Key hierarchy: the user's secret (a key file's bytes, or a passphrase) -> scrypt with a
per-repository salt -> a key-encryption key (KEK) -> unwraps (AES-256-GCM) the random
32-byte data key that seals the repository's files (backup/seal.py). The repository
identity keeps only the ``encryption`` block (salt, wrapped data key, key check, key id),
so changing the key (``rewrap``) rewrites that block alone: the old key file no longer
opens the repository and no data is re-encrypted. docs/concepts/backup-encryption.md.
"""

from __future__ import annotations

import base64
import binascii
import errno
import hashlib
import hmac
import json
import os
import secrets
import stat
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from kvmops.errors import (
    AlreadyExistsError,
    KeyRequiredError,
    NotFoundError,
    StorageError,
    TamperedError,
    ValidationError,
)

SCHEME = "kvmops-repokey-v1"
CIPHER = "aes-256-gcm"
KEY_BYTES = 32
# scrypt: 32 MiB and ~0.1 s per unlock; a key file is random anyway, a passphrase is not.
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**15, 8, 1
_MAX_SECRET = 1024 * 1024
_KEY_HINT = "give the repository's key with --key-file FILE or --passphrase-stdin"


def read_secret(key_file: Path | None, passphrase: str | None) -> bytes:
    """The secret from a key file (its bytes; refused when empty or readable by others)
    or a passphrase. Neither given: KeyRequiredError; both: ValidationError."""
    if key_file is not None and passphrase is not None:
        raise ValidationError("give either --key-file or --passphrase-stdin, not both")
    if passphrase is not None:
        secret = passphrase.rstrip("\r\n").encode()
        if not secret:
            raise ValidationError("the passphrase is empty", hint="give a non-empty one")
        return secret
    if key_file is None:
        raise KeyRequiredError("the repository is encrypted and no key was given",
                               hint=_KEY_HINT)
    path = Path(key_file)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        raise NotFoundError(f"key file {path} does not exist") from None
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise ValidationError(f"key file {path} is a symbolic link",
                                  hint="give the key file itself") from None
        raise StorageError(f"cannot read key file {path}: {err.strerror or err}") from err
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ValidationError(f"key file {path} is not a regular file")
        if info.st_mode & (stat.S_IROTH | stat.S_IWOTH):
            raise ValidationError(
                f"key file {path} is readable or writable by every user "
                f"(mode {stat.S_IMODE(info.st_mode):04o})", hint=f"chmod 600 {path}")
        if info.st_size > _MAX_SECRET:
            raise ValidationError(f"key file {path} is larger than 1 MiB; is it the key?")
        with os.fdopen(fd, "rb", closefd=False) as f:
            secret = f.read(_MAX_SECRET + 1)
    finally:
        os.close(fd)
    if not secret:
        raise ValidationError(f"key file {path} is empty",
                              hint="make one with 'head -c 32 /dev/urandom > FILE'")
    return secret


def create_key_file(path: Path) -> None:
    """Write a new random key file (mode 0600, refusing to overwrite one)."""
    path = Path(path)
    data = base64.b64encode(secrets.token_bytes(KEY_BYTES)) + b"\n"
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except FileExistsError:
        raise AlreadyExistsError(f"key file {path} exists; kvmops never overwrites a key",
                                 hint="choose another path") from None
    except OSError as err:
        raise StorageError(f"cannot create key file {path}: {err.strerror or err}") from err
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _unb64(text: object, what: str, repo: str) -> bytes:
    if not isinstance(text, str):
        raise _damaged(repo, f"{what} is missing")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise _damaged(repo, f"{what} is not base64") from None


def _damaged(repo: str, what: str) -> TamperedError:
    return TamperedError(f"the encryption block of repository {repo} was changed or damaged:"
                         f" {what}", hint="restore its kvmops-repository.json from a copy")


def _kek(secret: bytes, salt: bytes, n: int, r: int, p: int) -> bytes:
    return Scrypt(salt=salt, length=KEY_BYTES, n=n, r=r, p=p).derive(secret)


def _check(kek: bytes) -> bytes:
    return hmac.new(kek, b"kvmops-repokey-v1 key check", hashlib.sha256).digest()[:16]


def _aad(key_id: str, kdf: dict[str, Any]) -> bytes:
    return (SCHEME + "\x00" + key_id + "\x00" + json.dumps(kdf, sort_keys=True)).encode()


def _wrap(data_key: bytes, secret: bytes, key_id: str) -> dict[str, Any]:
    salt = secrets.token_bytes(16)
    kdf = {"name": "scrypt", "n": SCRYPT_N, "r": SCRYPT_R, "p": SCRYPT_P, "salt": _b64(salt)}
    kek = _kek(secret, salt, SCRYPT_N, SCRYPT_R, SCRYPT_P)
    nonce = secrets.token_bytes(12)
    wrapped = AESGCM(kek).encrypt(nonce, data_key, _aad(key_id, kdf))
    return {"scheme": SCHEME, "cipher": CIPHER, "key_id": key_id, "kdf": kdf,
            "key_check": _b64(_check(kek)), "wrapped_key": _b64(nonce + wrapped)}


def new_encryption(secret: bytes) -> tuple[dict[str, Any], bytes]:
    """A new random data key and the JSON-able ``encryption`` block that wraps it."""
    if not secret:
        raise ValidationError("an empty secret cannot protect a repository")
    data_key = secrets.token_bytes(KEY_BYTES)
    return _wrap(data_key, secret, secrets.token_hex(8)), data_key


def unlock(config: dict[str, Any], secret: bytes, repo: str) -> bytes:
    """The data key of repository ``repo``. KeyRequiredError when the secret is not the
    repository's key; TamperedError when the block was changed."""
    if not isinstance(config, dict) or config.get("scheme") != SCHEME:
        raise _damaged(repo, f"scheme is not {SCHEME}")
    if config.get("cipher") != CIPHER:
        raise _damaged(repo, f"cipher is not {CIPHER}")
    kdf, key_id = config.get("kdf"), config.get("key_id")
    if not isinstance(kdf, dict) or kdf.get("name") != "scrypt" or not isinstance(key_id, str):
        raise _damaged(repo, "kdf or key id is missing")
    n, r, p = kdf.get("n"), kdf.get("r"), kdf.get("p")
    # Bounds: a changed block must not make kvmops spend gigabytes or hours on scrypt.
    if not (isinstance(n, int) and isinstance(r, int) and isinstance(p, int)
            and 2**14 <= n <= 2**20 and n & (n - 1) == 0 and 1 <= r <= 16 and 1 <= p <= 4):
        raise _damaged(repo, "scrypt parameters are out of bounds")
    salt = _unb64(kdf.get("salt"), "salt", repo)
    check = _unb64(config.get("key_check"), "key check", repo)
    wrapped = _unb64(config.get("wrapped_key"), "wrapped key", repo)
    if len(salt) < 16 or len(wrapped) != 12 + KEY_BYTES + 16:
        raise _damaged(repo, "salt or wrapped key has the wrong length")
    kek = _kek(secret, salt, n, r, p)
    if not hmac.compare_digest(_check(kek), check):
        raise KeyRequiredError(f"the key does not open repository {repo} (key id {key_id})",
                               hint="give the key file or passphrase it was encrypted with")
    try:
        return AESGCM(kek).decrypt(wrapped[:12], wrapped[12:], _aad(key_id, kdf))
    except InvalidTag:
        raise _damaged(repo, "the wrapped data key failed its authentication") from None


def rewrap(config: dict[str, Any], old_secret: bytes, new_secret: bytes,
           repo: str = "the repository") -> dict[str, Any]:
    """The block with the same data key wrapped by ``new_secret`` (key change); the old
    secret no longer opens it once the repository keeps the new block."""
    if not new_secret:
        raise ValidationError("an empty secret cannot protect a repository")
    data_key = unlock(config, old_secret, repo)
    return _wrap(data_key, new_secret, str(config["key_id"]))
