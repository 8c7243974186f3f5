"""Guest operations through the guest agent, on any :class:`AgentChannel`.

Every function takes a channel (libvirt VM or raw socket) and returns a pydantic
model or plain value; failures are GuestAgentError subclasses (or
OperationTimeoutError for a guest process that outlives its timeout).

File transfers (:func:`push`, :func:`pull`) move the data in base64 chunks with
guest-file-read/write. A push writes to a temporary name next to the destination
(``.NAME.kvmops-XXXX.part``), checks a checksum computed in the guest against
the local one, applies owner and mode, and only then renames it into place, so a
failed or interrupted push never leaves a half-written file at the destination.
The temporary file is removed on any failure the process survives; one left by a
killed process is removed by the next push to the same destination.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import posixpath
import re
import secrets
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from kvmops.agent.channel import AgentChannel
from kvmops.agent.process import (  # noqa: F401 (re-exported: guest exec lives apart, without pydantic)
    EXEC_POLL_FIRST,
    EXEC_POLL_MAX,
    ExecResult,
    error_detail,
    exec,
    exec_start,
    exec_status,
)
from kvmops.errors import (
    AgentCommandDisabledError,
    AgentUnavailableError,
    CancelledError,
    ChannelError,
    GuestCommandError,
    KvmopsError,
    StorageError,
    ValidationError,
)

# Raw bytes per guest-file-read/write: by default the channel's ``chunk_size``
# (64 KiB through libvirt, 1 MiB on a raw socket; see AgentChannel). Its base64
# form (4/3 larger) plus JSON stays under libvirt's 4 MiB RPC string limit.
CHUNK_SIZE = 64 * 1024
MAX_CHUNK_SIZE = 2 << 20
CHUNK_TIMEOUT = 120.0
TEMP_MARK = ".kvmops-"
TEMP_SUFFIX = ".part"

Progress = Callable[[int, int | None], None]
"""``progress(done_bytes, total_bytes_or_None)``; raising from it aborts the transfer."""


class _Model(BaseModel):
    model_config = ConfigDict(populate_by_name=True)


# ------------------------------------------------------------------ models
class AgentInfo(_Model):
    version: str
    supported: list[str]
    disabled: list[str]


class OsInfo(_Model):
    kernel_release: str | None = Field(None, alias="kernel-release")
    kernel_version: str | None = Field(None, alias="kernel-version")
    machine: str | None = None
    id: str | None = None
    name: str | None = None
    pretty_name: str | None = Field(None, alias="pretty-name")
    version: str | None = None
    version_id: str | None = Field(None, alias="version-id")


class IpAddress(_Model):
    address: str = Field(alias="ip-address")
    type: str = Field(alias="ip-address-type")
    prefix: int


class Interface(_Model):
    name: str
    mac: str | None = Field(None, alias="hardware-address")
    addresses: list[IpAddress] = Field(default_factory=list, alias="ip-addresses")


class GuestUser(_Model):
    user: str
    login_time: float = Field(alias="login-time")
    domain: str | None = None


class FsInfo(_Model):
    name: str
    mountpoint: str
    type: str
    used_bytes: int | None = Field(None, alias="used-bytes")
    total_bytes: int | None = Field(None, alias="total-bytes")
    disks: list[str] = Field(default_factory=list)


class GuestTime(_Model):
    ns: int
    iso: str
    offset_seconds: float  # guest minus host at the moment of reading


class Vcpu(_Model):
    logical_id: int = Field(alias="logical-id")
    online: bool
    can_offline: bool | None = Field(None, alias="can-offline")


class TransferResult(_Model):
    source: str
    destination: str
    size: int
    checksum: str | None  # "sha256:<hex>" or "md5:<hex>", None when not verified
    note: str | None = None


class TrimResult(_Model):
    path: str
    trimmed: int | None = None
    minimum: int | None = None
    error: str | None = None


FreezeStatus = Literal["frozen", "thawed"]


# ------------------------------------------------------------------ simple queries
def ping(channel: AgentChannel, *, timeout: float = 10.0) -> None:
    channel.execute("guest-ping", timeout=timeout)


def info(channel: AgentChannel) -> AgentInfo:
    raw = channel.execute("guest-info")
    commands = raw.get("supported_commands", [])
    return AgentInfo(
        version=str(raw.get("version", "")),
        supported=sorted(c["name"] for c in commands if c.get("enabled", True)),
        disabled=sorted(c["name"] for c in commands if not c.get("enabled", True)),
    )


def osinfo(channel: AgentChannel) -> OsInfo:
    return OsInfo.model_validate(channel.execute("guest-get-osinfo"))


def hostname(channel: AgentChannel) -> str:
    return str(channel.execute("guest-get-host-name")["host-name"])


def interfaces(channel: AgentChannel) -> list[Interface]:
    return [Interface.model_validate(i) for i in channel.execute("guest-network-get-interfaces")]


def users(channel: AgentChannel) -> list[GuestUser]:
    return [GuestUser.model_validate(u) for u in channel.execute("guest-get-users")]


def fsinfo(channel: AgentChannel) -> list[FsInfo]:
    result = []
    for fs in channel.execute("guest-get-fsinfo"):
        disks = [str(d.get("dev") or f"{d.get('bus-type')}:{d.get('target')}")
                 for d in fs.get("disk", [])]
        result.append(FsInfo.model_validate({**fs, "disks": disks}))
    return result


def vcpus(channel: AgentChannel) -> list[Vcpu]:
    return [Vcpu.model_validate(v) for v in channel.execute("guest-get-vcpus")]


def get_time(channel: AgentChannel) -> GuestTime:
    before = time.time_ns()
    ns = int(channel.execute("guest-get-time"))
    host_ns = (before + time.time_ns()) // 2
    return GuestTime(ns=ns, iso=datetime.fromtimestamp(ns / 1e9, UTC).isoformat(),
                     offset_seconds=round((ns - host_ns) / 1e9, 3))


def set_time(channel: AgentChannel, when: datetime | None = None) -> GuestTime:
    """Set the guest clock to ``when`` (aware or UTC), or to the host's clock now."""
    if when is not None and when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    ns = time.time_ns() if when is None else int(when.timestamp() * 1_000_000_000)
    channel.execute("guest-set-time", {"time": ns})
    return get_time(channel)


