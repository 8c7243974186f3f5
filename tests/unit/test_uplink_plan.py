"""Planning a host bridge over an uplink (kvmops.network.uplink): ip -json parsing, the
refusals, the order of the change's steps, the rollback plan from any half-done state,
and the comparison that says whether a rollback restored the exact prior state."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from kvmops.errors import AlreadyExistsError, StateError, UnsupportedError, ValidationError
from kvmops.network.uplink import (
    FOREVER,
    Address,
    BridgeSnapshot,
    Link,
    Route,
    UplinkSnapshot,
    check_bridge_removal,
    check_host,
    check_uplink,
    differences,
    parse_addresses,
    parse_link,
    parse_routes,
    plan_create,
    plan_rebridge,
    plan_rollback,
    plan_unbridge,
    session_client,
)

LINK_JSON: dict[str, Any] = {
    "ifindex": 2, "ifname": "eth0", "flags": ["BROADCAST", "MULTICAST", "UP", "LOWER_UP"],
    "mtu": 9000, "link_type": "ether", "address": "52:54:00:aa:bb:cc",
    "linkinfo": {"info_kind": "veth"},
    "addr_info": [
        {"family": "inet", "local": "192.168.233.2", "prefixlen": 24,
         "broadcast": "192.168.233.255", "scope": "global", "label": "eth0",
         "valid_life_time": FOREVER, "preferred_life_time": FOREVER},
        {"family": "inet", "local": "192.168.233.3", "prefixlen": 24, "scope": "global",
         "secondary": True, "label": "eth0:1", "valid_life_time": FOREVER,
         "preferred_life_time": FOREVER},
        {"family": "inet6", "local": "fd00:233::2", "prefixlen": 64, "scope": "global",
         "dynamic": True, "valid_life_time": 3600, "preferred_life_time": 1800},
        {"family": "inet6", "local": "fe80::5054:ff:feaa:bbcc", "prefixlen": 64,
         "scope": "link", "valid_life_time": FOREVER, "preferred_life_time": FOREVER},
    ]}
ROUTES4 = [
    {"dst": "default", "gateway": "192.168.233.1", "flags": []},
    {"dst": "10.99.0.0/16", "gateway": "192.168.233.1", "table": "100", "metric": 50,
     "protocol": "static", "flags": ["onlink"]},
    {"dst": "192.168.233.0/24", "protocol": "kernel", "scope": "link",
     "prefsrc": "192.168.233.2", "flags": []},
    {"type": "local", "dst": "192.168.233.2", "table": "local", "protocol": "kernel",
     "scope": "host", "prefsrc": "192.168.233.2", "flags": []},
]
ROUTES6 = [
    {"dst": "default", "gateway": "fe80::1", "protocol": "ra", "metric": 1024,
     "expires": 1700, "flags": [], "pref": "medium"},
    {"dst": "fe80::/64", "protocol": "kernel", "metric": 256, "flags": []},
    {"type": "multicast", "dst": "ff00::/8", "table": "local", "protocol": "kernel",
     "metric": 256, "flags": []},
]


def _snapshot() -> UplinkSnapshot:
    return UplinkSnapshot(link=parse_link(LINK_JSON), addresses=parse_addresses(LINK_JSON),
                          routes=parse_routes(ROUTES4, "inet", "eth0")
                          + parse_routes(ROUTES6, "inet6", "eth0"), taken_at=1000.0)


def _commands(steps: list[Any]) -> list[str]:
    return [str(step) for step in steps]


# -------------------------------------------------------------------------- parsing
def test_the_link_addresses_and_routes_are_read_from_ip_json() -> None:
    snap = _snapshot()
    assert snap.link == Link(name="eth0", kind="veth", link_type="ether",
                             mac="52:54:00:aa:bb:cc", mtu=9000, up=True, master=None)
    assert [str(a) for a in snap.addresses] == ["192.168.233.2/24", "192.168.233.3/24",
                                                "fd00:233::2/64",
                                                "fe80::5054:ff:feaa:bbcc/64"]
    # The IPv6 link-local address and the kernel's routes stay where they are.
    assert [str(a) for a in snap.movable_addresses] == ["192.168.233.2/24",
                                                        "192.168.233.3/24", "fd00:233::2/64"]
    assert [str(r) for r in snap.movable_routes] == [
        "default via 192.168.233.1", "10.99.0.0/16 via 192.168.233.1 table 100 metric 50",
        "default via fe80::1 metric 1024"]


def test_a_snapshot_survives_its_json_record() -> None:
    snap = _snapshot()
    assert UplinkSnapshot.from_dict(snap.to_dict()) == snap


def test_multipath_routes_and_point_to_point_peers_are_refused() -> None:
    with pytest.raises(UnsupportedError, match="several next hops"):
        parse_routes([{"dst": "default", "nexthops": [{"gateway": "192.168.233.1"}]}],
                     "inet", "eth0")
    peer = {**LINK_JSON, "addr_info": [{"family": "inet", "local": "10.0.0.1",
                                         "address": "10.0.0.2", "prefixlen": 32}]}
    with pytest.raises(UnsupportedError, match=r"point-to-point peer 10\.0\.0\.2"):
        parse_addresses(peer)


# ------------------------------------------------------------------------- refusals
def test_a_missing_enslaved_or_unsuitable_uplink_is_refused() -> None:
    link = _snapshot().link
    with pytest.raises(ValidationError, match="uplink 'eth9' does not exist"):
        check_uplink(None, "eth9", "br0", bridge_exists=False)
    with pytest.raises(StateError, match="already a port of 'br1'"):
        check_uplink(replace(link, master="br1"), "eth0", "br0", bridge_exists=False)
    with pytest.raises(ValidationError, match="itself a bridge"):
        check_uplink(replace(link, kind="bridge"), "eth0", "br0", bridge_exists=False)
    with pytest.raises(ValidationError, match="loopback link"):
        check_uplink(replace(link, link_type="loopback"), "eth0", "br0", bridge_exists=False)
    with pytest.raises(AlreadyExistsError, match="bridge 'br0' already exists"):
        check_uplink(link, "eth0", "br0", bridge_exists=True)
    with pytest.raises(ValidationError, match="both 'eth0'"):
        check_uplink(link, "eth0", "eth0", bridge_exists=False)
    assert check_uplink(link, "eth0", "br0", bridge_exists=False) is link


def test_the_session_client_comes_from_ssh_connection_then_ssh_client() -> None:
    assert session_client({"SSH_CONNECTION": "192.168.233.50 52114 192.168.233.2 22",
                           "SSH_CLIENT": "192.168.233.9 1 22"}) == "192.168.233.50"
    assert session_client({"SSH_CLIENT": "fd00:233::50 52114 22"}) == "fd00:233::50"
    assert session_client({"SSH_CONNECTION": "garbage"}) is None
    assert session_client({}) is None
    assert check_host(" 192.168.233.1 ") == "192.168.233.1"
    with pytest.raises(ValidationError, match=r"--verify gateway\.lan is not an IP address"):
        check_host("gateway.lan")


# ---------------------------------------------------------------------------- plans
def test_the_change_keeps_an_address_and_a_route_at_every_step() -> None:
    assert _commands(plan_create(_snapshot(), "br0")) == [
        "ip link add name br0 type bridge stp_state 0 forward_delay 0",
        "ip link set dev br0 address 52:54:00:aa:bb:cc",
        "ip link set dev eth0 master br0",
        "ip link set dev br0 mtu 9000",
        "ip link set dev br0 up",
        "ip -4 addr add 192.168.233.2/24 dev br0 broadcast 192.168.233.255",
        "ip -4 addr add 192.168.233.3/24 dev br0 label br0:1",
        "ip -6 addr add fd00:233::2/64 dev br0 valid_lft 3600 preferred_lft 1800 nodad",
        "ip -4 route replace default via 192.168.233.1 dev br0",
        "ip -4 route replace 10.99.0.0/16 via 192.168.233.1 dev br0 table 100 metric 50 "
        "proto static onlink",
        "ip -6 route replace default via fe80::1 dev br0 metric 1024 proto ra expires 1700",
        # Secondaries before their primary: deleting a primary deletes its secondaries.
        "ip -6 addr del fd00:233::2/64 dev eth0",
        "ip -4 addr del 192.168.233.3/24 dev eth0",
        "ip -4 addr del 192.168.233.2/24 dev eth0",
    ]


def _after_change(snap: UplinkSnapshot) -> UplinkSnapshot:
    """The uplink once the change is done: a port of br0, only its own kernel state."""
    return UplinkSnapshot(link=replace(snap.link, master="br0"),
                          addresses=tuple(a for a in snap.addresses if a.kernel_made),
                          routes=tuple(r for r in snap.routes if r.kernel_made
                                       and r.family == "inet6"))


def test_the_rollback_of_a_finished_change_restores_addresses_routes_then_the_link() -> None:
    snap = _snapshot()
    assert _commands(plan_rollback(snap, _after_change(snap), "br0", bridge_present=True,
                                   elapsed=600)) == [
        "ip -4 addr add 192.168.233.2/24 dev eth0 broadcast 192.168.233.255",
        "ip -4 addr add 192.168.233.3/24 dev eth0 label eth0:1",
        # The lifetimes left at the snapshot, less the time since.
        "ip -6 addr add fd00:233::2/64 dev eth0 valid_lft 3000 preferred_lft 1200 nodad",
        "ip -4 route replace default via 192.168.233.1 dev eth0",
        "ip -4 route replace 10.99.0.0/16 via 192.168.233.1 dev eth0 table 100 metric 50 "
        "proto static onlink",
        "ip -6 route replace default via fe80::1 dev eth0 metric 1024 proto ra expires 1700",
        "ip link set dev eth0 nomaster",
        "ip link del dev br0",
    ]


def test_the_rollback_of_a_change_that_stopped_early_only_undoes_what_happened() -> None:
    snap = _snapshot()
    # Crashed after creating the bridge and setting its MAC: nothing else to undo but
    # the bridge (routes are replaced in place, so re-asserting them changes nothing).
    steps = _commands(plan_rollback(snap, snap, "br0", bridge_present=True))
    assert not any("addr add" in s or "nomaster" in s for s in steps)
    assert steps[-1] == "ip link del dev br0"
    # Crashed before the bridge existed: no bridge step at all.
    assert not any("br0" in s for s in _commands(plan_rollback(snap, snap, "br0",
                                                               bridge_present=False)))


def test_the_rollback_restores_the_mtu_mac_and_link_state_that_changed() -> None:
    snap = _snapshot()
    changed = replace(snap, link=replace(snap.link, mtu=1500, mac="52:54:00:00:00:01",
                                         up=False))
    assert _commands(plan_rollback(snap, changed, "br0", bridge_present=False))[-3:] == [
        "ip link set dev eth0 mtu 9000",
        "ip link set dev eth0 address 52:54:00:aa:bb:cc",
        "ip link set dev eth0 up",
    ]


def test_differences_name_what_a_rollback_did_not_restore() -> None:
    snap = _snapshot()
    assert differences(snap, snap) == []
    # Lifetimes running down and the kernel's own routes do not count.
    aged = replace(snap, addresses=tuple(replace(a, valid=a.valid - 5)
                                         if a.valid != FOREVER else a
                                         for a in snap.addresses),
                   routes=tuple(r for r in snap.routes if not r.kernel_made))
    assert differences(snap, aged) == []
    after = _after_change(snap)
    found = differences(snap, after)
    assert "master None -> br0" in found
    assert "address 192.168.233.2/24 missing" in found
    assert "route default via 192.168.233.1 missing" in found
    extra = replace(snap, addresses=(*snap.addresses, Address("inet", "192.168.233.9", 24)),
                    routes=(*snap.routes, Route("inet", "10.1.0.0/16", "192.168.233.1")))
    assert differences(snap, extra) == ["address 192.168.233.9/24 added",
                                        "route 10.1.0.0/16 via 192.168.233.1 added"]


# ------------------------------------------------------------------ removing a bridge
def _bridged() -> BridgeSnapshot:
    """br0 over eth0 after a change: br0 has what eth0 had (labels renamed)."""
    snap = _snapshot()
    bridge = UplinkSnapshot(
        link=replace(snap.link, name="br0", kind="bridge"),
        addresses=tuple(replace(a, label="br0:1" if a.label == "eth0:1" else
                                ("br0" if a.label else None)) for a in snap.addresses),
        routes=snap.routes, taken_at=2000.0)
    port = UplinkSnapshot(link=replace(snap.link, master="br0"),
                          addresses=tuple(a for a in snap.addresses if a.kernel_made),
                          routes=())
    return BridgeSnapshot(bridge=bridge, port=port,
                          options={"stp_state": 0, "forward_delay": 0, "vlan_filtering": 0})


def test_only_a_bridge_with_its_uplink_alone_is_removed() -> None:
    link = _bridged().bridge.link
    with pytest.raises(ValidationError, match="bridge 'br9' does not exist"):
        check_bridge_removal(None, "br9", [])
    with pytest.raises(ValidationError, match="'eth0' is not a bridge"):
        check_bridge_removal(replace(link, kind=None), "eth0", [])
    with pytest.raises(StateError, match=r"2 ports \(eth0, vnet3\)"):
        check_bridge_removal(link, "br0", ["eth0", "vnet3"])
    with pytest.raises(StateError, match="no port"):
        check_bridge_removal(link, "br0", [])
    assert check_bridge_removal(link, "br0", ["eth0"]) == "eth0"
    assert BridgeSnapshot.from_dict(_bridged().to_dict()) == _bridged()


def test_unbridge_puts_addresses_then_routes_on_the_port_then_drops_the_bridge() -> None:
    assert _commands(plan_unbridge(_bridged())) == [
        "ip -4 addr add 192.168.233.2/24 dev eth0 broadcast 192.168.233.255",
        "ip -4 addr add 192.168.233.3/24 dev eth0 label eth0:1",
        "ip -6 addr add fd00:233::2/64 dev eth0 valid_lft 3600 preferred_lft 1800 nodad",
        "ip -4 route replace default via 192.168.233.1 dev eth0",
        "ip -4 route replace 10.99.0.0/16 via 192.168.233.1 dev eth0 table 100 metric 50 "
        "proto static onlink",
        "ip -6 route replace default via fe80::1 dev eth0 metric 1024 proto ra expires 1700",
        "ip link set dev eth0 nomaster",
        "ip link del dev br0",
    ]


def test_a_failed_unbridge_makes_the_same_bridge_again() -> None:
    snap = _bridged()
    port_after = replace(snap.port, link=replace(snap.port.link, master=None),
                         addresses=_snapshot().addresses)
    steps = _commands(plan_rebridge(snap, None, port_after))
    assert steps[:5] == [
        "ip link add name br0 type bridge stp_state 0 forward_delay 0",
        "ip link set dev br0 address 52:54:00:aa:bb:cc",
        "ip link set dev eth0 master br0",
        "ip link set dev br0 mtu 9000",
        "ip link set dev br0 up",
    ]
    assert "ip -4 addr add 192.168.233.3/24 dev br0 label br0:1" in steps
    assert "ip -4 route replace default via 192.168.233.1 dev br0" in steps
    # The addresses the removal gave the port go again (secondaries first); its own stay.
    assert steps[-3:] == ["ip -6 addr del fd00:233::2/64 dev eth0",
                          "ip -4 addr del 192.168.233.3/24 dev eth0",
                          "ip -4 addr del 192.168.233.2/24 dev eth0"]
    # Nothing happened yet: only the routes are asserted again (replace changes nothing).
    untouched = _commands(plan_rebridge(snap, snap.bridge, snap.port))
    assert all("route replace" in s for s in untouched)
