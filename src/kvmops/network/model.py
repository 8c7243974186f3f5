"""A libvirt virtual network as a typed spec, its XML, and the XML read back.

:class:`NetworkSpec` is what ``kvmops net create`` (and ``POST /api/v1/networks``) asks
for; it checks itself when made (one-line errors naming the bad value and what to do)
and builds libvirt's network XML with lxml (:meth:`NetworkSpec.to_xml`).
:func:`parse_network` reads any network's XML back into a :class:`NetworkInfo`
(``net list`` / ``net info``), including networks kvmops did not create.

Modes, as libvirt's ``<forward mode=...>`` expresses them:

- ``isolated``: no ``<forward>``: guests reach each other and the host, nothing else.
- ``nat``: ``<forward mode='nat'>``: libvirt's bridge, dnsmasq, and masquerading rules.
- ``route``: ``<forward mode='route'>``: routed without NAT (the upstream needs a route
  back to the network's subnet).
- ``bridge``: ``<forward mode='bridge'>`` over an existing host bridge (libvirt runs no
  DHCP and owns no address there: the bridge's LAN does).
- ``ovs``: the same on an Open vSwitch bridge (``<virtualport type='openvswitch'/>``).

IPv6 address assignment: libvirt writes dnsmasq's configuration from the XML
(``/var/lib/libvirt/dnsmasq/NAME.conf``) and always sends router advertisements for an
``<ip family='ipv6'>``:

- **slaac**: the ``<ip>`` without ``<dhcp>``: ``dhcp-range=PREFIX,ra-only``: RAs with
  the autonomous flag; guests build their own address, which needs a /64 prefix.
- **dhcpv6-stateful**: the ``<ip>`` with ``<dhcp><range>``: ``dhcp-range=START,END,LEN``:
  RAs with the managed (M) flag; guests lease an address from the range.
- **dhcpv6-stateless** (SLAAC addresses, other configuration such as DNS by DHCPv6: the
  O flag) has no element of its own in libvirt's network XML, so kvmops adds one dnsmasq
  option through libvirt's ``dnsmasq:options`` namespace: ``dhcp-range=PREFIX::,
  ra-stateless,64``, written only from the validated prefix. libvirt keeps its
  ``ra-only`` line beside it; dnsmasq then advertises the prefix with the autonomous
  and the O flag (checked by a router solicitation in the tests) and answers DHCPv6
  information requests, never address requests.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Literal, get_args

from lxml import etree

from kvmops.errors import ValidationError

Mode = Literal["nat", "route", "isolated", "bridge", "ovs"]
Ipv6Mode = Literal["slaac", "dhcpv6-stateful", "dhcpv6-stateless"]
MODES: tuple[str, ...] = get_args(Mode)
IPV6_MODES: tuple[str, ...] = get_args(Ipv6Mode)
#: Modes whose bridge, addresses and dnsmasq libvirt owns.
MANAGED_MODES = ("nat", "route", "isolated")
#: Modes that put guests on a bridge the host already has.
HOST_BRIDGE_MODES = ("bridge", "ovs")

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]{0,63}$")
# Linux interface names: IFNAMSIZ is 16 bytes with the final NUL; no '/', ':' or space.
IFNAME_MAX = 15
IFNAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
#: The stateful DHCPv6 range when none is given: these offsets into the prefix.
DHCP6_DEFAULT_OFFSETS = (0x1000, 0x1FFF)

IPv4 = ipaddress.IPv4Address
IPv6 = ipaddress.IPv6Address
_PARSER = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False)


# ------------------------------------------------------------------------- checks
def check_name(name: str) -> str:
    """Network names: as VM names (letters, digits, ``_.+-``; 1-64 characters)."""
    if not NAME_RE.match(name):
        raise ValidationError(
            f"invalid network name '{name}'",
            hint="use 1-64 letters, digits, '_', '.', '+' or '-', starting with a letter "
                 "or digit")
    return name


def check_ifname(name: str, what: str) -> str:
    """A Linux interface name (a bridge, a forward device): at most 15 characters."""
    if len(name) > IFNAME_MAX:
        raise ValidationError(
            f"{what} '{name}' is {len(name)} characters long",
            hint=f"Linux interface names have at most {IFNAME_MAX}: choose a shorter one")
    if not IFNAME_RE.match(name) or name in (".", ".."):
        raise ValidationError(f"invalid {what} '{name}'",
                              hint="use letters, digits, '_', '.' or '-' (no '/', ':' "
                                   "or spaces)")
    return name


def _interface(text: str, option: str, version: int
               ) -> ipaddress.IPv4Interface | ipaddress.IPv6Interface:
    example = "192.168.251.1/24" if version == 4 else "fd00:251::1/64"
    if "/" not in text:
        raise ValidationError(f"{option} {text} has no prefix length",
                              hint=f"give the network's own address and prefix, e.g. "
                                   f"{example}")
    try:
        iface = ipaddress.ip_interface(text.strip())
    except ValueError:
        raise ValidationError(f"{option} {text} is not an IPv{version} address/prefix",
                              hint=f"e.g. {example}") from None
    if iface.version != version:
        raise ValidationError(f"{option} {text} is not an IPv{version} address/prefix",
                              hint=f"e.g. {example}")
    return iface


def parse_range(text: str, option: str, version: int) -> tuple[IPv4 | IPv6, IPv4 | IPv6]:
    """``START-END`` (two addresses of one family) as addresses."""
    start_text, sep, end_text = text.strip().partition("-")
    example = ("192.168.251.10-192.168.251.50" if version == 4
               else "fd00:251::1000-fd00:251::1fff")
    try:
        if not sep:
            raise ValueError
        start = ipaddress.ip_address(start_text.strip())
        end = ipaddress.ip_address(end_text.strip())
    except ValueError:
        raise ValidationError(f"{option} {text} is not a range START-END",
                              hint=f"e.g. {example}") from None
    if start.version != version or end.version != version:
        raise ValidationError(f"{option} {text} is not an IPv{version} range",
                              hint=f"e.g. {example}")
    if int(end) < int(start):
        raise ValidationError(f"{option} {text} ends before it starts",
                              hint="give the lower address first")
    return start, end


def _check_range_in(iface: ipaddress.IPv4Interface | ipaddress.IPv6Interface,
                    start: IPv4 | IPv6, end: IPv4 | IPv6, option: str, text: str) -> None:
    net = iface.network
    if start not in net or end not in net:
        raise ValidationError(f"{option} range {text} is outside the subnet {net}",
                              hint=f"choose addresses inside {net}")
    reserved = [net.network_address]
    if isinstance(net, ipaddress.IPv4Network) and net.prefixlen < 31:
        reserved.append(net.broadcast_address)
    for address in reserved:
        if int(start) <= int(address) <= int(end):
            raise ValidationError(f"{option} range {text} includes {address}, the subnet's "
                                  f"{'network' if address == net.network_address else 'broadcast'}"
                                  " address", hint="leave it out of the range")
    if int(start) <= int(iface.ip) <= int(end):
        raise ValidationError(f"{option} range {text} includes the network's own address "
                              f"{iface.ip}", hint="start the range after it (or end it before)")


# --------------------------------------------------------------------------- spec
@dataclass(frozen=True)
class NetworkSpec:
    """A network to create; checked when made (:class:`ValidationError` with one line)."""

    name: str
    mode: str = "isolated"
    bridge: str | None = None  # nat/route/isolated: libvirt picks virbrN when None
    ipv4: str | None = None  # the network's (host side) address and prefix: 192.168.251.1/24
    dhcp: str | None = None  # IPv4 DHCP range START-END
    ipv6: str | None = None  # fd00:251::1/64
    ipv6_mode: str | None = None  # slaac (default) | dhcpv6-stateful | dhcpv6-stateless
    dhcp6: str | None = None  # stateful DHCPv6 range (default PREFIX::1000-PREFIX::1fff)
    forward_dev: str | None = None  # nat/route: the uplink to forward through only
    autostart: bool = False

    def __post_init__(self) -> None:
        check_name(self.name)
        if self.mode not in MODES:
            raise ValidationError(f"unknown network mode '{self.mode}'",
                                  hint=f"use one of {', '.join(MODES)}")
        if self.bridge is not None:
            check_ifname(self.bridge, "bridge name")
        if self.forward_dev is not None:
            check_ifname(self.forward_dev, "forward device")
        if self.mode in HOST_BRIDGE_MODES:
            self._check_host_bridge()
        elif self.forward_dev is not None and self.mode == "isolated":
            raise ValidationError("an isolated network forwards nothing: --forward-dev is "
                                  "only for --mode nat or route",
                                  hint="leave --forward-dev out, or choose --mode nat|route")
        self._check_ipv4()
        self._check_ipv6()

    def _check_host_bridge(self) -> None:
        what = f"a --mode {self.mode} network"
        if self.bridge is None:
            kind = "Open vSwitch" if self.mode == "ovs" else "host"
            raise ValidationError(f"{what} needs --bridge NAME",
                                  hint=f"name the existing {kind} bridge its guests join")
        for option, value in (("--ipv4", self.ipv4), ("--dhcp", self.dhcp),
                              ("--ipv6", self.ipv6), ("--ipv6-mode", self.ipv6_mode),
                              ("--dhcp6", self.dhcp6), ("--forward-dev", self.forward_dev)):
            if value is not None:
                raise ValidationError(
                    f"{option} is not for {what}",
                    hint=f"libvirt runs no DHCP and owns no address on bridge "
                         f"'{self.bridge}': its LAN does; leave {option} out")

    def _check_ipv4(self) -> None:
        if self.ipv4 is None:
            if self.dhcp is not None:
                raise ValidationError("--dhcp needs --ipv4",
                                      hint="give the network's address, e.g. "
                                           "--ipv4 192.168.251.1/24")
            return
        iface = self.ipv4_interface
        assert iface is not None
        net = iface.network
        if net.prefixlen > 30:
            raise ValidationError(f"--ipv4 {self.ipv4}: a /{net.prefixlen} leaves no room "
                                  "for guests", hint="use a prefix of /30 or shorter, e.g. /24")
        if net.prefixlen < 8:
            raise ValidationError(f"--ipv4 {self.ipv4}: a /{net.prefixlen} would cover much "
                                  "of the Internet", hint="use a prefix of /8 to /30, e.g. /24")
        if iface.ip in (net.network_address, net.broadcast_address):
            raise ValidationError(f"--ipv4 {self.ipv4} is the subnet's "
                                  f"{'network' if iface.ip == net.network_address else 'broadcast'}"
                                  " address", hint=f"give the host's address in it, e.g. "
                                                   f"{net.network_address + 1}/{net.prefixlen}")
        if iface.ip.is_multicast or iface.ip.is_loopback or iface.ip.is_unspecified:
            raise ValidationError(f"--ipv4 {self.ipv4} cannot be a network's address",
                                  hint="use a private subnet such as 192.168.251.1/24")
        if self.dhcp is not None:
            start, end = parse_range(self.dhcp, "--dhcp", 4)
            _check_range_in(iface, start, end, "--dhcp", self.dhcp)

    def _check_ipv6(self) -> None:
        if self.ipv6 is None:
            for option, value in (("--ipv6-mode", self.ipv6_mode), ("--dhcp6", self.dhcp6)):
                if value is not None:
                    raise ValidationError(f"{option} needs --ipv6",
                                          hint="give the network's IPv6 address, e.g. "
                                               "--ipv6 fd00:251::1/64")
            return
        mode = self.ipv6_mode or "slaac"
        if mode not in IPV6_MODES:
            raise ValidationError(f"unknown --ipv6-mode '{mode}'",
                                  hint=f"use one of {', '.join(IPV6_MODES)}")
        iface = self.ipv6_interface
        assert iface is not None
        ip = iface.ip
        if ip.is_link_local or ip.is_multicast or ip.is_loopback or ip.is_unspecified:
            raise ValidationError(f"--ipv6 {self.ipv6} cannot be a network's address",
                                  hint="use a unique local /64 such as fd00:251::1/64")
        prefix = iface.network.prefixlen
        if mode in ("slaac", "dhcpv6-stateless"):
            if prefix != 64:
                raise ValidationError(
                    f"--ipv6 {self.ipv6}: SLAAC needs a /64 prefix (guests build their "
                    f"address from it), not /{prefix}",
                    hint="use a /64, or --ipv6-mode dhcpv6-stateful for another length")
            if self.dhcp6 is not None:
                raise ValidationError("--dhcp6 is a stateful DHCPv6 range: not for "
                                      f"--ipv6-mode {mode}",
                                      hint="add --ipv6-mode dhcpv6-stateful, or leave "
                                           "--dhcp6 out")
            return
        if not 8 <= prefix <= 120:
            raise ValidationError(f"--ipv6 {self.ipv6}: a /{prefix} does not suit DHCPv6",
                                  hint="use a prefix of /8 to /120, usually /64")
        start, end = self.dhcp6_range
        _check_range_in(iface, start, end, "--dhcp6", self.dhcp6 or f"{start}-{end}")

    # ------------------------------------------------------------ derived values
    @property
    def ipv4_interface(self) -> ipaddress.IPv4Interface | None:
        if self.ipv4 is None:
            return None
        iface = _interface(self.ipv4, "--ipv4", 4)
        assert isinstance(iface, ipaddress.IPv4Interface)
        return iface

    @property
    def ipv6_interface(self) -> ipaddress.IPv6Interface | None:
        if self.ipv6 is None:
            return None
        iface = _interface(self.ipv6, "--ipv6", 6)
        assert isinstance(iface, ipaddress.IPv6Interface)
        return iface

    @property
    def effective_ipv6_mode(self) -> str | None:
        return None if self.ipv6 is None else (self.ipv6_mode or "slaac")

    @property
    def dhcp6_range(self) -> tuple[IPv4 | IPv6, IPv4 | IPv6]:
        """The stateful DHCPv6 range: given, else a default inside the prefix."""
        if self.dhcp6 is not None:
            return parse_range(self.dhcp6, "--dhcp6", 6)
        iface = self.ipv6_interface
        assert iface is not None
        net = iface.network
        first, last = DHCP6_DEFAULT_OFFSETS
        if net.num_addresses <= last:
            raise ValidationError(f"--ipv6 {self.ipv6} is too small for the default DHCPv6 "
                                  "range", hint="give one with --dhcp6 START-END")
        return net.network_address + first, net.network_address + last

    def subnets(self) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
        found: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
        for iface in (self.ipv4_interface, self.ipv6_interface):
            if iface is not None:
                found.append(iface.network)
        return found

    # --------------------------------------------------------------------- XML
    def to_element(self) -> etree._Element:
        root = etree.Element("network")
        _sub(root, "name", self.name)
        if self.mode in ("nat", "route"):
            forward = _sub(root, "forward", mode=self.mode)
            if self.forward_dev:
                forward.set("dev", self.forward_dev)
        elif self.mode in HOST_BRIDGE_MODES:
            _sub(root, "forward", mode="bridge")
        if self.mode in HOST_BRIDGE_MODES:
            assert self.bridge is not None
            _sub(root, "bridge", name=self.bridge)
        else:
            bridge = _sub(root, "bridge", stp="on", delay="0")
            if self.bridge:
                bridge.set("name", self.bridge)
        if self.mode == "ovs":
            _sub(root, "virtualport", type="openvswitch")
        v4 = self.ipv4_interface
        if v4 is not None:
            ip = _sub(root, "ip", family="ipv4", address=str(v4.ip),
                      prefix=str(v4.network.prefixlen))
            if self.dhcp is not None:
                start, end = parse_range(self.dhcp, "--dhcp", 4)
                _sub(_sub(ip, "dhcp"), "range", start=str(start), end=str(end))
        v6 = self.ipv6_interface
        if v6 is not None:
            ip = _sub(root, "ip", family="ipv6", address=str(v6.ip),
                      prefix=str(v6.network.prefixlen))
            if self.effective_ipv6_mode == "dhcpv6-stateful":
                start, end = self.dhcp6_range
                _sub(_sub(ip, "dhcp"), "range", start=str(start), end=str(end))
            elif self.effective_ipv6_mode == "dhcpv6-stateless":
                options = etree.SubElement(root, f"{{{DNSMASQ_NS}}}options",
                                           nsmap={"dnsmasq": DNSMASQ_NS})
                etree.SubElement(options, f"{{{DNSMASQ_NS}}}option",
                                 value=_stateless_range(v6.network))
        return root

    def to_xml(self) -> str:
        return etree.tostring(self.to_element(), encoding="unicode", pretty_print=True)


def check_overlaps(spec: NetworkSpec, others: list[NetworkInfo]) -> None:
    """Refuse a subnet that overlaps another network's, or a bridge another libvirt
    network owns (names the other network)."""
    mine = spec.subnets()
    for other in others:
        if other.name == spec.name:
            continue
        for theirs in other.subnets():
            for subnet in mine:
                if subnet.version == theirs.version and subnet.overlaps(theirs):
                    option = "--ipv4" if subnet.version == 4 else "--ipv6"
                    given = spec.ipv4 if subnet.version == 4 else spec.ipv6
                    raise ValidationError(
                        f"{option} {given} overlaps network '{other.name}' ({theirs})",
                        hint="choose a subnet no other network uses (see 'kvmops net list')")
        if (spec.bridge and spec.mode in MANAGED_MODES and other.bridge == spec.bridge):
            raise ValidationError(f"bridge '{spec.bridge}' belongs to network '{other.name}'",
                                  hint="choose another --bridge name, or leave it out and "
                                       "libvirt picks a free virbrN")


# ------------------------------------------------------------------ reading back
@dataclass
class NetworkInfo:
    """A libvirt network as ``net list`` / ``net info`` show it (from its XML and state).

    ``mode`` is one of :data:`MODES` for what kvmops creates, else libvirt's own forward
    mode (``open``, ``hostdev``, ``passthrough`` ...). ``ipv4``/``ipv6`` are the network's
    address with its prefix (the form ``net create`` takes); only the first of each
    family is shown. ``used_by`` is filled by ``net info`` (None in a list)."""

    name: str
    mode: str
    bridge: str | None = None
    active: bool = False
    persistent: bool = True
    autostart: bool = False
    uuid: str | None = None
    ipv4: str | None = None
    dhcp: str | None = None
    ipv6: str | None = None
    ipv6_mode: str | None = None
    dhcp6: str | None = None
    forward_dev: str | None = None
    used_by: list[str] | None = None

    def subnets(self) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
        found: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
        for text in (self.ipv4, self.ipv6):
            if text:
                try:
                    found.append(ipaddress.ip_interface(text).network)
                except ValueError:
                    continue
        return found


#: libvirt's namespace for raw dnsmasq options in a network's XML.
DNSMASQ_NS = "http://libvirt.org/schemas/network/dnsmasq/1.0"


def _stateless_range(net: ipaddress.IPv6Network) -> str:
    """dnsmasq's stateless-DHCPv6 range for a /64 (RAs with the A and O flags)."""
    return f"dhcp-range={net.network_address},ra-stateless,{net.prefixlen}"


