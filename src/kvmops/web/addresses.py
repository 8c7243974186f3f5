"""Guest IP addresses with where they came from: the guest agent, the DHCP
lease of a libvirt network, or the host's ARP table, in that order of trust.

For each NIC (by MAC address) the first source that reports an address wins;
loopback addresses are left out.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, Literal

from pydantic import BaseModel

Source = Literal["agent", "lease", "arp"]
SOURCES: tuple[Source, ...] = ("agent", "lease", "arp")
_LOOPBACK_PREFIXES = ("127.", "::1")


class GuestAddress(BaseModel):
    interface: str
    mac: str | None
    address: str
    prefix: int | None
    family: Literal["ipv4", "ipv6"]
    source: Source


def _family(kind: Any, address: str) -> Literal["ipv4", "ipv6"]:
    if kind == 1 or (kind is None and ":" in address):
        return "ipv6"
    return "ipv4"


def merge_addresses(reports: Iterable[tuple[Source, dict[str, Any]]]) -> list[GuestAddress]:
    """``reports``: (source, libvirt ``interfaceAddresses()`` result) in trust order."""
    taken: set[str] = set()  # MACs (or interface names without a MAC) already answered
    out: list[GuestAddress] = []
    for source, report in reports:
        newly: set[str] = set()
        for ifname, iface in sorted(report.items()):
            mac = (iface.get("hwaddr") or "").lower() or None
            key = mac or f"if:{ifname}"
            if key in taken:
                continue
            for addr in iface.get("addrs") or []:
                text = str(addr.get("addr", ""))
                if not text or ifname == "lo" or text.startswith(_LOOPBACK_PREFIXES):
                    continue
                out.append(GuestAddress(interface=ifname, mac=mac, address=text,
                                        prefix=addr.get("prefix"),
                                        family=_family(addr.get("type"), text),
                                        source=source))
                newly.add(key)
        taken |= newly
    return out


def collect(query: Callable[[Source], dict[str, Any] | None]) -> list[GuestAddress]:
    """Ask each source in order (``query`` returns None when the source fails)."""
    reports: list[tuple[Source, dict[str, Any]]] = []
    for source in SOURCES:
        report = query(source)
        if report:
            reports.append((source, report))
    return merge_addresses(reports)
