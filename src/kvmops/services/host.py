"""Host use cases: the facts about this host, and the doctor's checks."""

from __future__ import annotations

from typing import TYPE_CHECKING

from kvmops.host.connection import Host
from kvmops.host.info import HostInfo, host_info
from kvmops.services.caller import Caller
from kvmops.services.doctor import DoctorReport, Status, last_report, run_doctor

if TYPE_CHECKING:
    from kvmops.store.db import Store

__all__ = ["DoctorReport", "HostInfo", "Status"]  # the faces' models


def info(caller: Caller, host: Host, *, reprobe: bool = False) -> HostInfo:
    """Host name, versions, the accelerator kvmops uses, where images go."""
    return host_info(host, refresh_probe=reprobe)


def doctor(caller: Caller, *, uri: str | None = None, host: Host | None = None,
           host_name: str | None = None, probes: bool = True) -> DoctorReport:
    """Can this host run, back up and snapshot VMs? (``host``: an open connection.)
    With neither ``uri`` nor ``host`` it is this machine's (``local``); the report is
    kept as ``host_name``'s last when that is known. ``probes``: start the probe guests
    (10-40 s; without, their last results are shown)."""
    if host_name is None and uri is None and host is None:
        host_name = "local"
    return run_doctor(uri, host=host, host_name=host_name, probes=probes)


def doctor_of(caller: Caller, name: str, db: str | Store | None = None, *,
              probes: bool = True) -> DoctorReport:
    """The doctor of host ``name`` of ``kvmops host list`` (``local``: this machine, all
    checks; another: its libvirt-side checks), kept as its last report."""
    from kvmops.services.hosts import LOCAL, uri_of

    uri = None if name == LOCAL else uri_of(caller, name, db)
    return run_doctor(uri, host_name=name, probes=probes)


def last_doctor(caller: Caller, name: str, db: str | Store | None = None) -> DoctorReport:
    """The last doctor report of host ``name`` (NotFoundError when it never ran there)."""
    from kvmops.errors import NotFoundError
    from kvmops.services.hosts import LOCAL, uri_of

    if name != LOCAL:
        uri_of(caller, name, db)  # an unknown host is NotFoundError naming 'host list'
    report = last_report(name)
    if report is None:
        raise NotFoundError(f"no doctor report for host '{name}' yet",
                            hint=f"run 'kvmops host doctor --host {name}' (or POST "
                                 f"/api/v1/hosts/{name}/doctor)")
    return report
