"""Connections to the hosts kvmops manages (the local one and the ones ``host add``
stored), and the health facts ``host list``/``host info`` show.

A remote connection gets libvirt's keepalive (5 s interval, 3 missed answers): with it
a host that vanishes is noticed by the connection instead of a call hanging on a dead
TCP socket. Keepalive needs libvirt's event loop, which is started first (a daemon
thread; idempotent).
"""

from __future__ import annotations

import contextlib
import re
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from urllib.parse import urlsplit

import libvirt

from kvmops.errors import HostUnavailableError
from kvmops.host.connection import Host, translate, version_text

KEEPALIVE_INTERVAL_S = 5
KEEPALIVE_COUNT = 3


def is_remote(uri: str) -> bool:
    """A URI naming a host over the network (not the local daemon's socket)."""
    parts = urlsplit(uri)
    return bool(parts.hostname) or parts.scheme in ("qemu+ssh", "qemu+tls", "qemu+tcp")


def open_remote(uri: str) -> Host:
    """A connection to ``uri`` (HostUnavailableError naming libvirt's reason); remote
    ones with keepalive. The caller closes it. The event loop is registered before the
    connection opens: libvirt refuses keepalive on one opened without it."""
    remote = is_remote(uri)
    if remote:
        from kvmops.host.events import ensure_event_loop

        ensure_event_loop()
    host = Host(uri)
    if remote:
        with contextlib.suppress(libvirt.libvirtError):
            host.conn.setKeepAlive(KEEPALIVE_INTERVAL_S, KEEPALIVE_COUNT)
    return host


class Pool:
    """One open connection per URI, reused while it is alive and opened again when it
    is not (a host that went away and came back). A URI is used by one caller at a
    time: a caller that finds an earlier attempt still waiting on a host that does not
    answer gives up after ``wait`` seconds instead of opening yet another connection."""

    def __init__(self, opener: Callable[[str], Host] = open_remote, wait: float = 30.0
                 ) -> None:
        self._open = opener
        self._wait = wait
        self._hosts: dict[str, Host] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._dropped: set[str] = set()
        self._guard = threading.Lock()

    @contextlib.contextmanager
    def connection(self, uri: str) -> Iterator[Host]:
        with self._guard:
            lock = self._locks.setdefault(uri, threading.Lock())
        if not lock.acquire(timeout=self._wait):
            raise HostUnavailableError(f"{uri}: an earlier connection attempt is still "
                                       "waiting for an answer",
                                       hint="is the host up and its libvirtd reachable?")
        try:
            host = self._hosts.pop(uri, None)
            if host is not None and not host.alive():
                host.close()
                host = None
            if host is None:
                host = self._open(uri)
            try:
                yield host
            except BaseException:  # the connection may be what failed: not kept
                host.close()
                raise
            with self._guard:
                dropped = uri in self._dropped
                self._dropped.discard(uri)
            if dropped:
                host.close()
            else:
                self._hosts[uri] = host
        finally:
            with self._guard:
                self._dropped.discard(uri)  # also when opening failed
            lock.release()

    def drop(self, uri: str) -> None:
        """Close the connection to ``uri`` (a host removed) without waiting: one in use
        is closed when its user is done."""
        with self._guard:
            lock = self._locks.get(uri)
            if lock is None:
                return
            if not lock.acquire(blocking=False):
                self._dropped.add(uri)
                return
        try:
            host = self._hosts.pop(uri, None)
            if host is not None:
                host.close()
        finally:
            lock.release()


#: The process's connections to managed hosts (``host list``/``host info``).
POOL = Pool()


@dataclass
class Summary:
    """What a host list shows: a few calls, one of them the bulk domain listing."""

    hostname: str
    libvirt_version: str
    qemu_version: str
    vms_running: int
    vms_defined: int


@dataclass
class Health(Summary):
    """What ``host info`` adds: accelerator, CPU, memory, storage pool space."""

    accelerator: str  # kvm or tcg, from the domain capabilities
    cpu_model: str | None
    cpus: int
    memory_total: int  # bytes
    memory_free: int | None  # bytes: free + buffers + cache
    pools_active: int
    pool_capacity: int  # bytes, active pools
    pool_available: int


def _summary(host: Host) -> Summary:
    domains = host.conn.listAllDomains(0)
    running = sum(1 for d in domains if d.isActive())
    return Summary(hostname=str(host.conn.getHostname()),
                   libvirt_version=version_text(host.conn.getLibVersion()),
                   qemu_version=version_text(host.conn.getVersion()),
                   vms_running=running, vms_defined=len(domains))


def summary(host: Host) -> Summary:
    """Host name, versions, VM counts (libvirt errors become kvmops errors)."""
    try:
        return _summary(host)
    except libvirt.libvirtError as err:
        raise translate(err, f"reading host {host.uri}") from err


def accelerator(host: Host) -> str:
    """kvm when libvirt offers KVM domains on that host (its domain capabilities), else
    tcg (QEMU's emulation)."""
    try:
        host.conn.getDomainCapabilities(None, None, None, "kvm", 0)
    except libvirt.libvirtError:
        return "tcg"
    return "kvm"


def cpu_model(capabilities: str) -> str | None:
    """The host CPU model of a capabilities XML."""
    host = re.search(r"<host>(.*?)</host>", capabilities, re.S)
    if host is None:
        return None
    cpu = re.search(r"<cpu>.*?<model>([^<]+)</model>", host.group(1), re.S)
    return cpu.group(1).strip() if cpu else None


def health(host: Host) -> Health:
    """Everything ``host info`` shows about one host."""
    try:
        base = _summary(host)
        node = host.conn.getInfo()
        capacity = available = active = 0
        for pool in host.conn.listAllStoragePools(libvirt.VIR_CONNECT_LIST_STORAGE_POOLS_ACTIVE):
            with contextlib.suppress(libvirt.libvirtError):
                _state, cap, _alloc, avail = pool.info()
                capacity += int(cap)
                available += int(avail)
                active += 1
        return Health(**vars(base), accelerator=accelerator(host),
                      cpu_model=cpu_model(str(host.conn.getCapabilities())),
                      cpus=int(node[2]), memory_total=host.memory_total(),
                      memory_free=host.memory_available(), pools_active=active,
                      pool_capacity=capacity, pool_available=available)
    except libvirt.libvirtError as err:
        raise translate(err, f"reading host {host.uri}") from err
