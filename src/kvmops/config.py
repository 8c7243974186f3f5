"""Where kvmops keeps things on a host, overridable by environment variables.

``KVMOPS_URI``         libvirt URI (default ``qemu:///system``)
``KVMOPS_IMAGES_DIR``  default directory for new disk images
``KVMOPS_STATE_DIR``   kvmops' own state (accelerator probe cache, locks)
``KVMOPS_CACHE_DIR``   build caches (tiny guest, downloaded packages)
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


def _env_path(name: str, default: str) -> Path:
    return Path(os.environ.get(name) or default)


@dataclass(frozen=True)
class Settings:
    uri: str
    images_dir: Path
    state_dir: Path
    cache_dir: Path

    @classmethod
    def from_env(cls) -> Settings:
        root = os.geteuid() == 0
        home = Path.home()
        return cls(
            uri=os.environ.get("KVMOPS_URI") or os.environ.get("LIBVIRT_DEFAULT_URI")
            or "qemu:///system",
            images_dir=_env_path(
                "KVMOPS_IMAGES_DIR",
                "/var/lib/kvmops/images" if root else str(home / ".local/share/kvmops/images"),
            ),
            state_dir=_env_path(
                "KVMOPS_STATE_DIR",
                "/var/lib/kvmops" if root else str(home / ".local/share/kvmops"),
            ),
            cache_dir=_env_path(
                "KVMOPS_CACHE_DIR",
                "/var/cache/kvmops" if root else str(home / ".cache/kvmops"),
            ),
        )


def settings() -> Settings:
    """Current settings (read from the environment on each call, cheap)."""
    return Settings.from_env()