def _prefix_of(ip: etree._Element) -> int | None:
    prefix = ip.get("prefix")
    if prefix is not None and prefix.isdigit():
        return int(prefix)
    netmask = ip.get("netmask")
    if netmask:
        try:
            return ipaddress.IPv4Network(f"0.0.0.0/{netmask}").prefixlen
        except ValueError:
            return None
    return None


def _range_text(ip: etree._Element) -> str | None:
    rng = ip.find("dhcp/range")
    if rng is None or not rng.get("start") or not rng.get("end"):
        return None
    return f"{rng.get('start')}-{rng.get('end')}"


def parse_network(xml: str | bytes, *, active: bool = False, persistent: bool = True,
                  autostart: bool = False) -> NetworkInfo:
    """Any libvirt network XML (``virsh net-dumpxml``) as a :class:`NetworkInfo`."""
    root = etree.fromstring(xml.encode() if isinstance(xml, str) else xml, _PARSER)
    forward = root.find("forward")
    if forward is None:
        mode = "isolated"
    else:
        mode = forward.get("mode", "nat")
        if mode == "bridge" and root.find("virtualport[@type='openvswitch']") is not None:
            mode = "ovs"
    bridge_el = root.find("bridge")
    info = NetworkInfo(
        name=root.findtext("name") or "", mode=mode,
        bridge=bridge_el.get("name") if bridge_el is not None else None,
        active=active, persistent=persistent, autostart=autostart,
        uuid=root.findtext("uuid"),
        forward_dev=forward.get("dev") if forward is not None else None)
    for ip in root.findall("ip"):
        address = ip.get("address")
        prefix = _prefix_of(ip)
        if not address or prefix is None:
            continue
        family = ip.get("family") or ("ipv6" if ":" in address else "ipv4")
        if family == "ipv4" and info.ipv4 is None:
            info.ipv4 = f"{address}/{prefix}"
            info.dhcp = _range_text(ip)
        elif family == "ipv6" and info.ipv6 is None:
            info.ipv6 = f"{address}/{prefix}"
            info.dhcp6 = _range_text(ip)
            info.ipv6_mode = "dhcpv6-stateful" if info.dhcp6 else "slaac"
            if info.dhcp6 is None and _stateless_range(
                    ipaddress.IPv6Interface(info.ipv6).network) in _dnsmasq_options(root):
                info.ipv6_mode = "dhcpv6-stateless"
    return info


def _dnsmasq_options(root: etree._Element) -> list[str]:
    return [o.get("value", "") for o in
            root.findall(f"{{{DNSMASQ_NS}}}options/{{{DNSMASQ_NS}}}option")]


def _sub(parent: etree._Element, tag: str, text: str | None = None, **attrs: str
         ) -> etree._Element:
    el = etree.SubElement(parent, tag, attrib=attrs)
    if text is not None:
        el.text = text
    return el
