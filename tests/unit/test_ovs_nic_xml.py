"""A running VM's NIC on a bridge-mode libvirt network (host or Open vSwitch bridge): its
live XML says ``type='bridge'`` with ``<source network=...>``. kvmops reads it as the
network's NIC, and sends it back as ``type='network'`` when it changes the VLAN, the
bandwidth or the link (libvirt took ``type='bridge'`` for a move to a Linux bridge and
failed: "Unable to add bridge kvtX port vnet3: Operation not supported")."""

from __future__ import annotations

import re
from typing import Any

import pytest
from lxml import etree

from kvmops.errors import ValidationError
from kvmops.vm.domxml import DomainDocument, NicSpec, Vlan, nic_xml

MAC = "52:54:00:a7:d1:fe"
LIVE = f"""<domain type='qemu'><name>v</name><devices>
<interface type='bridge'>
  <mac address='{MAC}'/>
  <source network='ovsnet' portid='c6b01ae1-1359-44e7-a65a-a89690a354c6' bridge='kvtovs0'/>
  <vlan><tag id='10'/></vlan>
  <virtualport type='openvswitch'>
    <parameters interfaceid='0522775a-66d5-404a-bcee-102feb5e8b14'/>
  </virtualport>
  <target dev='vnet23'/><model type='virtio'/><alias name='net0'/>
</interface>
<interface type='bridge'>
  <mac address='52:54:00:00:00:02'/><source bridge='br0'/><model type='virtio'/>
</interface>
</devices></domain>"""


def test_live_nic_of_a_bridge_mode_network_reads_as_the_networks() -> None:
    first, second = DomainDocument(LIVE).nics()
    assert (first.kind, first.source, first.target_dev) == ("network", "ovsnet", "vnet23")
    assert first.vlan == Vlan((10,)) and first.virtualport == "openvswitch"
    assert (second.kind, second.source) == ("bridge", "br0")  # a plain bridge stays one


def test_updates_go_back_as_type_network() -> None:
    qos = etree.fromstring(DomainDocument(LIVE).set_nic_qos(MAC, None, None, Vlan((20,))))
    assert qos.get("type") == "network"
    assert qos.find("source").get("network") == "ovsnet"  # type: ignore[union-attr]
    assert qos.find("vlan/tag").get("id") == "20"  # type: ignore[union-attr]
    link = etree.fromstring(DomainDocument(LIVE).set_nic_link(MAC, "down"))
    assert (link.get("type"), link.find("link").get("state")) == (  # type: ignore[union-attr]
        "network", "down")
    plain = etree.fromstring(DomainDocument(LIVE).set_nic_link("52:54:00:00:00:02", "down"))
    assert plain.get("type") == "bridge"


def test_nic_option_takes_an_access_vlan() -> None:
    nic = NicSpec.parse("network=ovsnet,vlan=10,model=virtio")
    assert (nic.kind, nic.source, nic.vlan) == ("network", "ovsnet", Vlan((10,)))
    el = etree.fromstring(nic_xml(nic))
    assert el.find("vlan/tag").get("id") == "10"  # type: ignore[union-attr]
    assert NicSpec.parse("network=plain").vlan is None


@pytest.mark.parametrize(("text", "message"), [
    ("network=ovsnet,vlan=0", "invalid VLAN tag 0"),
    ("network=ovsnet,vlan=4095", "invalid VLAN tag 4095"),
    ("network=ovsnet,vlan=ten", "invalid VLAN 'ten'"),
    ("network=ovsnet,vlans=10", "unknown key(s) vlans"),
])
def test_nic_option_refuses_a_bad_vlan(text: str, message: str) -> None:
    with pytest.raises(ValidationError, match=re.escape(message)):
        NicSpec.parse(text)


def test_api_nic_body_takes_an_access_vlan() -> None:
    from pydantic import ValidationError as BodyError

    from kvmops.api.routes.vms import NicBody

    assert NicBody(network="ovsnet", vlan=20).spec().vlan == Vlan((20,))
    assert NicBody(network="ovsnet").spec().vlan is None
    with pytest.raises(BodyError):
        NicBody(network="ovsnet", vlan=4095)


def test_new_nic_on_an_ovs_bridge_gets_the_openvswitch_virtualport(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from kvmops.host import networks as host_networks
    from kvmops.services import nics

    host: Any = object()  # not asked: a bridge NIC is checked with ovs-vsctl alone
    monkeypatch.setattr(host_networks, "ovs_bridge_exists", lambda name: name == "kvtovs0")
    assert nics.nic_virtualport(host, "vm", "bridge", "kvtovs0", None) == "openvswitch"
    assert nics.nic_virtualport(host, "vm", "bridge", "kvtovs0", Vlan((10,))) == "openvswitch"
    assert nics.nic_virtualport(host, "vm", "bridge", "br0", None) is None
    with pytest.raises(ValidationError, match="bridge 'br0' is not an Open vSwitch bridge"):
        nics.nic_virtualport(host, "vm", "bridge", "br0", Vlan((10,)))
