"""Remote repository URLs: parsing and the one check every caller's URL goes through.

Two schemes, each an :class:`kvmops.backup.store.ObjectStore` (registered into
``backup/store.py``):

* ``sftp://USER@HOST[:PORT]/PATH[?identity=FILE&known_hosts=FILE]`` -- a directory on
  an SSH server (:mod:`kvmops.backup.remote.sftp`, paramiko); the host key must be in a
  known_hosts file (never trusted on first use).
* ``s3://BUCKET[/PREFIX][?endpoint=URL&region=NAME&profile=NAME]`` -- keys under a
  prefix of an S3 bucket (:mod:`kvmops.backup.remote.s3`, boto3), any S3-compatible
  server with ``endpoint``.

Credentials never appear in a URL (a password or key in one is refused): SSH keys and
known_hosts come from the settings (``ssh_identity``, ``ssh_known_hosts``) or the
query, S3 keys from ``AWS_*`` in the environment or the ``s3_credentials`` file of the
settings. So URLs can be logged, audited and stored in schedules.

An untrusted caller (the API) may name only URLs inside an entry of the settings'
``remote_repositories`` allow-list (:func:`check_remote_url`): same scheme, user, host
and port, the path at or below the entry's, and exactly the entry's query -- so a
caller can neither reach another server (the endpoint is part of the entry) nor make
kvmops read a local file of its choosing as a key.
"""

from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl, quote, unquote, urlsplit

from kvmops.errors import PathRefusedError, ValidationError

if TYPE_CHECKING:
    from kvmops.backup.store import ObjectStore

SCHEMES = ("sftp", "s3")
_PARAMS = {"sftp": ("identity", "known_hosts"), "s3": ("endpoint", "region", "profile")}
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]$")
ALLOW_HINT = ("ask an admin to add the repository's URL (or a prefix of it) to "
              "remote_repositories in /etc/kvmops/config.toml")


def is_remote_url(text: object) -> bool:
    """Does ``text`` name a remote repository (``sftp://`` or ``s3://``)?"""
    return isinstance(text, str) and any(text.startswith(f"{s}://") for s in SCHEMES)


