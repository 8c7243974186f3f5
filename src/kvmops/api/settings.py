"""Settings of one API server."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import timedelta


def job_lease_from_env() -> float:
    """``KVMOPS_JOB_LEASE`` (seconds, default 30): how long the other servers wait for a
    server's lease renewal before they mark its running jobs abandoned."""
    from kvmops.errors import ValidationError

    text = os.environ.get("KVMOPS_JOB_LEASE", "30")
    try:
        lease = float(text)
    except ValueError:
        lease = 0.0
    if not 1.0 <= lease <= 86400.0:
        raise ValidationError(f"KVMOPS_JOB_LEASE={text}: not a lease in seconds",
                              hint="give 1 to 86400 seconds (default 30)")
    return lease


def sample_interval_from_env() -> float:
    """``KVMOPS_SAMPLE_INTERVAL`` (seconds between two chart points, 0: no sampler)."""
    from kvmops.services.sampler import interval_from_env

    return interval_from_env()


@dataclass
class ApiSettings:
    db_url: str | None = None  # None: sqlite under the state dir
    uri: str | None = None  # libvirt URI, None: KVMOPS_URI / qemu:///system
    workers: int = 4  # job threads
    # PostgreSQL (several servers): seconds without a lease renewal after which the
    # other servers mark a server's running jobs abandoned (interrupted)
    job_lease: float = field(default_factory=lambda: job_lease_from_env())
    session_ttl: timedelta = timedelta(hours=12)
    secure_cookies: bool | None = None  # None: Secure when the request came over https
    events: bool = True  # libvirt life cycle events into the SSE stream
    create_admin: bool = True  # first start on an empty DB creates 'admin'
    login_max_failures: int = 5  # failed log-ins per user and address within the window
    login_window: float = 300.0  # seconds
    max_transfer: int = 16 * 1024 * 1024  # guest push/pull limit (bytes, before base64)
    max_body: int = 1024 * 1024  # request bodies (bytes), guest pushes excepted
    long_per_user: int = 4  # concurrent long requests (guest agent, QMP) per user
    long_total: int = 16  # ... and for everybody together
    # seconds between two points of the live charts' sampler (0: off);
    # KVMOPS_SAMPLE_INTERVAL, default 10
    sample_interval: float = field(default_factory=lambda: sample_interval_from_env())
    # Proxies whose X-Forwarded-For/-Proto are believed (none by default).
    forwarded_allow_ips: list[str] = field(default_factory=list)
