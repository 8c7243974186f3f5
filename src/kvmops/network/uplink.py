"""Planning a host bridge over an uplink, and its rollback (pure: no kernel calls).

Moving a host's uplink (``eth0``) under a new bridge (``br0``) is what cuts hosts off: the
addresses and routes must move from the uplink to the bridge, the bridge must answer with
the uplink's MAC (so that neighbours' ARP caches and the switch's MAC table stay right),
and if anything goes wrong the old state must come back exactly. This module turns
``ip -json`` output into a :class:`UplinkSnapshot`, makes the ordered ``ip`` steps of the
change (:func:`plan_create`), the steps that restore a snapshot from whatever state a
half-done or crashed change left (:func:`plan_rollback`, idempotent), and tells what still
differs from the snapshot (:func:`differences`). :mod:`kvmops.host.bridges` runs them.
"""

from __future__ import annotations

import ipaddress
from dataclasses import asdict, dataclass, field
from typing import Any

from kvmops.errors import AlreadyExistsError, StateError, UnsupportedError, ValidationError

FOREVER = 4294967295  # an address lifetime of "forever" in ip -json output
#: Route tables and types the kernel makes and removes with the addresses by itself.
_KERNEL_TABLES = ("local",)
_UNICAST = ("unicast", "")


@dataclass(frozen=True)
class Address:
    """One address of a link, as ``ip -json addr`` shows it."""

    family: str  # inet | inet6
    local: str
    prefixlen: int
    broadcast: str | None = None
    scope: str = "global"
    label: str | None = None  # IPv4 only: the device name or "eth0:1"
    noprefixroute: bool = False
    valid: int = FOREVER  # seconds left (FOREVER: static)
    preferred: int = FOREVER

    @property
    def key(self) -> tuple[Any, ...]:
        """What makes it the same address (not its remaining lifetime)."""
        return (self.family, self.local, self.prefixlen, self.broadcast, self.scope,
                self.noprefixroute)

    @property
    def kernel_made(self) -> bool:
        """An IPv6 link-local address: every link makes its own (the bridge too)."""
        return self.family == "inet6" and ipaddress.ip_address(self.local).is_link_local

    def __str__(self) -> str:
        return f"{self.local}/{self.prefixlen}"


@dataclass(frozen=True)
class Route:
    """One route through a link, as ``ip -json route show table all dev X`` shows it."""

    family: str  # inet | inet6
    dst: str
    gateway: str | None = None
    table: str = "main"
    metric: int | None = None
    protocol: str | None = None  # None: boot (ip's default, not shown)
    scope: str | None = None
    prefsrc: str | None = None
    type: str = "unicast"
    onlink: bool = False
    expires: int | None = None  # IPv6 routes from router advertisements

    @property
    def key(self) -> tuple[Any, ...]:
        return (self.family, self.type, self.dst, self.gateway, self.table, self.metric,
                self.protocol, self.scope, self.prefsrc, self.onlink)

    @property
    def kernel_made(self) -> bool:
        """Made by the kernel with an address or link (connected, local, broadcast and
        multicast routes): they come and go with the addresses, never moved by hand."""
        return (self.protocol == "kernel" or self.table in _KERNEL_TABLES
                or self.type not in _UNICAST)

    def __str__(self) -> str:
        text = self.dst + (f" via {self.gateway}" if self.gateway else "")
        if self.table != "main":
            text += f" table {self.table}"
        if self.metric is not None:
            text += f" metric {self.metric}"
        return text


@dataclass(frozen=True)
class Link:
    name: str
    kind: str | None  # linkinfo.info_kind: veth, bridge, bond, vlan ... None: a plain NIC
    link_type: str  # ether, loopback, ...
    mac: str
    mtu: int
    up: bool  # administratively (the UP flag)
    master: str | None


