"""vNIC bandwidth and VLAN: parsing of --inbound/--outbound/--vlan/--trunk, the
``<bandwidth>``/``<vlan>`` XML they produce (checked against libvirt's schema with
virt-xml-validate in a whole domain), its round trip and its in-place edit."""

from __future__ import annotations

import subprocess
from pathlib import Path
from shutil import which as shutil_which

import pytest
from lxml import etree

from kvmops.errors import ValidationError
from kvmops.vm.domxml import (
    DiskSpec,
    DomainDocument,
    DomainSpec,
    NicSpec,
    Rate,
    Topology,
    Vlan,
    nic_xml,
    parse_nic,
)


@pytest.mark.parametrize("text, rate", [
    ("1000", Rate(1000)),
    ("1000,5000", Rate(1000, 5000)),
    ("1000,5000,1024", Rate(1000, 5000, 1024)),
    ("1000,,64", Rate(1000, None, 64)),
    ("80mbit", Rate(9765)),  # 80e6 bit/s / 8 / 1024, rounded down
])
def test_rate_parse(text: str, rate: Rate) -> None:
    assert Rate.parse(text, "outbound") == rate


def test_rate_units() -> None:
    assert Rate.parse("1gbit,2gbit,1m", "inbound") == Rate(122070, 244140, 1024)
    assert Rate.parse("100KiB/s", "inbound") == Rate(100)


@pytest.mark.parametrize("text, message", [
    ("", "invalid --outbound"),
    ("fast", "bad rate 'fast'"),
    ("-5", "bad rate"),
    ("0", "must be 1.."),
    ("8kbit", "is 0 KiB/s, must be 1.."),  # 1000 B/s rounds down to 0 KiB/s
    ("10,5", "peak 5 KiB/s is below the average 10"),
    ("10,20,lots", "bad burst"),
    ("10,20,0", "burst must be"),
    ("1,2,3,4", "invalid --outbound"),
    (",10", "invalid --outbound"),
])
def test_rate_refusals(text: str, message: str) -> None:
    with pytest.raises(ValidationError, match=message) as err:
        Rate.parse(text, "outbound")
    assert "\n" not in str(err.value)


def test_rate_text_round_trip() -> None:
    for rate in (Rate(10), Rate(10, 20), Rate(10, None, 5), Rate(10, 20, 5)):
        assert Rate.parse(rate.text(), "inbound") == rate


def test_vlan_parse_and_refusals() -> None:
    assert Vlan.parse("42", None) == Vlan((42,))
    assert Vlan.parse(None, "10,20", 20) == Vlan((10, 20), trunk=True, native=20)
    assert Vlan.parse(None, None) is None
    for args, message in [(("0", None), "invalid VLAN tag 0"),
                          (("4095", None), "invalid VLAN tag 4095"),
                          (("1,2", None), "exactly one tag"),
                          (("x", None), "invalid VLAN 'x'"),
                          (("5", "6"), "either --vlan or --trunk"),
                          ((None, "10,10"), "given twice"),
                          ((None, "10,20", 30), "native VLAN 30"),
                          (("10", None, 10), "--native needs --trunk")]:
        with pytest.raises(ValidationError, match=message):
            Vlan.parse(*args)  # type: ignore[arg-type]


def test_bandwidth_and_vlan_xml() -> None:
    nic = NicSpec(kind="bridge", source="ovsbr0", mac="52:54:00:00:00:07",
                  inbound=Rate(1000, 5000, 1024), outbound=Rate(128),
                  vlan=Vlan((10, 20), trunk=True, native=20), virtualport="openvswitch")
    xml = nic_xml(nic)
    el = etree.fromstring(xml)
    assert el.find("virtualport").get("type") == "openvswitch"
    assert dict(el.find("bandwidth/inbound").attrib) == {"average": "1000", "peak": "5000",
                                                         "burst": "1024"}
    assert dict(el.find("bandwidth/outbound").attrib) == {"average": "128"}
    vlan = el.find("vlan")
    assert vlan.get("trunk") == "yes"
    assert [(t.get("id"), t.get("nativeMode")) for t in vlan.findall("tag")] == [
        ("10", None), ("20", "untagged")]
    assert parse_nic(el) == nic


def test_access_vlan_xml_has_no_trunk() -> None:
    el = etree.fromstring(nic_xml(NicSpec(kind="network", source="ovsnet",
                                          vlan=Vlan((42,)))))
    assert el.find("vlan").get("trunk") is None
    assert [t.get("id") for t in el.findall("vlan/tag")] == ["42"]
    assert el.find("bandwidth") is None


def test_set_nic_qos_replaces_and_clears() -> None:
    spec = DomainSpec(name="t", memory_bytes=256 * 1024**2, vcpus=1, domain_type="qemu",
                      topology=Topology(1, 1, 1),
                      nics=[NicSpec(kind="network", source="n", mac="52:54:00:00:00:01",
                                    outbound=Rate(10))])
    doc = DomainDocument(spec.to_xml())
    xml = doc.set_nic_qos("52:54:00:00:00:01", Rate(5), Rate(20, 40), None)
    nic = parse_nic(etree.fromstring(xml))
    assert nic is not None and (nic.inbound, nic.outbound) == (Rate(5), Rate(20, 40))
    assert len(etree.fromstring(xml).findall("bandwidth")) == 1
    cleared = etree.fromstring(doc.set_nic_qos("52:54:00:00:00:01", None, None, None))
    assert cleared.find("bandwidth") is None and cleared.find("vlan") is None


def test_domain_with_bandwidth_and_vlan_passes_libvirt_schema(tmp_path: Path) -> None:
    spec = DomainSpec(
        name="bw", memory_bytes=256 * 1024**2, vcpus=1, domain_type="qemu",
        topology=Topology(1, 1, 1), disks=[DiskSpec(target="vda", source="/img/bw.qcow2")],
        nics=[NicSpec(kind="network", source="n", mac="52:54:00:00:00:01",
                      inbound=Rate(1000, 5000, 1024), outbound=Rate(128, 256, 256)),
              NicSpec(kind="bridge", source="ovsbr0", mac="52:54:00:00:00:02",
                      vlan=Vlan((10, 20), trunk=True, native=10), virtualport="openvswitch"),
              NicSpec(kind="network", source="ovsnet", mac="52:54:00:00:00:03",
                      vlan=Vlan((42,)))])
    path = tmp_path / "bw.xml"
    path.write_text(spec.to_xml())
    assert shutil_which("virt-xml-validate"), "virt-xml-validate (libvirt-clients) is missing"
    result = subprocess.run(["virt-xml-validate", str(path), "domain"], capture_output=True,
                            text=True, check=False)
    assert result.returncode == 0, result.stderr + result.stdout
