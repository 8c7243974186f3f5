"""The network model: checks with one-line refusals, the XML it builds (element by
element, and valid against libvirt's schema when virt-xml-validate is installed), and
libvirt's XML read back."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from lxml import etree

from kvmops.errors import ValidationError
from kvmops.network.model import NetworkInfo, NetworkSpec, check_overlaps, parse_network

ISOLATED: dict[str, Any] = {"name": "lab", "ipv4": "192.168.251.1/24",
                             "dhcp": "192.168.251.10-192.168.251.50", "ipv6": "fd00:251::1/64"}


def _root(spec: NetworkSpec) -> etree._Element:
    return etree.fromstring(spec.to_xml().encode())


def test_isolated_network_xml() -> None:
    root = _root(NetworkSpec(**ISOLATED))
    assert root.tag == "network" and root.findtext("name") == "lab"
    assert root.find("forward") is None  # isolated: nothing forwarded
    bridge = root.find("bridge")
    assert bridge is not None and bridge.get("name") is None  # libvirt picks virbrN
    v4, v6 = root.findall("ip")
    assert (v4.get("family"), v4.get("address"), v4.get("prefix")) == (
        "ipv4", "192.168.251.1", "24")
    rng = v4.find("dhcp/range")
    assert rng is not None and (rng.get("start"), rng.get("end")) == (
        "192.168.251.10", "192.168.251.50")
    assert (v6.get("family"), v6.get("address"), v6.get("prefix")) == (
        "ipv6", "fd00:251::1", "64")
    assert v6.find("dhcp") is None  # SLAAC: router advertisements only


def test_stateful_dhcpv6_has_a_range_in_the_ipv6_ip() -> None:
    spec = NetworkSpec(name="n6", mode="nat", ipv6="fd00:252::1/64",
                       ipv6_mode="dhcpv6-stateful", forward_dev="eth0")
    root = _root(spec)
    forward = root.find("forward")
    assert forward is not None
    assert (forward.get("mode"), forward.get("dev")) == ("nat", "eth0")
    rng = root.find("ip[@family='ipv6']/dhcp/range")
    assert rng is not None and (rng.get("start"), rng.get("end")) == (
        "fd00:252::1000", "fd00:252::1fff")
    given = NetworkSpec(name="n6", ipv6="fd00:252::1/64", ipv6_mode="dhcpv6-stateful",
                        dhcp6="fd00:252::10-fd00:252::20")
    rng = _root(given).find("ip[@family='ipv6']/dhcp/range")
    assert rng is not None and rng.get("start") == "fd00:252::10"


def test_route_bridge_and_ovs_modes() -> None:
    route = _root(NetworkSpec(name="r", mode="route", ipv4="192.168.254.1/24",
                              bridge="virbr-r"))
    assert route.find("forward").get("mode") == "route"  # type: ignore[union-attr]
    assert route.find("bridge").get("name") == "virbr-r"  # type: ignore[union-attr]
    bridge = _root(NetworkSpec(name="b", mode="bridge", bridge="br0"))
    assert bridge.find("forward").get("mode") == "bridge"  # type: ignore[union-attr]
    assert dict(bridge.find("bridge").attrib) == {"name": "br0"}  # type: ignore[union-attr]
    assert bridge.find("virtualport") is None and bridge.find("ip") is None
    ovs = _root(NetworkSpec(name="o", mode="ovs", bridge="ovsbr0"))
    assert ovs.find("virtualport").get("type") == "openvswitch"  # type: ignore[union-attr]


@pytest.mark.parametrize(("kwargs", "fragments"), [
    (dict(dhcp="192.168.252.10-192.168.252.50"), ["192.168.252.10-192.168.252.50",
                                                  "outside the subnet 192.168.251.0/24"]),
    (dict(dhcp="192.168.251.1-192.168.251.9"), ["own address 192.168.251.1"]),
    (dict(dhcp="192.168.251.0-192.168.251.9"), ["network address"]),
    (dict(dhcp="192.168.251.50-192.168.251.10"), ["ends before it starts"]),
    (dict(dhcp="192.168.251.10"), ["not a range START-END"]),
    (dict(ipv4="192.168.251.0/24"), ["192.168.251.0/24", "network address"]),
    (dict(ipv4="192.168.251.1"), ["no prefix length"]),
    (dict(ipv4="10.1.2.3/4", dhcp=None), ["10.1.2.3/4", "/8 to /30"]),
    (dict(ipv4="192.168.251.1/31", dhcp=None), ["no room for guests"]),
    (dict(ipv4="fd00::1/64"), ["not an IPv4"]),
    (dict(ipv6="fd00:251::1/56"), ["SLAAC needs a /64", "/56"]),
    (dict(ipv6="fe80::1/64"), ["fe80::1/64"]),
    (dict(bridge="a-very-long-bridge"), ["a-very-long-bridge", "18 characters",
                                         "at most 15"]),
    (dict(bridge="br/0"), ["invalid bridge name 'br/0'"]),
    (dict(mode="vepa"), ["unknown network mode 'vepa'"]),
    (dict(name="-bad"), ["invalid network name '-bad'"]),
    (dict(forward_dev="eth0"), ["--forward-dev is only for --mode nat or route"]),
    (dict(ipv6="fd00:251::1/64", dhcp6="fd00:251::10-fd00:251::20"), ["not for --ipv6-mode "
                                                                      "slaac"]),
    (dict(ipv6="fd00:251::1/64", ipv6_mode="dhcpv6-stateful",
          dhcp6="fd00:999::10-fd00:999::20"), ["outside the subnet fd00:251::/64"]),
])
def test_bad_input_is_refused_in_one_line(kwargs: dict[str, str], fragments: list[str]
                                          ) -> None:
    with pytest.raises(ValidationError) as caught:
        NetworkSpec(**{**ISOLATED, **kwargs})
    text = str(caught.value)
    assert "\n" not in text and ";" in text  # what is wrong; what to do
    for fragment in fragments:
        assert fragment in text, (fragment, text)


def test_options_that_need_another() -> None:
    with pytest.raises(ValidationError, match="--dhcp needs --ipv4"):
        NetworkSpec(name="x", dhcp="192.168.251.10-192.168.251.50")
    with pytest.raises(ValidationError, match="--ipv6-mode needs --ipv6"):
        NetworkSpec(name="x", ipv6_mode="slaac")
    with pytest.raises(ValidationError, match="needs --bridge NAME"):
        NetworkSpec(name="x", mode="bridge")
    with pytest.raises(ValidationError, match="--ipv4 is not for a --mode bridge network"):
        NetworkSpec(name="x", mode="bridge", bridge="br0", ipv4="192.168.251.1/24")


def test_stateless_dhcpv6_adds_one_dnsmasq_option_from_the_prefix() -> None:
    """libvirt's XML has no stateless-DHCPv6 element: one dnsmasq option carries it,
    written from the validated prefix only; it needs a /64 and takes no range."""
    spec = NetworkSpec(name="x", ipv6="fd00:251::1/64", ipv6_mode="dhcpv6-stateless")
    root = spec.to_element()
    ns = "{http://libvirt.org/schemas/network/dnsmasq/1.0}"
    assert [o.get("value") for o in root.iter(f"{ns}option")] == [
        "dhcp-range=fd00:251::,ra-stateless,64"]
    assert root.find("ip[@family='ipv6']/dhcp") is None
    assert parse_network(spec.to_xml()).ipv6_mode == "dhcpv6-stateless"
    with pytest.raises(ValidationError, match="SLAAC needs a /64"):
        NetworkSpec(name="x", ipv6="fd00:251::1/80", ipv6_mode="dhcpv6-stateless")
    with pytest.raises(ValidationError, match="not for --ipv6-mode dhcpv6-stateless"):
        NetworkSpec(name="x", ipv6="fd00:251::1/64", ipv6_mode="dhcpv6-stateless",
                    dhcp6="fd00:251::10-fd00:251::20")
    # An option naming another prefix (someone's hand edit) is not read as stateless.
    other = spec.to_xml().replace("fd00:251::,", "fd00:999::,")
    assert parse_network(other).ipv6_mode == "slaac"


def test_overlap_with_another_network_names_it() -> None:
    others = [NetworkInfo(name="default", mode="nat", bridge="virbr0",
                          ipv4="192.168.122.1/24"),
              NetworkInfo(name="lab6", mode="isolated", bridge="virbr7",
                          ipv6="fd00:240::1/64")]
    with pytest.raises(ValidationError) as caught:
        check_overlaps(NetworkSpec(name="n", ipv4="192.168.122.129/25"), others)
    assert "overlaps network 'default' (192.168.122.0/24)" in str(caught.value)
    with pytest.raises(ValidationError, match="overlaps network 'lab6'"):
        check_overlaps(NetworkSpec(name="n", ipv6="fd00:240::2/64"), others)
    with pytest.raises(ValidationError, match="bridge 'virbr7' belongs to network 'lab6'"):
        check_overlaps(NetworkSpec(name="n", bridge="virbr7"), others)
    check_overlaps(NetworkSpec(**ISOLATED), others)  # no overlap: no error


@pytest.mark.parametrize("spec", [
    NetworkSpec(**ISOLATED),
    NetworkSpec(name="nat1", mode="nat", ipv4="192.168.250.1/24",
                dhcp="192.168.250.2-192.168.250.254", ipv6="fd00:250::1/64",
                ipv6_mode="dhcpv6-stateful", forward_dev="eth0"),
    NetworkSpec(name="r1", mode="route", bridge="virbr9", ipv6="fd00:249::1/64"),
    NetworkSpec(name="s1", ipv4="192.168.248.1/24", ipv6="fd00:248::1/64",
                ipv6_mode="dhcpv6-stateless"),
    NetworkSpec(name="b1", mode="bridge", bridge="br0"),
    NetworkSpec(name="o1", mode="ovs", bridge="ovsbr0"),
], ids=lambda s: s.name)
def test_xml_round_trips_through_parse(spec: NetworkSpec) -> None:
    info = parse_network(spec.to_xml())
    assert (info.name, info.mode, info.ipv4, info.dhcp, info.ipv6, info.forward_dev) == (
        spec.name, spec.mode, spec.ipv4, spec.dhcp, spec.ipv6, spec.forward_dev)
    assert info.ipv6_mode == spec.effective_ipv6_mode
    if spec.mode != "isolated":
        assert info.bridge == spec.bridge


def test_parse_reads_libvirts_own_forms() -> None:
    xml = """<network><name>default</name><uuid>u-1</uuid><forward mode='nat'>
      <nat><port start='1024' end='65535'/></nat></forward>
      <bridge name='virbr0' stp='on' delay='0'/><mac address='52:54:00:0a:0b:0c'/>
      <ip address='192.168.122.1' netmask='255.255.255.0'><dhcp>
        <range start='192.168.122.2' end='192.168.122.254'/></dhcp></ip>
      <ip family='ipv6' address='2001:db8:ca2:2::1' prefix='64'/></network>"""
    info = parse_network(xml, active=True, autostart=True)
    assert (info.mode, info.bridge, info.ipv4, info.dhcp, info.uuid) == (
        "nat", "virbr0", "192.168.122.1/24", "192.168.122.2-192.168.122.254", "u-1")
    assert (info.ipv6, info.ipv6_mode, info.active, info.autostart) == (
        "2001:db8:ca2:2::1/64", "slaac", True, True)
    hostdev = parse_network("<network><name>vf</name><forward mode='hostdev'>"
                            "<pf dev='eth1'/></forward></network>")
    assert hostdev.mode == "hostdev" and hostdev.ipv4 is None
    assert parse_network("<network><name>x</name><forward/></network>").mode == "nat"


@pytest.mark.skipif(shutil.which("virt-xml-validate") is None,
                    reason="virt-xml-validate (libvirt-clients) is not installed")
@pytest.mark.parametrize("spec", [
    NetworkSpec(**ISOLATED),
    NetworkSpec(name="nat1", mode="nat", ipv4="192.168.250.1/24",
                dhcp="192.168.250.2-192.168.250.254", ipv6="fd00:250::1/64",
                ipv6_mode="dhcpv6-stateful", forward_dev="eth0"),
    NetworkSpec(name="r1", mode="route", bridge="virbr9", ipv6="fd00:249::1/64"),
    NetworkSpec(name="s1", ipv4="192.168.248.1/24", ipv6="fd00:248::1/64",
                ipv6_mode="dhcpv6-stateless"),
    NetworkSpec(name="b1", mode="bridge", bridge="br0"),
    NetworkSpec(name="o1", mode="ovs", bridge="ovsbr0"),
], ids=lambda s: s.name)
def test_generated_xml_is_valid_for_libvirts_schema(spec: NetworkSpec, tmp_path: Path
                                                     ) -> None:
    path = tmp_path / f"{spec.name}.xml"
    path.write_text(spec.to_xml())
    result = subprocess.run(["virt-xml-validate", str(path), "network"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
