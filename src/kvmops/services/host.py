"""Host use cases: the facts about this host, and the doctor's checks."""

from __future__ import annotations

from kvmops.host.connection import Host
from kvmops.host.info import HostInfo, host_info
from kvmops.services.caller import Caller
from kvmops.services.doctor import DoctorReport, Status, run_doctor

__all__ = ["DoctorReport", "HostInfo", "Status"]  # the faces' models


def info(caller: Caller, host: Host, *, reprobe: bool = False) -> HostInfo:
    """Host name, versions, the accelerator kvmops uses, where images go."""
    return host_info(host, refresh_probe=reprobe)


def doctor(caller: Caller, *, uri: str | None = None, host: Host | None = None,
           host_name: str | None = None) -> DoctorReport:
    """Can this host run, back up and snapshot VMs? (``host``: an open connection.)
    With neither ``uri`` nor ``host`` it is this machine's (``local``); the report is
    kept as ``host_name``'s last when that is known."""
    if host_name is None and uri is None and host is None:
        host_name = "local"
    return run_doctor(uri, host=host, host_name=host_name)
