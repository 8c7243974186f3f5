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
_KEYS = {"uri", "images_dir", "image_dirs", "backup_dirs", "state_dir", "cache_dir", "db"}
_ENV = ("KVMOPS_CONFIG", "KVMOPS_URI", "LIBVIRT_DEFAULT_URI", "KVMOPS_IMAGES_DIR",
        "KVMOPS_IMAGE_DIRS", "KVMOPS_BACKUP_DIRS", "KVMOPS_STATE_DIR", "KVMOPS_CACHE_DIR",
        "KVMOPS_DB")


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
    )


def settings() -> Settings:
    """Current settings (the environment is read on each call; the file when it changed)."""
    return Settings.from_env()