@dataclass(frozen=True)
class UplinkSnapshot:
    """The uplink's state before the change: what a rollback restores."""

    link: Link
    addresses: tuple[Address, ...]
    routes: tuple[Route, ...]
    taken_at: float = 0.0  # time.time() when read

    @property
    def movable_addresses(self) -> tuple[Address, ...]:
        return tuple(a for a in self.addresses if not a.kernel_made)

    @property
    def movable_routes(self) -> tuple[Route, ...]:
        return tuple(r for r in self.routes if not r.kernel_made)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> UplinkSnapshot:
        return cls(link=Link(**data["link"]),
                   addresses=tuple(Address(**a) for a in data["addresses"]),
                   routes=tuple(Route(**r) for r in data["routes"]),
                   taken_at=float(data.get("taken_at", 0.0)))


@dataclass(frozen=True)
class Step:
    """One ``ip`` command (its arguments after ``ip``) and why it is there."""

    args: tuple[str, ...]
    why: str

    def __str__(self) -> str:
        return "ip " + " ".join(self.args)


@dataclass
class Target:
    """Whose reachability proves the change kept the host on line."""

    address: str | None  # the host to reach (the session's client, --verify, a gateway)
    source: str  # "ssh session", "--verify", "default gateway", "none"
    next_hop: str | None = None  # the gateway the route uses, else the address itself
    via_uplink: bool = False
    notes: list[str] = field(default_factory=list)


# ------------------------------------------------------------------ parsing ip -json
def parse_link(data: dict[str, Any]) -> Link:
    info = data.get("linkinfo") or {}
    return Link(name=str(data["ifname"]), kind=info.get("info_kind"),
                link_type=str(data.get("link_type", "ether")),
                mac=str(data.get("address", "")), mtu=int(data.get("mtu", 1500)),
                up="UP" in (data.get("flags") or []), master=data.get("master"))


def parse_addresses(data: dict[str, Any]) -> tuple[Address, ...]:
    """The addresses of one ``ip -json addr show dev X`` entry, in the kernel's order
    (primary IPv4 addresses before their secondaries). A point-to-point peer address is
    refused: kvmops does not move those."""
    found = []
    for item in data.get("addr_info") or []:
        family = item.get("family")
        if family not in ("inet", "inet6"):
            continue
        peer = item.get("address")
        if peer and peer != item.get("local"):
            raise UnsupportedError(
                f"address {item.get('local')} of {data.get('ifname')} has a point-to-point "
                f"peer {peer}", hint="a bridge carries broadcast LANs only: move it by hand")
        label = item.get("label")
        found.append(Address(
            family=family, local=str(item["local"]), prefixlen=int(item["prefixlen"]),
            broadcast=item.get("broadcast"), scope=str(item.get("scope", "global")),
            label=label if family == "inet" else None,
            noprefixroute=bool(item.get("noprefixroute")),
            valid=int(item.get("valid_life_time", FOREVER)),
            preferred=int(item.get("preferred_life_time", FOREVER))))
    return tuple(found)


def parse_routes(items: list[dict[str, Any]], family: str, dev: str) -> tuple[Route, ...]:
    """The routes of ``ip -json -4|-6 route show table all dev X``. A route with several
    next hops is refused (it names other links too: kvmops cannot move a part of it)."""
    found = []
    for item in items:
        if item.get("nexthops") or item.get("nhid"):
            raise UnsupportedError(
                f"route {item.get('dst')} through {dev} has several next hops (or a "
                "nexthop object)", hint="kvmops moves single-path routes only: move it by "
                                        "hand, or remove it for the change")
        metric = item.get("metric")
        expires = item.get("expires")
        found.append(Route(
            family=family, dst=str(item.get("dst", "default")), gateway=item.get("gateway"),
            table=str(item.get("table", "main")),
            metric=int(metric) if metric is not None else None,
            protocol=item.get("protocol"), scope=item.get("scope"),
            prefsrc=item.get("prefsrc"), type=str(item.get("type", "unicast")),
            onlink="onlink" in (item.get("flags") or []),
            expires=int(expires) if expires is not None else None))
    return tuple(found)


