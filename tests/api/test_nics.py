"""vNICs over the API on a defined, shut-off VM (its definition changes, no guest boot):
a VM created with ``nics`` lists them, an operator adds one, sets its link down and
removes it; a viewer reads but is refused changes (403); a bad MAC is a 422 naming it;
the changes are in the audit log.

The network carries SESSION_PREFIX and 192.168.237.0/24 (no other test uses it)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest

from kvmops.devguest.build import GuestImage
from kvmops.host import networks as host_networks
from kvmops.host.connection import Host
from tests.conftest import SESSION_PREFIX, run_cli
from tests.integration.api_server import ApiServer
from tests.integration.conftest import remove_vm

NET = f"{SESSION_PREFIX}apinic"
VM = f"{SESSION_PREFIX}api-nics"
FIRST_MAC, ADDED_MAC = "52:54:00:a7:37:01", "52:54:00:a7:37:02"


@pytest.fixture
def network(host: Host) -> Iterator[str]:
    try:
        created = run_cli("net", "create", NET, "--mode", "isolated",
                          "--ipv4", "192.168.237.1/24")
        assert created.code == 0, created.stderr
        yield NET
    finally:
        with contextlib.suppress(Exception):
            host_networks.stop(host, NET)
        with contextlib.suppress(Exception):
            host_networks.undefine(host, NET)


@pytest.fixture
def vm_name(host: Host, network: str) -> Iterator[str]:
    try:
        yield VM
    finally:
        remove_vm(host, VM)


def test_nic_life_cycle_with_role_checks(api: ApiServer, tiny_guest: GuestImage,
                                         network: str, vm_name: str) -> None:
    body = {"name": vm_name, "memory": "256M", "kernel": str(tiny_guest.kernel),
            "initrd": str(tiny_guest.initrd), "cmdline": "console=ttyS0",
            "nics": [{"network": network, "model": "e1000", "mac": FIRST_MAC}]}
    with api.client("viewer") as viewer, api.client("operator") as operator, \
            api.client("admin") as admin:
        created = operator.post("/vms", json=body)
        assert created.status_code == 201, created.text
        listed = viewer.get(f"/vms/{vm_name}/nics")
        assert listed.status_code == 200, listed.text
        assert [(n["mac"], n["type"], n["source"], n["model"], n["link"], n["config"])
                for n in listed.json()] == [(FIRST_MAC, "network", network, "e1000", "up",
                                             True)]

        add = {"network": network, "mac": ADDED_MAC, "live": False}
        refused = viewer.post(f"/vms/{vm_name}/nics", json=add)
        assert refused.status_code == 403, refused.text
        added = operator.post(f"/vms/{vm_name}/nics", json=add)
        assert added.status_code == 201, added.text
        nic = added.json()
        assert (nic["mac"], nic["model"], nic["live"], nic["config"]) == (
            ADDED_MAC, "virtio", False, True)
        again = operator.post(f"/vms/{vm_name}/nics", json=add)
        assert again.status_code == 409, again.text
        assert ADDED_MAC in again.json()["error"]

        link = f"/vms/{vm_name}/nics/{ADDED_MAC}/link"
        assert viewer.post(link, json={"state": "down"}).status_code == 403
        down = operator.post(link, json={"state": "down"})
        assert down.status_code == 200, down.text
        assert down.json()["link"] == "down"
        links = {n["mac"]: n["link"] for n in viewer.get(f"/vms/{vm_name}/nics").json()}
        assert links == {FIRST_MAC: "up", ADDED_MAC: "down"}

        nic_path = f"/vms/{vm_name}/nics/{ADDED_MAC}"
        limit = {"outbound": "10mbit,20mbit,256", "inbound": "500"}
        assert viewer.patch(nic_path, json=limit).status_code == 403
        limited = operator.patch(nic_path, json=limit)
        assert limited.status_code == 200, limited.text
        assert (limited.json()["outbound"], limited.json()["inbound"]) == ("1220,2441,256",
                                                                           "500")
        kept = operator.patch(nic_path, json={"inbound": None})  # outbound left as it was
        assert kept.status_code == 200, kept.text
        assert (kept.json()["outbound"], kept.json()["inbound"]) == ("1220,2441,256", None)
        vlan = operator.patch(nic_path, json={"vlan": 10})
        assert vlan.status_code == 422, vlan.text
        assert "not an Open vSwitch or SR-IOV network" in vlan.json()["error"]
        bad_rate = operator.patch(nic_path, json={"outbound": "10mbit,1mbit"})
        assert bad_rate.status_code == 422 and "below the average" in bad_rate.json()["error"]
        assert viewer.get(f"/vms/{vm_name}/nics").json()[1]["outbound"] == "1220,2441,256"

        assert viewer.delete(f"/vms/{vm_name}/nics/{ADDED_MAC}").status_code == 403
        removed = operator.delete(f"/vms/{vm_name}/nics/{ADDED_MAC}")
        assert removed.status_code == 200, removed.text
        assert removed.json() == {"mac": ADDED_MAC, "live": False, "config": True}
        macs = [n["mac"] for n in viewer.get(f"/vms/{vm_name}/nics").json()]
        assert macs == [FIRST_MAC]
        gone = operator.delete(f"/vms/{vm_name}/nics/{ADDED_MAC}")
        assert gone.status_code == 404 and ADDED_MAC in gone.json()["error"], gone.text
        entries = admin.get("/audit", params={"limit": 500}).json()
    actions = {(e["user"], e["action"], e["status_code"]) for e in entries
               if vm_name in (e.get("path") or "")}
    for expected in (("op", "add_nic", 201), ("op", "set_nic_link", 200),
                     ("op", "remove_nic", 200), ("view", "add_nic", 403),
                     ("op", "update_nic", 200), ("view", "update_nic", 403),
                     ("view", "remove_nic", 403), ("op", "add_nic", 409)):
        assert expected in actions, (expected, actions)


@pytest.mark.parametrize(("method", "path", "payload", "bad"), [
    ("post", "/nics", {"network": NET, "mac": "52:54:00:zz:00:01"}, "52:54:00:zz:00:01"),
    ("post", "/nics", {"network": NET, "mac": "01:00:5e:00:00:01"}, "01:00:5e:00:00:01"),
    ("delete", "/nics/52:54:00:00:00:0g", None, "52:54:00:00:00:0g"),
    ("post", "/nics/52-54-00-00-00-01x/link", {"state": "up"}, "52-54-00-00-00-01x"),
])
def test_bad_mac_is_a_422_naming_it(api: ApiServer, method: str, path: str,
                                    payload: dict[str, str] | None, bad: str) -> None:
    """Refused before anything is looked up: the VM need not exist."""
    vm = f"{SESSION_PREFIX}api-nics-none"
    with api.client("operator") as operator:
        kwargs = {"json": payload} if payload is not None else {}
        response = operator.request(method.upper(), f"/vms/{vm}{path}", **kwargs)
    assert response.status_code == 422, response.text
    assert bad in response.json()["error"]


def test_create_with_two_sources_in_one_nic_is_refused(api: ApiServer) -> None:
    body = {"name": f"{SESSION_PREFIX}api-nics-bad", "memory": "256M",
            "nics": [{"network": "a", "bridge": "b"}]}
    with api.client("operator") as operator:
        response = operator.post("/vms", json=body)
    assert response.status_code == 422, response.text
    assert "exactly one of network and bridge" in response.json()["error"]
