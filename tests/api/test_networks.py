"""Networks over the API: a viewer lists and reads, an operator creates, stops, starts and
deletes; bad input is a 422 naming the value; the changes are in the audit log."""

from __future__ import annotations

import contextlib
import os
import pwd
from collections.abc import Iterator

import pytest

from kvmops.host import networks as host_networks
from kvmops.host.connection import Host
from tests.conftest import SESSION_PREFIX, run_cli
from tests.integration.api_server import ApiServer

NAME = f"{SESSION_PREFIX}apinet"
BODY = {"name": NAME, "mode": "isolated", "ipv4": "192.168.248.1/24",
        "dhcp": "192.168.248.10-192.168.248.50", "ipv6": "fd00:248::1/64"}


def remove_network(host: Host, name: str) -> None:
    """Stop and undefine a test network; never fails."""
    with contextlib.suppress(Exception):
        host_networks.stop(host, name)
    with contextlib.suppress(Exception):
        host_networks.undefine(host, name)


@pytest.fixture
def network_name(host: Host) -> Iterator[str]:
    yield NAME
    remove_network(host, NAME)


def test_network_life_cycle_with_role_checks(api: ApiServer, network_name: str) -> None:
    with api.client("viewer") as viewer, api.client("operator") as operator, \
            api.client("admin") as admin:
        assert viewer.get("/networks").status_code == 200
        refused = viewer.post("/networks", json=BODY)
        assert refused.status_code == 403, refused.text

        created = operator.post("/networks", json=BODY)
        assert created.status_code == 201, created.text
        net = created.json()
        assert (net["name"], net["mode"], net["active"]) == (network_name, "isolated", True)
        assert net["bridge"]  # libvirt picked one

        listed = {n["name"]: n for n in viewer.get("/networks").json()}
        assert listed[network_name]["active"] is True
        info = viewer.get(f"/networks/{network_name}").json()
        assert (info["ipv4"], info["dhcp"], info["ipv6"], info["ipv6_mode"]) == (
            "192.168.248.1/24", "192.168.248.10-192.168.248.50", "fd00:248::1/64", "slaac")
        assert info["used_by"] == []
        assert viewer.get(f"/networks/{network_name}/leases").json() == []

        again = operator.post("/networks", json=BODY)
        assert again.status_code == 409, again.text

        assert viewer.post(f"/networks/{network_name}/stop").status_code == 403
        stopped = operator.post(f"/networks/{network_name}/stop")
        assert stopped.status_code == 200 and stopped.json()["active"] is False
        started = operator.post(f"/networks/{network_name}/start")
        assert started.status_code == 200 and started.json()["active"] is True

        assert viewer.delete(f"/networks/{network_name}").status_code == 403
        deleted = operator.delete(f"/networks/{network_name}")
        assert deleted.status_code == 200, deleted.text
        assert viewer.get(f"/networks/{network_name}").status_code == 404
        entries = admin.get("/audit?limit=200").json()
    actions = {(e["user"], e["action"], e["status_code"]) for e in entries}
    assert ("op", "create_network", 201) in actions, actions
    assert ("op", "delete_network", 200) in actions
    assert ("view", "create_network", 403) in actions


@pytest.mark.parametrize(("change", "fragment"), [
    ({"dhcp": "192.168.247.10-192.168.247.50"}, "outside the subnet 192.168.248.0/24"),
    ({"ipv6": "fd00:248::1/56"}, "SLAAC needs a /64"),
    ({"bridge": "a-bridge-name-too-long"}, "at most 15"),
    ({"ipv6_mode": "dhcpv6-stateless", "ipv6": "fd00:248::1/56"}, "SLAAC needs a /64"),
])
def test_bad_network_is_refused_naming_the_value(api: ApiServer, network_name: str,
                                                 change: dict[str, str], fragment: str
                                                 ) -> None:
    with api.client("operator") as operator:
        response = operator.post("/networks", json={**BODY, **change})
        assert response.status_code in (422, 501), response.text
        assert fragment in response.text
        assert operator.get(f"/networks/{network_name}").status_code == 404


def test_cli_changes_are_audited_with_the_os_user(api: ApiServer, network_name: str) -> None:
    """``kvmops net`` commands write their audit rows (via cli) to the state database the
    server reads; a refused command is a row with its exit code."""
    env = {"KVMOPS_DB": api.db}
    created = run_cli("net", "create", network_name, "--ipv4", "192.168.248.1/24", env=env)
    assert created.code == 0, created.stderr
    refused = run_cli("net", "create", network_name, "--ipv4", "192.168.240.1/24", env=env)
    assert refused.code == 4, refused.stderr
    deleted = run_cli("net", "delete", network_name, env=env)
    assert deleted.code == 0, deleted.stderr
    with api.client("admin") as admin:
        rows = admin.get("/audit", params={"limit": 1000}).json()
    mine = [(r["user"], r["action"], r["status_code"], r["result"])
            for r in rows if r["via"] == "cli" and r["target"] == network_name]
    user = pwd.getpwuid(os.geteuid()).pw_name
    assert sorted(mine) == sorted([(user, "net.create", 0, "ok"),
                                   (user, "net.create", 4, "failed"),
                                   (user, "net.delete", 0, "ok")]), mine
