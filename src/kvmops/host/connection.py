"""The libvirt connection and the one place libvirt errors become kvmops errors.

Only this package imports ``libvirt``; the rest of kvmops talks to
:class:`Host` and the domain handles it returns.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator

import libvirt

from kvmops.config import settings
from kvmops.errors import HostUnavailableError, NotFoundError
from kvmops.host.domain import Domain
from kvmops.host.errors import (
    LOST_HINT,
    UNREADABLE_ERROR,
    call,
    connection_lost,
    is_undecodable_error,
    translate,
)

__all__ = ["LOST_HINT", "UNREADABLE_ERROR", "Domain", "Host", "call", "connection_lost",
           "is_undecodable_error", "open_host", "translate", "version_text"]


class Host:
    """A libvirt connection to one host."""

    def __init__(self, uri: str | None = None) -> None:
        self.uri = uri or settings().uri
        self._host_uuid: str | None = None
        try:
            self.conn: libvirt.virConnect = libvirt.open(self.uri)
        except libvirt.libvirtError as err:
            raise HostUnavailableError(
                f"cannot connect to libvirt at {self.uri}: "
                f"{(err.get_error_message() or str(err)).strip()}",
                hint="is libvirtd running? start it with 'libvirtd -d' or run 'make setup'",
            ) from err

    def close(self) -> None:
        with contextlib.suppress(libvirt.libvirtError):
            self.conn.close()

    def alive(self) -> bool:
        """Does libvirtd still answer on this connection? (one cheap round trip: a closed
        socket is noticed only when it is used)"""
        try:
            return bool(self.conn.isAlive()) and self.conn.getLibVersion() > 0
        except libvirt.libvirtError:
            return False

    def reconnect(self) -> None:
        """Open the connection again (after libvirtd restarted)."""
        self.close()
        self.__init__(self.uri)  # type: ignore[misc]

    def __enter__(self) -> Host:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # Domains -----------------------------------------------------------
    def lookup(self, name: str) -> Domain:
        """The VM ``name`` (NotFoundError with a hint when there is none)."""
        return Domain(self.domain(name))

    def all_domains(self) -> list[Domain]:
        """Every defined or running VM."""
        return [Domain(d) for d in self.domains()]

    def define_domain(self, xml: str) -> Domain:
        """Define (or redefine) a VM from its XML."""
        return Domain(self.define(xml))

    # The raw handles below are for callers still moving to :class:`Domain`.
    def domain(self, name: str) -> libvirt.virDomain:
        try:
            return self.conn.lookupByName(name)
        except libvirt.libvirtError as err:
            if err.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                raise NotFoundError(
                    f"VM '{name}' not found on {self.uri}",
                    hint="see 'kvmops vm list' for the defined VMs",
                ) from err
            raise translate(err, f"looking up VM '{name}'") from err

    def has_domain(self, name: str) -> bool:
        try:
            self.conn.lookupByName(name)
        except libvirt.libvirtError:
            return False
        return True

    def domains(self) -> list[libvirt.virDomain]:
        return call("listing VMs", self.conn.listAllDomains, 0)

    def define(self, xml: str) -> libvirt.virDomain:
        return call("defining VM", self.conn.defineXML, xml)

    def libvirt_version(self) -> int:
        return int(call("reading libvirt version", self.conn.getLibVersion))

    def qemu_version(self) -> int:
        return int(call("reading hypervisor version", self.conn.getVersion))

    def memory_total(self) -> int:
        """The host's memory in bytes.

        From the node memory stats (MemTotal): ``getInfo``'s memory field is derived
        from the NUMA topology and reported half of MemTotal on this kind of VM host.
        """
        try:
            stats = self.conn.getMemoryStats(libvirt.VIR_NODE_MEMORY_STATS_ALL_CELLS, 0)
            return int(stats["total"]) * 1024
        except (libvirt.libvirtError, KeyError):
            return int(call("reading host info", self.conn.getInfo)[1]) * 1024**2

    def memory_available(self) -> int | None:
        """Memory the host could give a new VM now (free + buffers + cache), bytes."""
        try:
            stats = self.conn.getMemoryStats(libvirt.VIR_NODE_MEMORY_STATS_ALL_CELLS, 0)
        except libvirt.libvirtError:
            return None
        kib = sum(int(stats.get(key, 0)) for key in ("free", "buffers", "cached"))
        return kib * 1024 or None

    def cpus(self) -> int:
        return int(call("reading host info", self.conn.getInfo)[2])

    def max_vcpus(self, domain_type: str, arch: str = "x86_64", machine: str = "pc"
                  ) -> int | None:
        """The most vCPUs libvirt/QEMU allow a VM of this kind (domain capabilities)."""
        try:
            caps = self.conn.getDomainCapabilities(None, arch, machine, domain_type, 0)
        except libvirt.libvirtError:
            return None
        match = re.search(r"<vcpu max=['\"](\d+)['\"]", str(caps))
        return int(match.group(1)) if match else None

    def network_active(self, name: str) -> bool:
        network = self.network(name)
        return bool(call(f"reading the state of network '{name}'", network.isActive))

    def hostname(self) -> str:
        return str(call("reading host name", self.conn.getHostname))

    def capabilities(self) -> str:
        return str(call("reading capabilities", self.conn.getCapabilities))

    def host_uuid(self) -> str:
        """The host UUID of the capabilities ("" if none), read once per connection: it
        does not change while libvirtd runs, and the capabilities cost a few ms each."""
        if self._host_uuid is None:
            from lxml import etree  # not at import: quick commands never load lxml

            try:
                root = etree.fromstring(self.capabilities().encode())
                self._host_uuid = root.findtext("host/uuid") or ""
            except (etree.XMLSyntaxError, ValueError):
                self._host_uuid = ""
        return self._host_uuid

    def network_names(self) -> list[str]:
        return [n.name() for n in call("listing networks", self.conn.listAllNetworks, 0)]

    def network(self, name: str) -> libvirt.virNetwork:
        try:
            return self.conn.networkLookupByName(name)
        except libvirt.libvirtError as err:
            raise NotFoundError(
                f"network '{name}' not found on {self.uri}",
                hint="see 'virsh net-list --all'",
            ) from err


@contextlib.contextmanager
def open_host(uri: str | None = None) -> Iterator[Host]:
    """Open a connection for the duration of a block."""
    host = Host(uri)
    try:
        yield host
    finally:
        host.close()


def version_text(packed: int) -> str:
    """libvirt packs versions as major*1e6 + minor*1e3 + micro."""
    return f"{packed // 1_000_000}.{packed // 1000 % 1000}.{packed % 1000}"
