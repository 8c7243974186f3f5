"""Settings of one API server."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

from kvmops.config import settings


def default_allowed_dirs() -> list[Path]:
    cfg = settings()
    dirs = [cfg.images_dir, Path("/var/lib/kvmops")]
    return list(dict.fromkeys(d.absolute() for d in dirs))


@dataclass
class ApiSettings:
    db_url: str | None = None  # None: sqlite under the state dir
    uri: str | None = None  # libvirt URI, None: KVMOPS_URI / qemu:///system
    allowed_dirs: list[Path] = field(default_factory=default_allowed_dirs)
    workers: int = 4  # job threads
    session_ttl: timedelta = timedelta(hours=12)
    secure_cookies: bool | None = None  # None: Secure when the request came over https
    events: bool = True  # libvirt life cycle events into the SSE stream
    create_admin: bool = True  # first start on an empty DB creates 'admin'
    login_max_failures: int = 5  # failed log-ins per user and address within the window
    login_window: float = 300.0  # seconds
    max_transfer: int = 16 * 1024 * 1024  # guest push/pull limit (bytes, before base64)