# --------------------------------------------------------------------- refusals
def check_uplink(link: Link | None, uplink: str, bridge: str, *, bridge_exists: bool) -> Link:
    """Refuse an uplink that is missing, already a port, not an Ethernet-like link, or a
    bridge that already exists (one line each, with what to do)."""
    if link is None:
        raise ValidationError(f"uplink '{uplink}' does not exist",
                              hint="name an existing interface (see 'ip -br link')")
    if link.master:
        raise StateError(f"uplink '{uplink}' is already a port of '{link.master}'",
                         actual=f"port of {link.master}", required="not enslaved",
                         hint=f"use bridge '{link.master}' as it is ('kvmops net create NAME "
                              f"--mode bridge --bridge {link.master}'), or release it first")
    if link.link_type != "ether":
        raise ValidationError(f"uplink '{uplink}' is a {link.link_type} link, not Ethernet",
                              hint="a Linux bridge takes Ethernet ports only")
    if link.kind == "bridge":
        raise ValidationError(f"uplink '{uplink}' is itself a bridge",
                              hint=f"use it directly: 'kvmops net create NAME --mode bridge "
                                   f"--bridge {uplink}'")
    if uplink == bridge:
        raise ValidationError(f"the bridge and its uplink are both '{uplink}'",
                              hint="give the bridge another name, e.g. br0")
    if bridge_exists:
        raise AlreadyExistsError(f"bridge '{bridge}' already exists",
                                 hint="choose another name, or use it as it is with "
                                      f"'kvmops net create NAME --mode bridge --bridge {bridge}'")
    return link


def session_client(env: dict[str, str]) -> str | None:
    """The address of the SSH client this command runs for (``SSH_CONNECTION``'s first
    field, else ``SSH_CLIENT``'s), or None outside SSH."""
    for name in ("SSH_CONNECTION", "SSH_CLIENT"):
        fields = env.get(name, "").split()
        if fields:
            try:
                return str(ipaddress.ip_address(fields[0].split("%", 1)[0]))
            except ValueError:
                continue
    return None


def check_host(text: str) -> str:
    """A ``--verify`` host: an IP address (no name lookups while the network moves)."""
    try:
        return str(ipaddress.ip_address(text.strip()))
    except ValueError:
        raise ValidationError(f"--verify {text} is not an IP address",
                              hint="give the address of a host that answers through the "
                                   "uplink (the gateway, or your workstation)") from None


# ------------------------------------------------------------------------ plans
def _lifetimes(address: Address, elapsed: float) -> list[str]:
    if address.valid == FOREVER:
        return []
    valid = max(1, int(address.valid - elapsed))
    preferred = (address.preferred if address.preferred == FOREVER
                 else max(0, int(address.preferred - elapsed)))
    return ["valid_lft", str(valid), "preferred_lft",
            "forever" if preferred == FOREVER else str(min(preferred, valid))]


def _label(address: Address, old: str, new: str) -> list[str]:
    """IPv4 labels must start with the device's name: ``eth0:1`` becomes ``br0:1``."""
    if address.label is None or address.label == old:
        return []
    suffix = address.label[len(old):] if address.label.startswith(old) else ""
    return ["label", new + suffix] if suffix.startswith(":") else []


def address_add(address: Address, dev: str, *, old_dev: str, elapsed: float = 0) -> Step:
    args = ["-4" if address.family == "inet" else "-6", "addr", "add", str(address),
            "dev", dev]
    if address.broadcast:
        args += ["broadcast", address.broadcast]
    if address.scope != "global":
        args += ["scope", address.scope]
    args += _label(address, old_dev, dev)
    if address.noprefixroute:
        args.append("noprefixroute")
    args += _lifetimes(address, elapsed)
    if address.family == "inet6":
        args.append("nodad")  # it was in use on the LAN already: no new duplicate check
    return Step(tuple(args), f"address {address} on {dev}")