def sync_time(channel: AgentChannel) -> GuestTime:
    return set_time(channel, None)


# ------------------------------------------------------------------ exec
def _run(channel: AgentChannel, argv: Sequence[str], what: str, *, timeout: float = 60.0,
         stdin: bytes | None = None) -> str:
    """Run a helper command whose failure is a GuestCommandError naming ``what``."""
    result = exec(channel, argv, timeout=timeout, stdin=stdin)
    if result.exit_code != 0:
        detail = result.stderr.decode(errors="replace").strip().splitlines()
        reason = detail[-1] if detail else f"exit code {result.exit_code}"
        raise GuestCommandError(f"{what} failed in the guest of {channel.target}: {reason}")
    return result.stdout.decode(errors="replace")


# ------------------------------------------------------------------ files
def chunk_ranges(size: int, chunk: int) -> list[tuple[int, int]]:
    """(offset, length) of each chunk of a ``size``-byte file; one empty chunk for 0 bytes."""
    if chunk <= 0:
        raise ValidationError("chunk size must be positive")
    if size == 0:
        return [(0, 0)]
    return [(off, min(chunk, size - off)) for off in range(0, size, chunk)]


def encoded_request_size(chunk: int) -> int:
    """Upper bound of one guest-file-write request in bytes (base64 + JSON envelope)."""
    return 4 * ((chunk + 2) // 3) + 128


def temp_name(destination: str, token: str | None = None) -> str:
    directory, name = posixpath.split(destination)
    return posixpath.join(directory, f".{name}{TEMP_MARK}{token or secrets.token_hex(4)}"
                          f"{TEMP_SUFFIX}")


def _check_mode(mode: str | None) -> None:
    if mode is not None and not re.fullmatch(r"[0-7]{3,4}", mode):
        raise ValidationError(f"invalid mode '{mode}'", hint="give octal digits, e.g. 0644")


def _check_owner(owner: str | None) -> None:
    if owner is not None and not re.fullmatch(r"[A-Za-z0-9_.][A-Za-z0-9_.-]*"
                                              r"(:[A-Za-z0-9_.][A-Za-z0-9_.-]*)?", owner):
        raise ValidationError(f"invalid owner '{owner}'", hint="give USER or USER:GROUP")


# Runs in the guest before a push: resolves a directory destination, removes temp
# files left by a killed earlier push to the same destination, creates the new
# temp file private (0600), and prints the destination and, if it exists, its
# mode and owner (kept unless --mode/--owner say otherwise).
_PREPARE = r'''r=$1
case $r in */) r=$r$2 ;; *) if [ -d "$r" ]; then r=$r/$2; fi ;; esac
d=${r%/*}; b=${r##*/}; [ -n "$d" ] || d=/
[ -d "$d" ] || { echo "directory $d does not exist" >&2; exit 2; }
rm -f -- "$d/.$b"''' + TEMP_MARK + "*" + TEMP_SUFFIX + r''' 2>/dev/null
t="$d/.$b''' + TEMP_MARK + r'''$3''' + TEMP_SUFFIX + r'''"
(umask 077 && : > "$t") || exit 3
printf '%s\n%s\n' "$r" "$t"
if [ -f "$r" ]; then stat -c '%a %u:%g' -- "$r"; fi'''


class _Target(BaseModel):
    destination: str
    temp: str
    mode: str | None = None  # existing file's mode / owner, kept by default
    owner: str | None = None


def _prepare(channel: AgentChannel, remote: str, name: str) -> _Target:
    token = secrets.token_hex(4)
    try:
        result = exec(channel, ["sh", "-c", _PREPARE, "sh", remote, name, token], timeout=60)
    except AgentCommandDisabledError:
        raise
    except GuestCommandError:
        result = None  # no /bin/sh in the guest: keep the path as given
    if result is None or result.exit_code == 127:
        dest = posixpath.join(remote, name) if remote.endswith("/") else remote
        return _Target(destination=dest, temp=temp_name(dest, token))
    err = result.stderr.decode(errors="replace").strip()
    if result.exit_code != 0:
        raise GuestCommandError(f"cannot push to '{remote}' in the guest of {channel.target}: "
                                f"{err.splitlines()[-1] if err else 'cannot create a file there'}")
    lines = result.stdout.decode(errors="replace").splitlines()
    target = _Target(destination=lines[0], temp=lines[1])
    if len(lines) > 2 and len(lines[2].split()) == 2:
        target.mode, target.owner = lines[2].split()
    return target


def _file_open(channel: AgentChannel, path: str, mode: str, what: str) -> int:
    try:
        return int(channel.execute("guest-file-open", {"path": path, "mode": mode}))
    except AgentCommandDisabledError:
        raise
    except GuestCommandError as err:
        raise GuestCommandError(f"{what} in the guest of {channel.target}: {_reason(err)}"
                                ) from err


def _reason(err: KvmopsError) -> str:
    """The OS reason at the end of a qemu-ga error ('...: No such file or directory')."""
    text = err.message
    return text.rsplit(": ", 1)[-1] if ": " in text else text


def _file_close(channel: AgentChannel, handle: int) -> None:
    channel.execute("guest-file-close", {"handle": handle})


def _remove_quietly(channel: AgentChannel, path: str) -> None:
    with contextlib.suppress(KvmopsError):
        exec(channel, ["rm", "-f", "--", path], timeout=30)


def _guest_checksum(channel: AgentChannel, path: str) -> tuple[str, str] | None:
    """(algorithm, hex digest) of ``path`` computed in the guest, or None if no tool exists."""
    for algo in ("sha256", "md5"):
        try:
            result = exec(channel, [f"{algo}sum", path], timeout=300)
        except AgentCommandDisabledError:
            return None
        except GuestCommandError:
            continue  # tool missing: try the next one
        if result.exit_code == 127:
            continue
        if result.exit_code != 0:
            raise GuestCommandError(
                f"cannot checksum '{path}' in the guest of {channel.target}: "
                f"{result.stderr.decode(errors='replace').strip()}")
        return algo, result.stdout.decode().split()[0].lower()
    return None


def _upload(channel: AgentChannel, chunks: Iterator[bytes], size: int, target: _Target, *,
            mode: str | None, owner: str | None, progress: Progress | None,
            digests: dict[str, Any], source: str) -> TransferResult:
    """Write ``chunks`` to the target's temp file, verify, chown/chmod, rename into place."""
    destination, temp = target.destination, target.temp
    owner = owner or target.owner
    mode = mode or target.mode or "644"
    try:
        handle = _file_open(channel, temp, "w",
                            f"cannot create a file in '{posixpath.dirname(destination) or '/'}'")
    except BaseException:
        _remove_quietly(channel, temp)
        raise
    done = 0
    closed = False
    try:
        if progress:
            progress(0, size)
        for data in chunks:
            view = data
            while view:
                reply = channel.execute(
                    "guest-file-write",
                    {"handle": handle, "buf-b64": base64.b64encode(view).decode()},
                    timeout=CHUNK_TIMEOUT)
                written = int(reply.get("count", len(view)))
                if written <= 0:
                    raise GuestCommandError(
                        f"writing '{destination}' in the guest of {channel.target} stalled "
                        f"after {done} bytes (disk full?)")
                view = view[written:]
                done += written
            if progress:
                progress(done, size)
        _file_close(channel, handle)
        closed = True
        checksum: str | None = None
        note: str | None = None
        remote_sum = _guest_checksum(channel, temp)
        if remote_sum is None:
            note = "checksum not verified: neither sha256sum nor md5sum runs in the guest"
        else:
            algo, digest = remote_sum
            local = digests[algo].hexdigest()
            if digest != local:
                raise ChannelError(
                    f"checksum mismatch pushing to '{destination}' on {channel.target}: "
                    f"{algo} local {local}, guest {digest}",
                    hint="nothing was written at the destination; retry the push")
            checksum = f"{algo}:{digest}"
        if owner:
            _run(channel, ["chown", owner, temp], f"chown {owner} '{destination}'")
        _run(channel, ["chmod", mode, temp], f"chmod {mode} '{destination}'")
        _run(channel, ["mv", "-f", temp, destination], f"renaming into '{destination}'")
    except BaseException as err:
        if not closed:
            with contextlib.suppress(KvmopsError):
                _file_close(channel, handle)
        _remove_quietly(channel, temp)
        if isinstance(err, KeyboardInterrupt):
            raise CancelledError(f"push to '{destination}' on {channel.target} interrupted "
                                 f"after {done} bytes: the partial file was removed and "
                                 f"'{destination}' was not touched") from err
        raise
    return TransferResult(source=source, destination=destination, size=done,
                          checksum=checksum, note=note)


def _local_chunks(path: Path, chunk: int, digests: dict[str, Any]) -> Iterator[bytes]:
    with path.open("rb") as f:
        while data := f.read(chunk):
            for h in digests.values():
                h.update(data)
            yield data


def push(channel: AgentChannel, local: Path | str, remote: str, *, mode: str | None = None,
         owner: str | None = None, progress: Progress | None = None,
         chunk_size: int | None = None) -> TransferResult:
    """Copy a local file to ``remote`` in the guest (a directory keeps the local name)."""
    local = Path(local)
    chunk_size = chunk_size or channel.chunk_size
    _check_mode(mode)
    _check_owner(owner)
    if not 0 < chunk_size <= MAX_CHUNK_SIZE:
        raise ValidationError(f"chunk size must be 1..{MAX_CHUNK_SIZE} bytes")
    if not remote.startswith("/"):
        raise ValidationError(f"guest path '{remote}' is not absolute",
                              hint="give the full path, e.g. /tmp/file")
    try:
        size = local.stat().st_size
        if not local.is_file():
            raise ValidationError(f"'{local}' is not a regular file")
        with local.open("rb"):
            pass
    except FileNotFoundError as err:
        raise StorageError(f"local file '{local}' does not exist") from err
    except PermissionError as err:
        raise StorageError(f"cannot read local file '{local}': permission denied") from err
    target = _prepare(channel, remote, local.name)
    digests: dict[str, Any] = {"sha256": hashlib.sha256(), "md5": hashlib.md5()}
    return _upload(channel, _local_chunks(local, chunk_size, digests), size, target,
                   mode=mode, owner=owner, progress=progress, digests=digests,
                   source=str(local))


def write_bytes(channel: AgentChannel, data: bytes, remote: str, *, mode: str | None = None,
                owner: str | None = None) -> TransferResult:
    """Atomically replace ``remote`` in the guest with ``data`` (same guarantees as push)."""
    _check_mode(mode)
    _check_owner(owner)
    digests: dict[str, Any] = {"sha256": hashlib.sha256(data), "md5": hashlib.md5(data)}
    if not remote.startswith("/") or remote.endswith("/"):
        raise ValidationError(f"guest path '{remote}' must be an absolute file path")
    chunks = iter([data[o:o + n] for o, n in chunk_ranges(len(data), channel.chunk_size)])
    target = _prepare(channel, remote, posixpath.basename(remote))
    return _upload(channel, chunks, len(data), target, mode=mode, owner=owner, progress=None,
                   digests=digests, source="<bytes>")


def _read_chunks(channel: AgentChannel, handle: int, chunk: int, what: str
                 ) -> Iterator[bytes]:
    while True:
        try:
            reply = channel.execute("guest-file-read", {"handle": handle, "count": chunk},
                                    timeout=CHUNK_TIMEOUT)
        except GuestCommandError as err:
            raise GuestCommandError(f"cannot read {what} in the guest of {channel.target}: "
                                    f"{_reason(err)}") from err
        data = base64.b64decode(reply.get("buf-b64", ""))
        if data:
            yield data
        if reply.get("eof") or not data:
            return


def _remote_size(channel: AgentChannel, handle: int) -> int | None:
    try:
        end = int(channel.execute("guest-file-seek",
                                  {"handle": handle, "offset": 0, "whence": "end"})["position"])
        channel.execute("guest-file-seek", {"handle": handle, "offset": 0, "whence": "set"})
    except (GuestCommandError, KeyError, TypeError):
        return None
    return end or None


def read_bytes(channel: AgentChannel, remote: str, *, limit: int = 64 << 20) -> bytes:
    """A whole (small) guest file in memory."""
    handle = _file_open(channel, remote, "r", f"cannot read '{remote}'")
    try:
        data = bytearray()
        for piece in _read_chunks(channel, handle, channel.chunk_size, f"'{remote}'"):
            data += piece
            if len(data) > limit:
                raise ValidationError(f"guest file '{remote}' is larger than {limit} bytes")
        return bytes(data)
    finally:
        with contextlib.suppress(KvmopsError):
            _file_close(channel, handle)


def pull(channel: AgentChannel, remote: str, local: Path | str, *,
         progress: Progress | None = None, chunk_size: int | None = None) -> TransferResult:
    """Copy a guest file to ``local`` (a directory keeps the guest name).

    The data goes to a temporary file next to ``local``, is fsync'd and renamed.
    """
    local = Path(local)
    chunk_size = chunk_size or channel.chunk_size
    if not 0 < chunk_size <= MAX_CHUNK_SIZE:
        raise ValidationError(f"chunk size must be 1..{MAX_CHUNK_SIZE} bytes")
    if local.is_dir():
        local = local / posixpath.basename(remote.rstrip("/"))
    if not local.parent.is_dir():
        raise StorageError(f"local directory '{local.parent}' does not exist")
    handle = _file_open(channel, remote, "r", f"cannot read '{remote}'")
    fd = -1
    temp: str | None = None
    try:
        total = _remote_size(channel, handle)
        fd, temp = tempfile.mkstemp(prefix=f".{local.name}{TEMP_MARK}", suffix=TEMP_SUFFIX,
                                    dir=local.parent)
        digest = hashlib.sha256()
        done = 0
        if progress:
            progress(0, total)
        for data in _read_chunks(channel, handle, chunk_size, f"'{remote}'"):
            os.write(fd, data)
            digest.update(data)
            done += len(data)
            if progress:
                progress(done, total)
        os.fsync(fd)
        os.close(fd)
        fd = -1
        os.chmod(temp, 0o644 & ~_umask())
        os.replace(temp, local)
        temp = None
        _fsync_dir(local.parent)
    except OSError as err:
        raise StorageError(f"cannot write local file '{local}': {err.strerror or err}") from err
    finally:
        if fd >= 0:
            os.close(fd)
        if temp is not None:
            with contextlib.suppress(OSError):
                os.unlink(temp)
        with contextlib.suppress(KvmopsError):
            _file_close(channel, handle)
    return TransferResult(source=remote, destination=str(local), size=done,
                          checksum=f"sha256:{digest.hexdigest()}")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


# ------------------------------------------------------------------ accounts
_SSH_COMMANDS = ("guest-ssh-add-authorized-keys", "guest-ssh-remove-authorized-keys",
                 "guest-ssh-get-authorized-keys")


def _native_ssh(channel: AgentChannel) -> bool:
    supported = set(info(channel).supported)
    return all(c in supported for c in _SSH_COMMANDS)


def _check_keys(keys: Sequence[str]) -> list[str]:
    clean = []
    for key in keys:
        key = key.strip()
        if not key or "\n" in key or len(key.split()) < 2:
            raise ValidationError(f"invalid SSH public key '{key[:40]}'",
                                  hint="give one authorized_keys line, e.g. 'ssh-ed25519 AAAA...'")
        clean.append(key)
    if not clean:
        raise ValidationError("no SSH key given")
    return clean


def _check_user(user: str) -> None:
    if not re.fullmatch(r"[A-Za-z0-9_.][A-Za-z0-9_.-]*\$?", user):
        raise ValidationError(f"invalid user name '{user}'")


def _passwd_entry(channel: AgentChannel, user: str) -> tuple[str, str, str]:
    """(uid, gid, home) of ``user`` from the guest's /etc/passwd."""
    for line in read_bytes(channel, "/etc/passwd").decode(errors="replace").splitlines():
        fields = line.split(":")
        if len(fields) >= 6 and fields[0] == user:
            return fields[2], fields[3], fields[5]
    raise GuestCommandError(f"user '{user}' does not exist in the guest of {channel.target}")


def _fix_ssh_modes(channel: AgentChannel, user: str) -> None:
    """~/.ssh 0700 and authorized_keys 0600, both owned by ``user``."""
    uid, gid, home = _passwd_entry(channel, user)
    ssh_dir = posixpath.join(home, ".ssh")
    keys = posixpath.join(ssh_dir, "authorized_keys")
    _run(channel, ["mkdir", "-p", ssh_dir], f"creating '{ssh_dir}'")
    _run(channel, ["chown", f"{uid}:{gid}", ssh_dir], f"chown of '{ssh_dir}'")
    _run(channel, ["chmod", "700", ssh_dir], f"chmod of '{ssh_dir}'")
    with contextlib.suppress(GuestCommandError):
        exec(channel, ["chown", f"{uid}:{gid}", keys], timeout=30)
        exec(channel, ["chmod", "600", keys], timeout=30)


def _read_keys_file(channel: AgentChannel, user: str) -> tuple[list[str], str, str]:
    uid, gid, home = _passwd_entry(channel, user)
    path = posixpath.join(home, ".ssh", "authorized_keys")
    try:
        text = read_bytes(channel, path).decode(errors="replace")
    except GuestCommandError as err:
        if "No such file" not in err.message:
            raise
        text = ""
    return [ln.strip() for ln in text.splitlines() if ln.strip()], path, f"{uid}:{gid}"


def _write_keys_file(channel: AgentChannel, user: str, keys: list[str], path: str,
                     owner: str) -> None:
    _fix_ssh_modes(channel, user)
    data = "".join(f"{k}\n" for k in keys).encode()
    write_bytes(channel, data, path, mode="600", owner=owner)


def ssh_key_list(channel: AgentChannel, user: str) -> list[str]:
    _check_user(user)
    if _native_ssh(channel):
        reply = channel.execute("guest-ssh-get-authorized-keys", {"username": user})
        return [str(k) for k in reply.get("keys", [])]
    return _read_keys_file(channel, user)[0]


def ssh_key_add(channel: AgentChannel, user: str, keys: Sequence[str]) -> list[str]:
    """Add keys (a key already present is not added again); returns the resulting list."""
    _check_user(user)
    wanted = _check_keys(keys)
    if _native_ssh(channel):
        channel.execute("guest-ssh-add-authorized-keys", {"username": user, "keys": wanted})
        with contextlib.suppress(AgentCommandDisabledError):
            _fix_ssh_modes(channel, user)
        return ssh_key_list(channel, user)
    current, path, owner = _read_keys_file(channel, user)
    merged = current + [k for k in dict.fromkeys(wanted) if k not in current]
    _write_keys_file(channel, user, merged, path, owner)
    return merged


def ssh_key_remove(channel: AgentChannel, user: str, keys: Sequence[str]) -> list[str]:
    """Remove keys (absent ones are ignored); other keys are kept. Returns the rest."""
    _check_user(user)
    unwanted = set(_check_keys(keys))
    if _native_ssh(channel):
        channel.execute("guest-ssh-remove-authorized-keys", {"username": user,
                                                             "keys": sorted(unwanted)})
        return ssh_key_list(channel, user)
    current, path, owner = _read_keys_file(channel, user)
    kept = [k for k in current if k not in unwanted]
    if kept != current:
        _write_keys_file(channel, user, kept, path, owner)
    return kept


def set_password(channel: AgentChannel, user: str, password: str, *,
                 crypted: bool = False) -> None:
    """Set ``user``'s password (``crypted``: already a crypt(3) hash)."""
    _check_user(user)
    if not password or "\n" in password:
        raise ValidationError("the password must be one non-empty line")
    try:
        channel.execute("guest-set-user-password", {
            "username": user, "password": base64.b64encode(password.encode()).decode(),
            "crypted": crypted})
    except AgentCommandDisabledError:
        raise
    except GuestCommandError as err:
        raise GuestCommandError(f"cannot set the password of '{user}' in the guest of "
                                f"{channel.target}: {error_detail(err)}") from err


# ------------------------------------------------------------------ file systems, power
def fsfreeze(channel: AgentChannel, mountpoints: Sequence[str] | None = None, *,
             timeout: float = 60.0) -> int:
    """Freeze the guest's file systems (or only ``mountpoints``); returns how many froze."""
    if mountpoints:
        return int(channel.execute("guest-fsfreeze-freeze-list",
                                   {"mountpoints": list(mountpoints)}, timeout=timeout))
    return int(channel.execute("guest-fsfreeze-freeze", timeout=timeout))


def fsthaw(channel: AgentChannel, *, timeout: float = 60.0) -> int:
    """Thaw every frozen file system; returns how many were thawed."""
    return int(channel.execute("guest-fsfreeze-thaw", timeout=timeout))


def fsstatus(channel: AgentChannel) -> FreezeStatus:
    status = str(channel.execute("guest-fsfreeze-status"))
    if status not in ("frozen", "thawed"):
        raise GuestCommandError(f"unexpected fsfreeze status '{status}' from {channel.target}")
    return "frozen" if status == "frozen" else "thawed"


def fstrim(channel: AgentChannel, minimum: int | None = None, *,
           timeout: float = 600.0) -> list[TrimResult]:
    args = {"minimum": minimum} if minimum else None
    reply = channel.execute("guest-fstrim", args, timeout=timeout)
    return [TrimResult.model_validate(p) for p in (reply or {}).get("paths", [])]


def shutdown(channel: AgentChannel, mode: Literal["powerdown", "halt", "reboot"] = "powerdown"
             ) -> None:
    """Ask the guest to power off (or halt/reboot); qemu-ga sends no reply on success."""
    ping(channel)  # a dead agent must fail loudly, not look like a shutdown
    # The guest going down before we finished reading is success too.
    with contextlib.suppress(AgentUnavailableError):
        channel.execute_no_reply("guest-shutdown", {"mode": mode})


def reboot(channel: AgentChannel) -> None:
    shutdown(channel, "reboot")
