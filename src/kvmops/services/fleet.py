"""The VMs of every host at once, and the connection a request names with ``host``.

The API and the web UI list the VMs of all hosts in one view: every host is asked at
once (a thread each, :func:`kvmops.services.hosts.gather`) under a deadline, a remote
host with one bulk statistics call (:func:`kvmops.host.inventory.bulk_vms`: a few round
trips whatever its number of VMs), the local host as ``vm list`` (per-VM info, cached by
the server). A host that does not answer in time is listed as unreachable with the
reason; it never delays the others or the page beyond the deadline. A remote host that
failed lately (:mod:`kvmops.services.reachability`) is not waited for at all: it is
listed unreachable at once ("not answering since ...") while one background probe asks
it again; a host never asked before gets the deadline once.

The faces never import ``kvmops.host``: they ask :func:`connection` for the shared
connection of a named host (``local`` or None: the server's own one).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from kvmops.errors import HostUnavailableError
from kvmops.records import Record
from kvmops.services import hosts, reachability
from kvmops.services.caller import Caller
from kvmops.services.session import CONNECTIONS, Connection
from kvmops.services.vms import DomainTypeCache, VmListItem, list_vms

if TYPE_CHECKING:
    from kvmops.store.db import Store

LOCAL = hosts.LOCAL
#: How long a list waits for a host (the page or API answer waits at most this long).
LIST_DEADLINE_S = 3.0
#: How long a request naming one host waits for its connection.
CONNECT_DEADLINE_S = 10.0
#: Accelerators (a domain's type: not among the statistics) of remote hosts' VMs.
_REMOTE_TYPES = DomainTypeCache()


@dataclass
class Unreachable(Record):
    """A host that did not answer the list in time."""

    host: str
    uri: str
    error: str


@dataclass
class AllVms(Record):
    """The VMs of every host (each with its ``host``), the hosts asked, and the ones
    that did not answer."""

    vms: list[VmListItem]
    hosts: list[str] = field(default_factory=list)
    unreachable: list[Unreachable] = field(default_factory=list)


def host_names(db: str | Store | None = None) -> list[str]:
    """Every host's name, ``local`` first (nothing is asked)."""
    return [name for name, _uri, _local in hosts.known_hosts(db)]


def is_local(name: str | None) -> bool:
    return name is None or name == LOCAL


def connection(caller: Caller, name: str | None, db: str | Store | None = None, *,
               local: Callable[[], Connection] | None = None,
               deadline: float = CONNECT_DEADLINE_S) -> Connection:
    """The shared connection to host ``name`` (NotFoundError when there is no such
    host, HostUnavailableError when it does not answer within ``deadline``); the local
    host's is ``local()`` (the server's own), else one of the process's shared ones."""
    if is_local(name) and local is not None:
        return local()
    hosts.validate_name(name or LOCAL)
    uri = hosts.uri_of(caller, name, db)
    return CONNECTIONS.get(uri, deadline, name or LOCAL)


def uri_of(caller: Caller, name: str | None, db: str | Store | None = None) -> str:
    """Host ``name``'s libvirt URI (None or ``local``: the configured one)."""
    if name is not None:
        hosts.validate_name(name)
    return hosts.uri_of(caller, name, db)


def _remote_vms(name: str, uri: str, deadline: float) -> list[VmListItem]:
    from kvmops.host.inventory import bulk_vms  # services may call host/

    conn = CONNECTIONS.get(uri, deadline, name)
    items = []
    for vm in bulk_vms(conn):
        try:
            accel = _REMOTE_TYPES.get(vm.uuid, vm.domain)
        except Exception:  # undefined meanwhile: listed without its accelerator
            accel = "unknown"
        items.append(VmListItem(
            name=vm.name, uuid=vm.uuid, state=vm.state, vcpus=vm.vcpus,
            memory=vm.max_memory, memory_current=vm.memory, cpu_time_ns=vm.cpu_time_ns,
            accelerator=accel, autostart=vm.autostart, persistent=vm.persistent,
            host=name))
    return sorted(items, key=lambda item: item.name)


def _local_vms(caller: Caller, uri: str) -> list[VmListItem]:
    from kvmops.services.session import connect

    with connect(uri) as conn:
        return list_vms(caller, conn)