def address_del(address: Address, dev: str) -> Step:
    return Step(("-4" if address.family == "inet" else "-6", "addr", "del", str(address),
                 "dev", dev), f"address {address} off {dev}")


def route_replace(route: Route, dev: str) -> Step:
    """``ip route replace``: the route moves to ``dev`` in one kernel operation (no moment
    without a default route)."""
    args = ["-4" if route.family == "inet" else "-6", "route", "replace"]
    if route.type not in _UNICAST:
        args.append(route.type)
    args.append(route.dst)
    if route.gateway:
        args += ["via", route.gateway]
    args += ["dev", dev]
    if route.table != "main":
        args += ["table", route.table]
    if route.metric is not None:
        args += ["metric", str(route.metric)]
    if route.protocol:
        args += ["proto", route.protocol]
    if route.scope and not (route.scope == "global" or (route.scope == "link"
                                                        and not route.gateway)):
        args += ["scope", route.scope]
    if route.prefsrc:
        args += ["src", route.prefsrc]
    if route.onlink:
        args.append("onlink")
    if route.expires is not None and route.family == "inet6":
        args += ["expires", str(max(1, route.expires))]
    return Step(tuple(args), f"route {route} through {dev}")


def plan_create(snapshot: UplinkSnapshot, bridge: str) -> list[Step]:
    """The change, in an order that keeps the host reachable at each step: the bridge
    takes the uplink's MAC and MTU before the uplink joins it; the addresses are on the
    bridge before the routes move (a gateway must be on-link); each route moves with one
    ``replace``; the uplink's addresses go last, secondaries before their primary (deleting
    a primary IPv4 address deletes its secondaries)."""
    link = snapshot.link
    uplink = link.name
    steps = [
        Step(("link", "add", "name", bridge, "type", "bridge", "stp_state", "0",
              "forward_delay", "0"), f"create bridge {bridge} (STP off, no forward delay)"),
        Step(("link", "set", "dev", bridge, "address", link.mac),
             f"{bridge} answers with {uplink}'s MAC {link.mac}"),
        Step(("link", "set", "dev", uplink, "master", bridge), f"{uplink} becomes a port of "
                                                               f"{bridge}"),
        Step(("link", "set", "dev", bridge, "mtu", str(link.mtu)), f"{bridge} takes MTU "
                                                                    f"{link.mtu}"),
        Step(("link", "set", "dev", bridge, "up"), f"{bridge} up"),
    ]
    steps += [address_add(a, bridge, old_dev=uplink) for a in snapshot.movable_addresses]
    steps += [route_replace(r, bridge) for r in snapshot.movable_routes]
    steps += [address_del(a, uplink) for a in reversed(snapshot.movable_addresses)]
    return steps


def plan_rollback(snapshot: UplinkSnapshot, current: UplinkSnapshot | None, bridge: str, *,
                  bridge_present: bool, elapsed: float = 0) -> list[Step]:
    """Steps that bring the uplink back to ``snapshot`` from ``current`` (any state a
    half-done change or a crash left) and remove the bridge: the addresses return to the
    uplink first and the routes move back (while the bridge still holds the addresses the
    host stays reachable), then the uplink leaves the bridge, the bridge goes, and the
    uplink's MTU, MAC and up/down state come back. Running it twice changes nothing."""
    link = snapshot.link
    uplink = link.name
    have = {a.key for a in current.addresses} if current is not None else set()
    steps = [address_add(a, uplink, old_dev=uplink, elapsed=elapsed)
             for a in snapshot.addresses if not a.kernel_made and a.key not in have]
    steps += [route_replace(r, uplink) for r in snapshot.movable_routes]
    if current is not None and current.link.master == bridge:
        steps.append(Step(("link", "set", "dev", uplink, "nomaster"),
                          f"{uplink} leaves {bridge}"))
    if bridge_present:
        steps.append(Step(("link", "del", "dev", bridge), f"remove bridge {bridge}"))
    now = current.link if current is not None else None
    if now is None or now.mtu != link.mtu:
        steps.append(Step(("link", "set", "dev", uplink, "mtu", str(link.mtu)),
                          f"{uplink} MTU back to {link.mtu}"))
    if now is None or now.mac.lower() != link.mac.lower():
        steps.append(Step(("link", "set", "dev", uplink, "address", link.mac),
                          f"{uplink} MAC back to {link.mac}"))
    if now is None or now.up != link.up:
        state = "up" if link.up else "down"
        steps.append(Step(("link", "set", "dev", uplink, state), f"{uplink} {state} again"))
    return steps


