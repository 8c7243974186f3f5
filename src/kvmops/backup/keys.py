"""The manifest key: authenticates what kvmops writes into backup repositories.

Every manifest and checkpoint XML kvmops writes into a repository gets a sidecar
``NAME.hmac`` holding an HMAC-SHA256 over the file's place in the repository
(``VM/backups/ID/manifest.json``) and its bytes, made with a per-installation key.
A file whose HMAC is missing or wrong was not written by this kvmops (or was
changed since): it is reported as tampered and never used. Binding the place
means a genuine manifest cannot be replayed as another VM's or another backup's.

Keys live in ``STATE_DIR/keys/manifest/`` (directory 0700, files 0600): ``ID.key``
(32 random bytes) and ``current`` naming the key that signs. Older keys keep
verifying until retired, so rotation is: ``kvmops backup key rotate`` (new key
signs from now on), ``kvmops backup key resign --repo R`` (re-sign what the old
keys signed), then ``kvmops backup key retire OLD``. To restore on another host,
copy a key there with ``key export``/``key import``.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import hmac
import json
import os
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from kvmops.config import settings
from kvmops.errors import NotFoundError, StateError, StorageError, ValidationError

SCHEME = "hmac-sha256"
DOMAIN = b"kvmops-repository-v1\x00"
KEY_BYTES = 32


def keys_dir(state_dir: Path | None = None) -> Path:
    return (state_dir or settings().state_dir) / "keys" / "manifest"


@dataclass(frozen=True)
class Signature:
    key_id: str
    mac: str

    def to_json(self) -> str:
        return json.dumps({"scheme": SCHEME, "key": self.key_id, "mac": self.mac}) + "\n"

    @classmethod
    def parse(cls, text: str) -> Signature:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValidationError("signature file is not JSON") from err
        if not isinstance(data, dict) or data.get("scheme") != SCHEME:
            raise ValidationError(f"signature scheme is not {SCHEME}")
        key, mac = data.get("key"), data.get("mac")
        if not isinstance(key, str) or not isinstance(mac, str):
            raise ValidationError("signature file lacks key or mac")
        return cls(key, mac)


def _mac(key: bytes, place: str, data: bytes) -> str:
    return hmac.new(key, DOMAIN + place.encode() + b"\x00" + data, hashlib.sha256).hexdigest()


class Keyring:
    """The installation's manifest keys (created on first use)."""

    def __init__(self, directory: Path | None = None) -> None:
        self.directory = directory or keys_dir()

    # ------------------------------------------------------------ storage
    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self._ensure_dir()
        fd = os.open(self.directory / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _ensure_dir(self) -> None:
        try:
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            self.directory.chmod(0o700)
        except OSError as err:
            raise StorageError(f"cannot create the key directory {self.directory}: "
                               f"{err.strerror}") from err

    def _write_key(self, key_id: str, key: bytes) -> None:
        path = self.directory / f"{key_id}.key"
        tmp = path.with_name(f".{path.name}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, key.hex().encode() + b"\n")
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)

    def _set_current(self, key_id: str) -> None:
        tmp = self.directory / ".current.tmp"
        tmp.write_text(key_id + "\n")
        os.chmod(tmp, 0o600)
        os.replace(tmp, self.directory / "current")

    def all_keys(self) -> dict[str, bytes]:
        found: dict[str, bytes] = {}
        if not self.directory.is_dir():
            return found
        for path in sorted(self.directory.glob("*.key")):
            with contextlib.suppress(OSError, ValueError):
                key = bytes.fromhex(path.read_text().strip())
                if len(key) == KEY_BYTES:
                    found[path.stem] = key
        return found

    def current_id(self) -> str | None:
        with contextlib.suppress(OSError):
            key_id = (self.directory / "current").read_text().strip()
            return key_id if key_id in self.all_keys() else None
        return None

    def signing_key(self) -> tuple[str, bytes]:
        """The current key, created on first use."""
        key_id = self.current_id()
        if key_id is None:
            with self._locked():
                key_id = self.current_id()
                if key_id is None:
                    key_id = self._new_key()
        return key_id, self.all_keys()[key_id]

    def _new_key(self) -> str:
        key_id = secrets.token_hex(4)
        self._write_key(key_id, secrets.token_bytes(KEY_BYTES))
        self._set_current(key_id)
        return key_id

    # ------------------------------------------------------------ admin
    def rotate(self) -> str:
        with self._locked():
            return self._new_key()

    def retire(self, key_id: str) -> None:
        with self._locked():
            if key_id == self.current_id():
                raise StateError(f"key {key_id} is the current key",
                                 hint="rotate first, re-sign the repositories, then retire it")
            path = self.directory / f"{key_id}.key"
            if not path.is_file():
                raise NotFoundError(f"no manifest key {key_id}")
            path.unlink()

    def export(self, key_id: str) -> str:
        key = self.all_keys().get(key_id)
        if key is None:
            raise NotFoundError(f"no manifest key {key_id}")
        return f"{key_id}:{key.hex()}"

    def import_key(self, text: str) -> str:
        key_id, _, hexkey = text.strip().partition(":")
        try:
            key = bytes.fromhex(hexkey)
        except ValueError:
            key = b""
        if not key_id or not key_id.isalnum() or len(key) != KEY_BYTES:
            raise ValidationError("not an exported kvmops manifest key (ID:HEX)")
        with self._locked():
            existing = self.all_keys().get(key_id)
            if existing is not None and existing != key:
                raise StateError(f"a different key {key_id} exists already")
            self._write_key(key_id, key)
            if self.current_id() is None:
                self._set_current(key_id)
        return key_id

    # ------------------------------------------------------------ use
    def sign(self, place: str, data: bytes) -> Signature:
        key_id, key = self.signing_key()
        return Signature(key_id, _mac(key, place, data))

    def check(self, place: str, data: bytes, signature: Signature) -> str | None:
        """None when genuine, else why not."""
        key = self.all_keys().get(signature.key_id)
        if key is None:
            return f"signed with key {signature.key_id}, which this host does not have " \
                   "(import it with 'kvmops backup key import')"
        if not hmac.compare_digest(_mac(key, place, data), signature.mac):
            return "its HMAC does not match (changed after kvmops wrote it, or forged)"
        return None