def host_vms(caller: Caller, name: str | None, db: str | Store | None = None, *,
             local: Callable[[], list[VmListItem]] | None = None,
             deadline: float = LIST_DEADLINE_S) -> list[VmListItem]:
    """The VMs of one host, each with its ``host`` (HostUnavailableError when it does
    not answer in time; NotFoundError for an unknown host)."""
    result = list_all_vms(caller, deadline, db, only=[name or LOCAL], local=local)
    if result.unreachable:
        gone = result.unreachable[0]
        raise HostUnavailableError(f"host '{gone.host}' ({gone.uri}) cannot be reached: "
                                   f"{gone.error}",
                                   hint=f"see 'kvmops host info {gone.host}'; is its "
                                        "libvirtd up and reachable?")
    return result.vms


def list_all_vms(caller: Caller, deadline: float = LIST_DEADLINE_S,
                 db: str | Store | None = None, *, only: list[str] | None = None,
                 local: Callable[[], list[VmListItem]] | None = None) -> AllVms:
    """The VMs of every host (or of the hosts ``only`` names), all asked at once: VMs by
    host (``local`` first, then as added) and name; hosts that did not answer within
    ``deadline`` seconds in ``unreachable``. ``local`` gives the local host's list (the
    server's cached one); without it the local host is listed as ``vm list`` does."""
    known = hosts.known_hosts(db)
    if only is not None:
        wanted = [hosts.validate_name(n) for n in only]
        by_name = {name: (name, uri, is_here) for name, uri, is_here in known}
        for name in wanted:
            if name not in by_name:
                hosts.uri_of(caller, name, db)  # NotFoundError naming it
        known = [by_name[name] for name in wanted]

    memory = reachability.REACHABILITY

    def task(name: str, uri: str, is_here: bool) -> Callable[[], list[VmListItem]]:
        if is_here:
            def here() -> list[VmListItem]:
                found = local() if local is not None else _local_vms(caller, uri)
                return [dataclasses.replace(vm, host=name) for vm in found]
            return here
        return lambda: memory.ask(uri, lambda: _remote_vms(name, uri, deadline))

    # a remote host that failed lately is answered for at once, and asked again aside
    down = {name: gone for name, uri, is_here in known
            if not is_here and (gone := memory.down(uri)) is not None}
    for name, uri, _here in known:
        if name in down:
            memory.recheck(uri, functools.partial(
                _remote_vms, name, uri, reachability.PROBE_DEADLINE_S))
    outcomes = hosts.gather({name: task(name, uri, is_here) for name, uri, is_here in known
                             if name not in down}, deadline)
    result = AllVms(vms=[], hosts=[name for name, _uri, _here in known])
    for name, uri, is_here in known:
        if name in down:
            result.unreachable.append(Unreachable(host=name, uri=uri,
                                                  error=down[name].message()))
            continue
        outcome = outcomes[name]
        if outcome.value is None:
            error = (outcome.error or "no answer").removeprefix(
                f"host '{name}' ({uri}) cannot be reached: ")
            if not is_here:
                memory.timed_out(uri, error)
            result.unreachable.append(Unreachable(host=name, uri=uri, error=error))
        else:
            result.vms.extend(outcome.value)
    return result


def health_of_all(caller: Caller, db: str | Store | None = None, *,
                  deadline: float = LIST_DEADLINE_S) -> list[hosts.HostHealth]:
    """Every host's health (reachable, VMs running/defined, free memory, accelerator
    ...), all asked at once; a host that does not answer within ``deadline`` seconds is
    unreachable with the reason (the dashboard)."""
    known = hosts.known_hosts(db)
    memory = reachability.REACHABILITY

    def failure(health: hosts.HostHealth) -> str | None:
        return None if health.reachable else (health.error or "no answer")

    def ask(name: str, uri: str, is_here: bool) -> Callable[[], hosts.HostHealth]:
        info = functools.partial(hosts.host_info, caller, name, db, deadline=deadline)
        return info if is_here else lambda: memory.ask(uri, info, failure)

    down = {name: gone for name, uri, is_here in known
            if not is_here and (gone := memory.down(uri)) is not None}
    for name, uri, _here in known:
        if name in down:
            memory.recheck(uri, functools.partial(
                hosts.host_info, caller, name, db,
                deadline=reachability.PROBE_DEADLINE_S), failure)
    outcomes = hosts.gather({name: ask(name, uri, is_here) for name, uri, is_here in known
                             if name not in down}, deadline + 0.5)
    found = []
    for name, uri, is_here in known:
        if name in down:
            found.append(hosts.HostHealth(name=name, uri=uri, local=False, reachable=False,
                                          error=down[name].message()))
            continue
        outcome = outcomes[name]
        if outcome.value is None and not is_here:
            memory.timed_out(uri, outcome.error or "no answer")
        found.append(outcome.value if outcome.value is not None else hosts.HostHealth(
            name=name, uri=uri, local=is_here, reachable=False,
            error=outcome.error or "no answer"))
    return found