def differences(before: UplinkSnapshot, after: UplinkSnapshot) -> list[str]:
    """What differs between two snapshots of the uplink (lifetimes, flags and the
    kernel's own routes aside), one phrase each; empty when the state is the same."""
    found = []
    a, b = before.link, after.link
    for what, old, new in (("MTU", a.mtu, b.mtu), ("MAC", a.mac.lower(), b.mac.lower()),
                           ("up", a.up, b.up), ("master", a.master, b.master)):
        if old != new:
            found.append(f"{what} {old} -> {new}")
    old_addresses = {x.key: x for x in before.addresses}
    new_addresses = {x.key: x for x in after.addresses}
    found += [f"address {old_addresses[k]} missing" for k in old_addresses
              if k not in new_addresses]
    found += [f"address {new_addresses[k]} added" for k in new_addresses
              if k not in old_addresses]
    # The kernel's own routes come and go with the addresses (and an IPv6 link-local
    # address's local route only once its duplicate check ends): not compared.
    old_routes = {r.key: r for r in before.movable_routes}
    new_routes = {r.key: r for r in after.movable_routes}
    found += [f"route {old_routes[k]} missing" for k in old_routes if k not in new_routes]
    found += [f"route {new_routes[k]} added" for k in new_routes if k not in old_routes]
    return found


def describe(snapshot: UplinkSnapshot) -> str:
    """One line: the uplink as it is."""
    link = snapshot.link
    addresses = ", ".join(str(a) for a in snapshot.movable_addresses) or "no addresses"
    routes = ", ".join(str(r) for r in snapshot.movable_routes) or "no routes of its own"
    return (f"{link.name}: MAC {link.mac}, MTU {link.mtu}, {'up' if link.up else 'down'}; "
            f"{addresses}; {routes}")


# ------------------------------------------------------------- removing a bridge
#: Bridge options kept by a snapshot, so that a rolled-back removal recreates the same bridge.
BRIDGE_OPTIONS = ("stp_state", "forward_delay", "hello_time", "max_age", "ageing_time",
                  "priority", "vlan_filtering")


def parse_bridge_options(data: dict[str, Any]) -> dict[str, int]:
    """The options of ``ip -json -details link show BRIDGE`` a new bridge is made with."""
    info = (data.get("linkinfo") or {}).get("info_data") or {}
    return {key: int(info[key]) for key in BRIDGE_OPTIONS if key in info}


@dataclass(frozen=True)
class BridgeSnapshot:
    """A bridge over its one port (the uplink), before the bridge is removed."""

    bridge: UplinkSnapshot
    port: UplinkSnapshot
    options: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BridgeSnapshot:
        return cls(bridge=UplinkSnapshot.from_dict(data["bridge"]),
                   port=UplinkSnapshot.from_dict(data["port"]),
                   options={k: int(v) for k, v in (data.get("options") or {}).items()})


