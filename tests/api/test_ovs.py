"""Open vSwitch over the API: an operator creates an ``ovs`` network with its bridge
(``create_bridge``; the datapath the kernel allows unless ``datapath`` says), creates a VM
whose NIC carries ``"vlan": 10`` on it, and deleting the network removes the bridge. Bad
input is a one-line 422. The network, bridge and VM carry this session's prefixes and are
removed even when the test fails."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import pytest

from kvmops.devguest.build import GuestImage
from kvmops.host import networks as host_networks
from kvmops.host import ovs
from kvmops.host.connection import Host
from kvmops.vm.domxml import DomainDocument, Vlan
from tests.conftest import SESSION_PREFIX
from tests.integration.api_server import ApiServer
from tests.integration.conftest import remove_vm

NETWORK = f"{SESSION_PREFIX}apiovs"
VM = f"{SESSION_PREFIX}apiovs-vm"
BRIDGE = f"kvt{os.getpid() % 0xFFFFFF:x}a"


@pytest.fixture
def leftovers(host: Host) -> Iterator[None]:
    try:
        yield
    finally:
        remove_vm(host, VM)
        with contextlib.suppress(Exception):
            host_networks.stop(host, NETWORK)
        with contextlib.suppress(Exception):
            host_networks.undefine(host, NETWORK)
        with contextlib.suppress(Exception):
            ovs.delete_bridge(BRIDGE)


def test_ovs_network_with_its_bridge_and_a_vlan_nic(api: ApiServer, host: Host,
                                                    tiny_guest: GuestImage,
                                                    leftovers: None) -> None:
    body = {"name": NETWORK, "mode": "ovs", "bridge": BRIDGE, "create_bridge": True}
    with api.client("viewer") as viewer, api.client("operator") as operator:
        assert viewer.post("/networks", json=body).status_code == 403
        for bad, fragment in (({**body, "datapath": "dpdk"}, "datapath"),
                              ({**body, "mode": "isolated"}, "only for --mode ovs")):
            refused = operator.post("/networks", json=bad)
            assert refused.status_code == 422, refused.text
            assert fragment in refused.text
        assert BRIDGE not in ovs.bridges()

        created = operator.post("/networks", json=body)
        assert created.status_code == 201, created.text
        assert (created.json()["mode"], created.json()["bridge"]) == ("ovs", BRIDGE)
        assert ovs.bridge_datapath(BRIDGE) == ovs.default_datapath()
        again = operator.post("/networks", json={**body, "name": f"{NETWORK}2"})
        assert again.status_code == 409, again.text

        vm = {"name": VM, "memory": "128M", "kernel": str(tiny_guest.kernel),
              "initrd": str(tiny_guest.initrd), "nics": [{"network": NETWORK, "vlan": 10}]}
        bad_vlan = operator.post("/vms", json={**vm, "nics": [{"network": NETWORK,
                                                               "vlan": 4095}]})
        assert bad_vlan.status_code == 422, bad_vlan.text
        made = operator.post("/vms", json=vm)
        assert made.status_code == 201, made.text
        nics = viewer.get(f"/vms/{VM}/nics").json()
        assert [(n["source"], n["vlan"]) for n in nics] == [(NETWORK, "10")]
        defined = DomainDocument(host.lookup(VM).xml(inactive=True)).nics()
        assert [n.vlan for n in defined] == [Vlan((10,))]
        remove_vm(host, VM)

        deleted = operator.delete(f"/networks/{NETWORK}")
        assert deleted.status_code == 200, deleted.text
        assert BRIDGE not in ovs.bridges()
