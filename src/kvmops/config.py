"""Where kvmops keeps things on a host: ``/etc/kvmops/config.toml``, overridden by
environment variables.

=====================  ======================  =========================================
file key               environment             meaning (default as root)
=====================  ======================  =========================================
``uri``                ``KVMOPS_URI``          libvirt URI (``qemu:///system``)
``images_dir``         ``KVMOPS_IMAGES_DIR``   where new disks go (``/var/lib/kvmops/images``)
``image_dirs``         ``KVMOPS_IMAGE_DIRS``   more directories images may live in
``backup_dirs``        ``KVMOPS_BACKUP_DIRS``  directories backup repositories may live in
                                               (``/var/lib/kvmops/backups``)
``state_dir``          ``KVMOPS_STATE_DIR``    database, manifest key, job records
                                               (``/var/lib/kvmops/state``)
``cache_dir``          ``KVMOPS_CACHE_DIR``    build caches (``/var/cache/kvmops``)
``backup_work_dir``    ``KVMOPS_BACKUP_WORK_DIR`` where backups into store-backed (sealed,
                                               remote) repositories are written before
                                               sealing (``/var/lib/kvmops/backup-work``)
``backup_ram_work_dir``  ``KVMOPS_BACKUP_RAM_WORK_DIR``  a tmpfs directory QEMU writes a
                                               sealed repository's backup into when it fits
                                               in a quarter of the free memory (one write
                                               to disk instead of two); ``off`` never
                                               (``/dev/shm/kvmops-backup-work``)
``db``                 ``KVMOPS_DB``           database URL of ``kvmops serve`` (sqlite in
                                               the state directory)
``log_format``         ``KVMOPS_LOG_FORMAT``   ``text`` or ``json`` (one object a line) for
                                               ``kvmops serve``'s log (``text``)
``remote_repositories``  ``KVMOPS_REMOTE_REPOSITORIES``  URL prefixes (``sftp://``, ``s3://``)
                                               API callers may use as repositories
                                               (space-separated in the environment)
``ssh_identity``       ``KVMOPS_SSH_IDENTITY``  SSH private key of sftp:// repositories
                                               (default: ~/.ssh/id_*)
``ssh_known_hosts``    ``KVMOPS_SSH_KNOWN_HOSTS``  their host keys (~/.ssh/known_hosts)
``s3_credentials``     ``KVMOPS_S3_CREDENTIALS``  an AWS-style credentials file for s3://
                                               repositories (default: AWS_* variables)
``schedule_*``         ``KVMOPS_SCHEDULE_*``   backup schedules: ``per_host`` (2) and
                                               ``per_repository`` (1) concurrent backups,
                                               ``retry_minutes`` ([1, 5, 15]), ``webhook``
                                               (a URL POSTed a failed run as JSON)
=====================  ======================  =========================================

Lists in the environment are separated by ``:``. ``KVMOPS_CONFIG`` names another
configuration file. The image and backup directories are the *allowed directories*
of :mod:`kvmops.paths`; the state directory is never one of them.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from kvmops.errors import ConfigError

DEFAULT_CONFIG = Path("/etc/kvmops/config.toml")
_KEYS = {"uri", "images_dir", "image_dirs", "backup_dirs", "state_dir", "cache_dir", "db",
         "log_format", "backup_work_dir", "backup_ram_work_dir"}
_KEYS |= {"remote_repositories", "ssh_identity", "ssh_known_hosts", "s3_credentials"}
_KEYS |= {"schedule_per_host", "schedule_per_repository", "schedule_retry_minutes",
          "schedule_webhook"}
_ENV: tuple[str, ...] = ("KVMOPS_CONFIG", "KVMOPS_URI", "LIBVIRT_DEFAULT_URI", "KVMOPS_IMAGES_DIR",
        "KVMOPS_IMAGE_DIRS", "KVMOPS_BACKUP_DIRS", "KVMOPS_STATE_DIR", "KVMOPS_CACHE_DIR",
        "KVMOPS_DB", "KVMOPS_LOG_FORMAT", "KVMOPS_BACKUP_WORK_DIR")
_ENV += ("KVMOPS_REMOTE_REPOSITORIES", "KVMOPS_SSH_IDENTITY", "KVMOPS_SSH_KNOWN_HOSTS",
         "KVMOPS_S3_CREDENTIALS")
_ENV += ("KVMOPS_BACKUP_RAM_WORK_DIR",)
_ENV += ("KVMOPS_SCHEDULE_PER_HOST", "KVMOPS_SCHEDULE_PER_REPOSITORY",
         "KVMOPS_SCHEDULE_RETRY_MINUTES", "KVMOPS_SCHEDULE_WEBHOOK")
LOG_FORMATS = ("text", "json")


@dataclass(frozen=True)
class Settings:
    uri: str
    images_dir: Path
    image_dirs: tuple[Path, ...]  # the allowed image directories, images_dir first
    backup_dirs: tuple[Path, ...]
    state_dir: Path
    cache_dir: Path
    db: str | None = None
    config_file: Path | None = None  # the file read, if any
    log_format: str = "text"
    backup_work_dir: Path = Path("/var/lib/kvmops/backup-work")
    backup_ram_work_dir: Path | None = Path("/dev/shm/kvmops-backup-work")
    # Remote repositories (kvmops.backup.remote): the API's allow-list, SSH and S3 access.
    remote_repositories: tuple[str, ...] = ()
    ssh_identity: Path | None = None
    ssh_known_hosts: Path | None = None
    s3_credentials: Path | None = None
    # Backup schedules (kvmops.services.schedules): limits, retry backoff, failure webhook.
    schedule_per_host: int = 2
    schedule_per_repository: int = 1
    schedule_retry_minutes: tuple[float, ...] = (1.0, 5.0, 15.0)
    schedule_webhook: str | None = None

    @property
    def backup_dir(self) -> Path:
        """The default repository location."""
        return self.backup_dirs[0]

    @classmethod
    def from_env(cls) -> Settings:
        return _load(tuple(os.environ.get(name) for name in _ENV), _config_stamp())


def _config_path() -> Path:
    return Path(os.environ.get("KVMOPS_CONFIG") or DEFAULT_CONFIG)


def _config_stamp() -> tuple[str, float]:
    path = _config_path()
    try:
        return str(path), path.stat().st_mtime
    except OSError:
        return str(path), -1.0


def _read_file(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        if "KVMOPS_CONFIG" in os.environ:
            raise ConfigError(f"configuration file {path} (KVMOPS_CONFIG) does not exist",
                              hint="create it or unset KVMOPS_CONFIG") from None
        return {}
    except PermissionError as err:
        raise ConfigError(f"cannot read configuration file {path}: permission denied") from err
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"configuration file {path} is not valid TOML: {err}",
                          hint="fix the file; see docs/security.md for the keys") from err
    unknown = sorted(set(data) - _KEYS)
    if unknown:
        raise ConfigError(f"configuration file {path}: unknown key(s) {', '.join(unknown)}",
                          hint=f"known keys: {', '.join(sorted(_KEYS))}")
    return data


def _path_value(value: object, key: str, source: str) -> Path:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{source}: {key} must be a non-empty path")
    path = Path(value)
    if not path.is_absolute():
        raise ConfigError(f"{source}: {key} '{value}' must be an absolute path")
    return path


def _path_list(value: object, key: str, source: str) -> list[Path]:
    if isinstance(value, str):
        items: list[object] = [v for v in value.split(os.pathsep) if v]
    elif isinstance(value, list):
        items = list(value)
    else:
        raise ConfigError(f"{source}: {key} must be a list of absolute paths")
    return [_path_value(item, key, source) for item in items]


@lru_cache(maxsize=8)
def _load(env: tuple[str | None, ...], stamp: tuple[str, float]) -> Settings:
    values = dict(zip(_ENV, env, strict=True))
    path = Path(stamp[0])
    data = _read_file(path) if stamp[1] >= 0 or values["KVMOPS_CONFIG"] else {}
    source = str(path)
    root = os.geteuid() == 0
    home = Path.home()

    def pick(key: str, env_name: str, default: str) -> Path:
        if values[env_name]:
            return _path_value(values[env_name], env_name, "environment")
        if key in data:
            return _path_value(data[key], key, source)
        return Path(default)

    def pick_list(key: str, env_name: str) -> list[Path]:
        if values[env_name]:
            return _path_list(values[env_name], env_name, "environment")
        return _path_list(data[key], key, source) if key in data else []

    base = "/var/lib/kvmops" if root else str(home / ".local/share/kvmops")
    images_dir = pick("images_dir", "KVMOPS_IMAGES_DIR", f"{base}/images")
    backups = pick_list("backup_dirs", "KVMOPS_BACKUP_DIRS") or [Path(f"{base}/backups")]
    uri = values["KVMOPS_URI"] or data.get("uri") or values["LIBVIRT_DEFAULT_URI"] \
        or "qemu:///system"
    db = values["KVMOPS_DB"] or data.get("db")
    log_format = values["KVMOPS_LOG_FORMAT"] or data.get("log_format") or "text"
    if log_format not in LOG_FORMATS:
        where = "environment: KVMOPS_LOG_FORMAT" if values["KVMOPS_LOG_FORMAT"] \
            else f"{source}: log_format"
        raise ConfigError(f"{where} '{log_format}' is not a log format",
                          hint=f"use one of {', '.join(LOG_FORMATS)}")
    return Settings(
        uri=str(uri),
        images_dir=images_dir,
        image_dirs=tuple(dict.fromkeys([images_dir, *pick_list("image_dirs",
                                                                "KVMOPS_IMAGE_DIRS")])),
        backup_dirs=tuple(dict.fromkeys(backups)),
        state_dir=pick("state_dir", "KVMOPS_STATE_DIR", f"{base}/state"),
        cache_dir=pick("cache_dir", "KVMOPS_CACHE_DIR",
                       "/var/cache/kvmops" if root else str(home / ".cache/kvmops")),
        db=str(db) if db else None,
        config_file=path if data else None,
        log_format=str(log_format),
        backup_work_dir=pick("backup_work_dir", "KVMOPS_BACKUP_WORK_DIR", f"{base}/backup-work"),
        backup_ram_work_dir=_ram_work_dir(values, data, source),
        **_remote_settings(values, data, source),
        **_schedule_settings(values, data, source),
    )


def _ram_work_dir(values: dict[str, str | None], data: dict[str, Any], source: str
                  ) -> Path | None:
    """``backup_ram_work_dir``: a path, or ``off``/empty for none."""
    env = values["KVMOPS_BACKUP_RAM_WORK_DIR"]
    raw: object = env if env is not None else data.get("backup_ram_work_dir",
                                                       "/dev/shm/kvmops-backup-work")
    if raw in ("", "off", False):
        return None
    return _path_value(raw, "KVMOPS_BACKUP_RAM_WORK_DIR" if env is not None
                       else "backup_ram_work_dir", "environment" if env is not None else source)


def _remote_settings(values: dict[str, str | None], data: dict[str, Any], source: str
                     ) -> dict[str, Any]:
    """The remote-repository keys (see kvmops.backup.remote)."""
    found: dict[str, Any] = {}
    env = values["KVMOPS_REMOTE_REPOSITORIES"]
    listed = env.split() if env else data.get("remote_repositories", [])
    if not isinstance(listed, list) or not all(isinstance(u, str) for u in listed):
        raise ConfigError(f"{source}: remote_repositories must be a list of URLs")
    found["remote_repositories"] = tuple(listed)
    for key in ("ssh_identity", "ssh_known_hosts", "s3_credentials"):
        env_name = "KVMOPS_" + key.upper()
        if values[env_name]:
            found[key] = _path_value(values[env_name], env_name, "environment")
        elif key in data:
            found[key] = _path_value(data[key], key, source)
    return found


def _schedule_settings(values: dict[str, str | None], data: dict[str, Any], source: str
                       ) -> dict[str, Any]:
    """The backup-schedule keys (see kvmops.services.schedules)."""
    found: dict[str, Any] = {}
    for key in ("schedule_per_host", "schedule_per_repository"):
        env_name = "KVMOPS_" + key.upper()
        raw: object = values[env_name] if values[env_name] else data.get(key)
        if raw is None:
            continue
        try:
            number = int(str(raw))
        except ValueError:
            number = 0
        if number < 1 or isinstance(raw, bool | float):
            raise ConfigError(f"{env_name if values[env_name] else source + ': ' + key} "
                              f"must be a whole number >= 1")
        found[key] = number
    env = values["KVMOPS_SCHEDULE_RETRY_MINUTES"]
    retry: object = env.replace(",", " ").split() if env is not None \
        else data.get("schedule_retry_minutes")
    if retry is not None:
        try:
            minutes = tuple(float(m) for m in retry)  # type: ignore[attr-defined]
        except (TypeError, ValueError):
            minutes = (-1.0,)
        if any(m < 0 for m in minutes):
            raise ConfigError(f"{source}: schedule_retry_minutes must be a list of minutes "
                              ">= 0 (KVMOPS_SCHEDULE_RETRY_MINUTES: space-separated)")
        found["schedule_retry_minutes"] = minutes
    webhook = values["KVMOPS_SCHEDULE_WEBHOOK"] or data.get("schedule_webhook")
    if webhook:
        if not isinstance(webhook, str) or not webhook.startswith(("http://", "https://")):
            raise ConfigError(f"{source}: schedule_webhook must be an http(s):// URL")
        found["schedule_webhook"] = webhook
    return found


def settings() -> Settings:
    """Current settings (the environment is read on each call; the file when it changed)."""
    return Settings.from_env()


# key -> the environment variables that set it, strongest first (after the file's key
# only LIBVIRT_DEFAULT_URI, for ``uri``).
_ENV_OF = {"uri": ("KVMOPS_URI",), "images_dir": ("KVMOPS_IMAGES_DIR",),
           "image_dirs": ("KVMOPS_IMAGE_DIRS",), "backup_dirs": ("KVMOPS_BACKUP_DIRS",),
           "state_dir": ("KVMOPS_STATE_DIR",), "cache_dir": ("KVMOPS_CACHE_DIR",),
           "db": ("KVMOPS_DB",), "log_format": ("KVMOPS_LOG_FORMAT",),
           "backup_work_dir": ("KVMOPS_BACKUP_WORK_DIR",),
           "backup_ram_work_dir": ("KVMOPS_BACKUP_RAM_WORK_DIR",),
           "remote_repositories": ("KVMOPS_REMOTE_REPOSITORIES",),
           "ssh_identity": ("KVMOPS_SSH_IDENTITY",),
           "ssh_known_hosts": ("KVMOPS_SSH_KNOWN_HOSTS",),
           "s3_credentials": ("KVMOPS_S3_CREDENTIALS",),
           "schedule_per_host": ("KVMOPS_SCHEDULE_PER_HOST",),
           "schedule_per_repository": ("KVMOPS_SCHEDULE_PER_REPOSITORY",),
           "schedule_retry_minutes": ("KVMOPS_SCHEDULE_RETRY_MINUTES",),
           "schedule_webhook": ("KVMOPS_SCHEDULE_WEBHOOK",)}


def explain() -> tuple[Settings, Path, list[tuple[str, object, str]]]:
    """The effective settings, the configuration file looked at, and each key's value
    with where it came from: ``environment (NAME)``, the file, or ``default``."""
    current = settings()
    path = _config_path()
    data = _read_file(path) if path.exists() or "KVMOPS_CONFIG" in os.environ else {}
    rows: list[tuple[str, object, str]] = []
    for key, names in _ENV_OF.items():
        value = getattr(current, key)
        if isinstance(value, tuple):
            value = [str(v) for v in value]
        elif isinstance(value, Path):
            value = str(value)
        env = next((name for name in names if os.environ.get(name)), None)
        if env:
            source = f"environment ({env})"
        elif key in data:
            source = str(path)
        elif key == "uri" and os.environ.get("LIBVIRT_DEFAULT_URI"):
            source = "environment (LIBVIRT_DEFAULT_URI)"
        else:
            source = "default"
        rows.append((key, value, source))
    return current, path, rows