def check_bridge_removal(link: Link | None, bridge: str, ports: list[str]) -> str:
    """Refuse a bridge that is missing, not a bridge, or has other ports than its uplink
    (VMs' taps, a second NIC): the one port is returned."""
    if link is None:
        raise ValidationError(f"bridge '{bridge}' does not exist",
                              hint="see 'ip -br link show type bridge'")
    if link.kind != "bridge":
        raise ValidationError(f"'{bridge}' is not a bridge",
                              hint="name a Linux bridge (see 'ip -br link show type bridge')")
    if not ports:
        raise StateError(f"bridge '{bridge}' has no port to move its addresses to",
                         hint=f"nothing carries the host through it: 'ip link del {bridge}'")
    if len(ports) > 1:
        raise StateError(f"bridge '{bridge}' has {len(ports)} ports ({', '.join(ports)})",
                         actual="several ports", required="its uplink only",
                         hint="shut down or move the VMs (and links) on it first; only the "
                              "uplink may stay")
    return ports[0]


def plan_unbridge(snapshot: BridgeSnapshot) -> list[Step]:
    """The bridge's addresses and routes back onto its port, then the bridge goes: the
    addresses are on the port before the routes move (one ``replace`` each), the port
    leaves the bridge, the bridge is deleted (its own copies of the addresses with it)."""
    bridge = snapshot.bridge.link.name
    port = snapshot.port.link.name
    have = {a.key for a in snapshot.port.addresses}
    steps = [address_add(a, port, old_dev=bridge) for a in snapshot.bridge.movable_addresses
             if a.key not in have]
    steps += [route_replace(r, port) for r in snapshot.bridge.movable_routes]
    steps.append(Step(("link", "set", "dev", port, "nomaster"), f"{port} leaves {bridge}"))
    steps.append(Step(("link", "del", "dev", bridge), f"remove bridge {bridge}"))
    return steps


def plan_rebridge(snapshot: BridgeSnapshot, bridge_now: UplinkSnapshot | None,
                  port_now: UplinkSnapshot | None, *, elapsed: float = 0) -> list[Step]:
    """Steps back to ``snapshot`` from any state a half-done removal left: the bridge made
    again (same options, MAC, MTU) when it is gone, the port in it, the bridge's addresses
    and routes back, and the addresses the removal put on the port taken off again."""
    br = snapshot.bridge.link
    port = snapshot.port.link
    steps: list[Step] = []
    if bridge_now is None:
        options = [x for key, value in snapshot.options.items()
                   if not (key == "vlan_filtering" and value == 0)
                   for x in (key, str(value))]
        steps += [Step(("link", "add", "name", br.name, "type", "bridge", *options),
                       f"create bridge {br.name} again"),
                  Step(("link", "set", "dev", br.name, "address", br.mac),
                       f"{br.name} MAC {br.mac}")]
    if port_now is None or port_now.link.master != br.name:
        steps.append(Step(("link", "set", "dev", port.name, "master", br.name),
                          f"{port.name} back into {br.name}"))
    if bridge_now is None or bridge_now.link.mtu != br.mtu:
        steps.append(Step(("link", "set", "dev", br.name, "mtu", str(br.mtu)),
                          f"{br.name} MTU {br.mtu}"))
    if bridge_now is None or bridge_now.link.up != br.up:
        state = "up" if br.up else "down"
        steps.append(Step(("link", "set", "dev", br.name, state), f"{br.name} {state}"))
    have = {a.key for a in bridge_now.addresses} if bridge_now is not None else set()
    steps += [address_add(a, br.name, old_dev=br.name, elapsed=elapsed)
              for a in snapshot.bridge.movable_addresses if a.key not in have]
    steps += [route_replace(r, br.name) for r in snapshot.bridge.movable_routes]
    before = {a.key for a in snapshot.port.addresses}
    moved = {a.key for a in snapshot.bridge.movable_addresses}
    if port_now is not None:
        steps += [address_del(a, port.name) for a in reversed(port_now.addresses)
                  if a.key not in before and a.key in moved]
    return steps
