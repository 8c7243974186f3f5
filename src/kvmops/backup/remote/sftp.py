"""A repository directory on an SSH server, through SFTP (paramiko).

``sftp://USER@HOST[:PORT]/PATH[?identity=FILE&known_hosts=FILE]``. The server's host
key must be in the known_hosts file (the URL's, else the settings' ``ssh_known_hosts``,
else ``~/.ssh/known_hosts``): an unknown or changed key is refused, never learned.
Login is by key only (the URL's ``identity``, else the settings' ``ssh_identity``,
else ``~/.ssh/id_*``); no agent, no password.

Writes are atomic: a file is uploaded under a temporary name next to its key
(``.NAME.kvmops-up-TAG``) and renamed over it with OpenSSH's ``posix-rename``, so a
reader sees the old object or the whole new one. The temporary name of :meth:`put_file`
is derived from the key and the source file's identity (size, mtime, inode), so an
upload cut off (network, kill) resumes from the bytes already there.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import posixpath
import secrets
import stat
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import paramiko

from kvmops.backup.remote import RemoteUrl, parse_remote_url
from kvmops.errors import ConfigError, HostUnavailableError, NotFoundError, StorageError

ProgressFn = Callable[[int, int], None]
TMP_MARK = ".kvmops-up-"
CHUNK = 1 << 20
CONNECT_TIMEOUT = 30.0


def _missing(err: OSError) -> bool:
    return isinstance(err, FileNotFoundError) or err.errno == errno.ENOENT


class SftpStore:
    """An :class:`kvmops.backup.store.ObjectStore` on an SFTP server."""

    def __init__(self, url: str) -> None:
        self.remote: RemoteUrl = parse_remote_url(url)
        if self.remote.scheme != "sftp":
            raise ValueError(f"not an sftp URL: {url}")
        self.url = str(self.remote)
        self.base = self.remote.path.rstrip("/") or "/"
        self._lock = threading.RLock()
        self._client: paramiko.SSHClient | None = None
        self._sftp: paramiko.SFTPClient | None = None

    # ------------------------------------------------------------ connection
    def _where(self) -> str:
        port = self.remote.port or 22
        return f"{self.remote.host}:{port}"

    def _known_hosts(self) -> Path:
        from kvmops.config import settings

        given = self.remote.params.get("known_hosts")
        if given:
            return Path(given)
        configured = getattr(settings(), "ssh_known_hosts", None)
        return Path(configured) if configured else Path.home() / ".ssh" / "known_hosts"

    def _identity(self) -> str | None:
        from kvmops.config import settings

        given = self.remote.params.get("identity")
        if given:
            return given
        configured = getattr(settings(), "ssh_identity", None)
        return str(configured) if configured else None

    def _connect(self) -> paramiko.SFTPClient:
        if self._sftp is not None:
            return self._sftp
        known = self._known_hosts()
        if not known.is_file():
            raise ConfigError(
                f"cannot check the SSH host key of {self._where()}: known_hosts file "
                f"{known} does not exist",
                hint="add the server's key (ssh-keyscan, checked by fingerprint) to it, or "
                     "set ssh_known_hosts in /etc/kvmops/config.toml")
        identity = self._identity()
        if identity is not None and not Path(identity).is_file():
            raise ConfigError(f"SSH identity {identity} for {self.url} does not exist",
                              hint="set ssh_identity, or ?identity=FILE in the URL")
        client = paramiko.SSHClient()
        try:
            client.load_host_keys(str(known))
        except Exception as err:  # paramiko raises InvalidHostKey (and more) on bad lines
            raise ConfigError(f"cannot read known_hosts file {known}: "
                              f"{type(err).__name__}: {str(err)[:200]}",
                              hint="each line: [HOST]:PORT KEYTYPE BASE64KEY") from err
        client.set_missing_host_key_policy(paramiko.RejectPolicy())
        try:
            client.connect(
                self.remote.host, port=self.remote.port or 22, username=self.remote.user,
                key_filename=identity, look_for_keys=identity is None, allow_agent=False,
                timeout=CONNECT_TIMEOUT, banner_timeout=CONNECT_TIMEOUT,
                auth_timeout=CONNECT_TIMEOUT)
            sftp = client.open_sftp()
        except paramiko.BadHostKeyException as err:
            client.close()
            raise HostUnavailableError(
                f"the SSH host key of {self._where()} does not match {known}: refusing "
                "to connect (a changed server, or someone in between)",
                hint="check the server's key fingerprint, then fix the entry in "
                     f"{known}") from err
        except paramiko.AuthenticationException as err:
            client.close()
            raise HostUnavailableError(
                f"SSH login to {self.remote.user or ''}@{self._where()} was refused: {err}",
                hint="check the user and the key (ssh_identity or ?identity=FILE)") from err
        except paramiko.SSHException as err:
            client.close()
            if "not found in known_hosts" in str(err):
                raise HostUnavailableError(
                    f"the SSH host key of {self._where()} is not in {known}: refusing an "
                    "unknown host",
                    hint="add its key to the known_hosts file after checking its "
                         "fingerprint (ssh-keyscan -p PORT HOST)") from err
            raise HostUnavailableError(f"SSH to {self._where()} failed: {err}") from err
        except (TimeoutError, OSError) as err:
            client.close()
            raise HostUnavailableError(
                f"cannot reach SSH server {self._where()}: {getattr(err, 'strerror', None) or err}",
                hint="check the host, the port and the network") from err
        self._client, self._sftp = client, sftp
        return sftp

    def close(self) -> None:
        with self._lock:
            if self._client is not None:
                with contextlib.suppress(Exception):
                    self._client.close()
            self._client = self._sftp = None

    def __enter__(self) -> SftpStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextlib.contextmanager
    def _session(self, what: str) -> Iterator[paramiko.SFTPClient]:
        with self._lock:
            sftp = self._connect()
            try:
                yield sftp
            except (OSError, EOFError, paramiko.SSHException) as err:
                if isinstance(err, OSError) and err.errno is not None:
                    raise  # an SFTP status (missing file...) for the caller to judge
                self.close()  # a broken connection: reconnect on the next call
                raise StorageError(f"{what} on {self.url} failed: {err}") from err

    # ------------------------------------------------------------ paths
    def _path(self, key: str) -> str:
        parts = [p for p in key.split("/") if p]
        if not parts or any(p in (".", "..") for p in parts):
            raise ValueError(f"invalid store key {key!r}")
        return posixpath.join(self.base, *parts)

    def _makedirs(self, sftp: paramiko.SFTPClient, directory: str) -> None:
        missing: list[str] = []
        current = directory
        while current not in ("/", ""):
            try:
                sftp.stat(current)
                break
            except OSError as err:
                if not _missing(err):
                    raise
                missing.append(current)
                current = posixpath.dirname(current)
        for path in reversed(missing):
            try:
                sftp.mkdir(path, 0o755)
            except OSError:
                sftp.stat(path)  # made meanwhile by another writer is fine

    # ------------------------------------------------------------ protocol
    def list(self, prefix: str = "") -> list[str]:
        """Keys under ``prefix`` (a directory prefix such as ``VM/backups/`` or any start
        of a key), sorted; temporary upload files are never listed."""
        start = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
        found: list[str] = []
        with self._session(f"listing {prefix or '/'}") as sftp:
            todo = [start]
            while todo:
                rel = todo.pop()
                directory = posixpath.join(self.base, rel) if rel else self.base
                try:
                    entries = sftp.listdir_attr(directory)
                except OSError as err:
                    if _missing(err):
                        continue
                    raise StorageError(f"cannot list {directory} on {self.url}: {err}"
                                       ) from err
                for entry in entries:
                    key = f"{rel}/{entry.filename}" if rel else entry.filename
                    if entry.filename.startswith("."):
                        continue  # temporaries (uploads), locks: as LocalStore
                    if stat.S_ISDIR(entry.st_mode or 0):
                        if (key + "/").startswith(prefix) or prefix.startswith(key + "/"):
                            todo.append(key)
                    elif key.startswith(prefix):
                        found.append(key)
        return sorted(found)

    def size(self, key: str) -> int | None:
        with self._session(f"stat {key}") as sftp:
            try:
                return sftp.stat(self._path(key)).st_size
            except OSError as err:
                if _missing(err):
                    return None
                raise StorageError(f"cannot stat {key} on {self.url}: {err}") from err

    def get_bytes(self, key: str) -> bytes:
        with self._session(f"reading {key}") as sftp:
            try:
                with sftp.open(self._path(key), "rb") as fh:
                    fh.prefetch()
                    return fh.read()
            except OSError as err:
                if _missing(err):
                    raise NotFoundError(f"{key} does not exist in {self.url}") from err
                raise StorageError(f"cannot read {key} from {self.url}: {err}") from err

    def _publish(self, sftp: paramiko.SFTPClient, tmp: str, final: str) -> None:
        try:
            sftp.posix_rename(tmp, final)
        except OSError as err:
            with contextlib.suppress(OSError):
                sftp.remove(tmp)
            raise StorageError(f"cannot rename {tmp} to {final} on {self.url}: {err}",
                               hint="the server must offer OpenSSH's posix-rename "
                                    "extension (atomic replace)") from err

    def put_bytes(self, key: str, data: bytes) -> None:
        final = self._path(key)
        tmp = posixpath.join(posixpath.dirname(final),
                             f".{posixpath.basename(final)}{TMP_MARK}{secrets.token_hex(6)}")
        with self._session(f"writing {key}") as sftp:
            try:
                self._makedirs(sftp, posixpath.dirname(final))
                with sftp.open(tmp, "wb") as fh:
                    fh.set_pipelined(True)
                    fh.write(data)
            except OSError as err:
                with contextlib.suppress(OSError):
                    sftp.remove(tmp)
                raise StorageError(f"cannot write {key} to {self.url}: {err}") from err
            self._publish(sftp, tmp, final)

    def put_file(self, key: str, src: Path, progress: ProgressFn | None = None) -> None:
        """Upload ``src`` atomically; a cut-off upload of the same file resumes."""
        final = self._path(key)
        st = os.stat(src)
        tag = hashlib.sha256(f"{key}\0{st.st_size}\0{st.st_mtime_ns}\0{st.st_ino}".encode()
                             ).hexdigest()[:16]
        tmp = posixpath.join(posixpath.dirname(final),
                             f".{posixpath.basename(final)}{TMP_MARK}{tag}")
        total = st.st_size
        with self._session(f"uploading {key}") as sftp:
            try:
                self._makedirs(sftp, posixpath.dirname(final))
                try:
                    done = sftp.stat(tmp).st_size or 0
                except OSError as err:
                    if not _missing(err):
                        raise
                    done = 0
                if done > total:
                    sftp.remove(tmp)
                    done = 0
                with open(src, "rb") as local, \
                        sftp.open(tmp, "r+b" if done else "wb") as remote:
                    remote.set_pipelined(True)
                    local.seek(done)
                    remote.seek(done)
                    self._copy(local, remote, done, total, progress)
            except OSError as err:
                raise StorageError(f"cannot upload {src} to {key} on {self.url}: {err}"
                                   ) from err
            self._publish(sftp, tmp, final)

    @staticmethod
    def _copy(src: Any, dst: Any, done: int, total: int,
              progress: ProgressFn | None) -> None:
        if progress is not None:
            progress(done, total)
        while block := src.read(CHUNK):
            dst.write(block)
            done += len(block)
            if progress is not None:
                progress(done, total)

    def get_file(self, key: str, dst: Path, progress: ProgressFn | None = None) -> None:
        """Download into ``dst`` atomically (a temporary file renamed over it)."""
        tmp = dst.with_name(f".{dst.name}.kvmops-down")
        with self._session(f"downloading {key}") as sftp:
            remote_path = self._path(key)
            try:
                total = sftp.stat(remote_path).st_size or 0
            except OSError as err:
                if _missing(err):
                    raise NotFoundError(f"{key} does not exist in {self.url}") from err
                raise StorageError(f"cannot stat {key} on {self.url}: {err}") from err
            try:
                with open(tmp, "wb") as local:
                    if progress is not None:
                        progress(0, total)
                    # getfo: paramiko's pipelined prefetch, about twice a read loop's rate
                    sftp.getfo(remote_path, local, callback=progress)
                    local.flush()
                    os.fsync(local.fileno())
            except OSError as err:
                with contextlib.suppress(OSError):
                    tmp.unlink()
                raise StorageError(f"cannot download {key} from {self.url} to {dst}: "
                                   f"{err}") from err
        os.replace(tmp, dst)

    def delete(self, key: str) -> None:
        """Remove ``key`` (missing is fine), and its directories left empty."""
        path = self._path(key)
        with self._session(f"deleting {key}") as sftp:
            try:
                sftp.remove(path)
            except OSError as err:
                if not _missing(err):
                    raise StorageError(f"cannot delete {key} from {self.url}: {err}"
                                       ) from err
            directory = posixpath.dirname(path)
            while directory != self.base and directory.startswith(self.base + "/"):
                try:
                    sftp.rmdir(directory)  # fails while not empty: that is the check
                except OSError:
                    break
                directory = posixpath.dirname(directory)


def open_sftp(url: str) -> SftpStore:
    """The ``sftp`` scheme's factory for :func:`kvmops.backup.store.register_scheme`."""
    return SftpStore(url)