@dataclass(frozen=True)
class RemoteUrl:
    """A parsed remote repository URL (never holding a secret)."""

    scheme: str
    host: str  # the SSH host, or the S3 bucket
    path: str  # sftp: the absolute directory; s3: the key prefix ('' or 'a/b', no slashes)
    user: str | None = None
    port: int | None = None
    params: dict[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        netloc = (f"{quote(self.user, safe='')}@" if self.user else "") + self.host
        if self.port is not None:
            netloc += f":{self.port}"
        path = self.path if self.scheme == "sftp" else (f"/{self.path}" if self.path else "")
        query = "&".join(f"{k}={quote(v, safe='/:')}" for k, v in sorted(self.params.items()))
        return f"{self.scheme}://{netloc}{path}" + (f"?{query}" if query else "")

    def child(self, name: str) -> RemoteUrl:
        """The URL of a sub-directory (a repository inside an allowed prefix)."""
        path = posixpath.join(self.path, name) if self.path else name
        return RemoteUrl(self.scheme, self.host, path, self.user, self.port, dict(self.params))


def _clean_path(raw: str, text: str) -> list[str]:
    parts = [p for p in unquote(raw).split("/") if p not in ("", ".")]
    if any(p == ".." for p in parts):
        raise ValidationError(f"remote repository URL {text} contains '..'",
                              hint="name the directory itself")
    if any("\x00" in p or "\n" in p for p in parts):
        raise ValidationError(f"remote repository URL {text} contains a control character")
    return parts


def parse_remote_url(text: str) -> RemoteUrl:
    """Parse and validate a remote repository URL (ValidationError names what is wrong)."""
    if not is_remote_url(text):
        raise ValidationError(f"'{text}' is not a remote repository URL",
                              hint="use sftp://USER@HOST[:PORT]/PATH or s3://BUCKET/PREFIX")
    shown = text.split("?", 1)[0]
    try:
        split = urlsplit(text)
        port = split.port
    except ValueError as err:
        raise ValidationError(f"invalid remote repository URL {shown}: {err}") from None
    if split.password is not None:
        raise ValidationError(f"remote repository URL {split.scheme}://{split.hostname}... "
                              "carries a password",
                              hint="credentials never go into a URL: use an SSH key "
                                   "(ssh_identity) or the S3 credentials of the settings")
    if split.fragment:
        raise ValidationError(f"remote repository URL {shown} has a fragment (#...)")
    params: dict[str, str] = {}
    for key, value in parse_qsl(split.query, keep_blank_values=True, strict_parsing=False):
        if key not in _PARAMS[split.scheme]:
            raise ValidationError(
                f"remote repository URL {shown}: unknown parameter '{key}'",
                hint=f"{split.scheme} URLs take {', '.join(_PARAMS[split.scheme])}; "
                     "credentials come from the settings, never the URL")
        if key in params:
            raise ValidationError(f"remote repository URL {shown}: '{key}' given twice")
        params[key] = value
    host = split.hostname or ""
    if split.scheme == "sftp":
        if not host:
            raise ValidationError(f"remote repository URL {shown} names no host",
                                  hint="sftp://USER@HOST[:PORT]/PATH")
        parts = _clean_path(split.path, shown)
        if not parts:
            raise ValidationError(f"remote repository URL {shown} names no directory",
                                  hint="sftp://USER@HOST/srv/backups (an absolute path)")
        for key in ("identity", "known_hosts"):
            if key in params and not params[key].startswith("/"):
                raise ValidationError(f"remote repository URL {shown}: {key} must be an "
                                      "absolute path on this host")
        return RemoteUrl("sftp", host, "/" + "/".join(parts),
                         unquote(split.username) if split.username else None, port, params)
    if split.username or port is not None:
        raise ValidationError(f"remote repository URL {shown}: an s3 URL names a bucket, "
                              "not a user or port",
                              hint="s3://BUCKET/PREFIX?endpoint=http://HOST:PORT")
    if not _BUCKET.match(host):
        raise ValidationError(f"remote repository URL {shown}: '{host}' is not a valid "
                              "bucket name (3-63 of a-z, 0-9, '.', '-')")
    endpoint = params.get("endpoint")
    if endpoint is not None:
        ep = urlsplit(endpoint)
        if ep.scheme not in ("http", "https") or not ep.hostname or ep.path not in ("", "/") \
                or ep.query or ep.username:
            raise ValidationError(f"remote repository URL {shown}: endpoint '{endpoint}' "
                                  "is not http(s)://HOST[:PORT]")
    return RemoteUrl("s3", host, "/".join(_clean_path(split.path, shown)), None, None,
                     params)


def _within(url: RemoteUrl, entry: RemoteUrl) -> bool:
    if (url.scheme, url.host, url.user, url.port, url.params) != \
            (entry.scheme, entry.host, entry.user, entry.port, entry.params):
        return False
    if url.scheme == "sftp":
        return url.path == entry.path or url.path.startswith(entry.path.rstrip("/") + "/")
    return not entry.path or url.path == entry.path or url.path.startswith(entry.path + "/")


def allowed_remotes() -> list[RemoteUrl]:
    """The settings' ``remote_repositories`` allow-list, parsed (bad entries refused)."""
    from kvmops.config import settings

    entries: tuple[str, ...] = getattr(settings(), "remote_repositories", ())
    return [parse_remote_url(entry) for entry in entries]


def check_remote_url(text: str, *, trusted: bool) -> str:
    """The one check for a remote repository URL a caller names: parsed, normalised,
    and -- for an untrusted caller -- inside an entry of ``remote_repositories``
    (PathRefusedError otherwise: the API's audit records it as denied). Returns the
    normalised URL, which is what the stores open."""
    url = parse_remote_url(text)
    if trusted:
        return str(url)
    if any(_within(url, entry) for entry in allowed_remotes()):
        return str(url)
    raise PathRefusedError(f"remote repository {url} is not in the allowed remote "
                           "repositories", hint=ALLOW_HINT)


def _open_sftp(url: str) -> ObjectStore:
    from kvmops.backup.remote.sftp import SftpStore

    return SftpStore(url)


def _open_s3(url: str) -> ObjectStore:
    from kvmops.backup.remote.s3 import S3Store

    return S3Store(url)


def _register() -> None:
    """Register the schemes with :mod:`kvmops.backup.store` (it imports this package on
    the first remote URL); paramiko and boto3 load only when a store is opened."""
    from kvmops.backup.store import register_scheme

    register_scheme("sftp", _open_sftp)
    register_scheme("s3", _open_s3)


_register()
