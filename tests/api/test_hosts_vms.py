"""The API across hosts (issue 12): ``?host=NAME`` on the VM routes acts on that host,
``GET /api/v1/vms?host=all`` lists every host's VMs (each with its ``host``), a host
that does not answer is named in the X-Kvmops-Unreachable header while the others are
listed, an unknown host is a 404 and an unreachable one a 503, each with a one-line
error. The default ``GET /api/v1/vms`` keeps its keys and adds ``host``."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from kvmops.devguest.build import GuestImage
from tests.conftest import SESSION_PREFIX
from tests.integration.api_server import ApiServer, server_with_host
from tests.integration.nshost import SECOND_HOST_INDEX, NsHost, defined_vm, second_host

H2 = "hvh2"
DOWN = "hvdown"  # an address of this test's own /24 that nothing answers on
SILENT = "hvsilent"  # a socket that takes the connection and never replies
LIST_KEYS = {"name", "uuid", "state", "vcpus", "memory", "memory_current", "cpu_time_ns",
             "accelerator", "autostart", "persistent"}  # the GET /api/v1/vms contract


@pytest.fixture(scope="module")
def h2() -> Iterator[NsHost]:
    with second_host(f"{SESSION_PREFIX}hv") as host:
        yield host


@pytest.fixture(scope="module")
def server(h2: NsHost, workdir: Path) -> Iterator[ApiServer]:
    with server_with_host(f"sqlite:///{workdir / 'hosts-vms.db'}", workdir, H2,
                          h2.uri) as srv:
        yield srv


@pytest.fixture(scope="module")
def remote_vm(h2: NsHost, tiny_guest: GuestImage) -> Iterator[str]:
    """A VM defined on the second host only (started paused by the test: nothing boots)."""
    with defined_vm(h2.uri, f"{SESSION_PREFIX}hvvm", str(tiny_guest.kernel),
                    str(tiny_guest.initrd)) as name:
        yield name


def _one_line(response: object) -> str:
    error: str = response.json()["error"]  # type: ignore[attr-defined]
    assert "\n" not in error and error, error
    return error


def test_vm_routes_act_on_the_host_named_and_lists_span_hosts(
        server: ApiServer, remote_vm: str) -> None:
    with server.client("operator") as op:
        # the local list keeps its keys and says where each VM is
        local = op.get("/vms")
        assert local.status_code == 200, local.text
        assert all(set(vm) == LIST_KEYS | {"host"} and vm["host"] == "local"
                   for vm in local.json())
        assert remote_vm not in {vm["name"] for vm in local.json()}
        assert op.get(f"/vms/{remote_vm}").status_code == 404  # not on the local host

        there = op.get("/vms", params={"host": H2})
        assert there.status_code == 200, there.text
        mine = {vm["name"]: vm for vm in there.json()}[remote_vm]
        assert set(mine) == LIST_KEYS | {"host"}
        assert (mine["host"], mine["state"], mine["vcpus"], mine["memory"],
                mine["persistent"], mine["accelerator"]) == (
                    H2, "shut off", 1, 64 * 1024**2, True, "tcg")
        assert mine["memory_current"] is None and mine["cpu_time_ns"] is None

        # an action through ?host=, seen by the VM's info and the lists
        started = op.post(f"/vms/{remote_vm}/start", params={"host": H2},
                          json={"paused": True})
        assert started.status_code == 200, started.text
        info = op.get(f"/vms/{remote_vm}", params={"host": H2})
        assert info.status_code == 200, info.text
        assert info.json()["state"] == "paused"
        every = op.get("/vms", params={"host": "all"})
        assert every.status_code == 200, every.text
        assert "X-Kvmops-Unreachable" not in every.headers
        listed = {(vm["host"], vm["name"]): vm for vm in every.json()}
        assert listed[(H2, remote_vm)]["state"] == "paused"
        assert listed[(H2, remote_vm)]["memory_current"] == 64 * 1024**2
        assert {(vm["host"], vm["name"]) for vm in local.json()} <= set(listed)
        assert op.post(f"/vms/{remote_vm}/destroy", params={"host": H2}).status_code == 200
        after = {vm["name"]: vm for vm in op.get("/vms", params={"host": H2}).json()}
        assert after[remote_vm]["state"] == "shut off"

        # an unknown host: 404 with a one-line error, for lists and actions alike
        for response in (op.get("/vms", params={"host": "nosuch"}),
                         op.post(f"/vms/{remote_vm}/start", params={"host": "nosuch"}),
                         op.get(f"/vms/{remote_vm}/snapshots", params={"host": "nosuch"})):
            assert response.status_code == 404, response.text
            assert _one_line(response) == ("host 'nosuch' not found; see 'kvmops host list' "
                                           "for the known hosts")
        assert op.get("/vms", params={"host": "-bad"}).status_code == 422


def test_an_unreachable_host_is_named_and_the_others_are_listed(
        server: ApiServer, remote_vm: str) -> None:
    down_uri = f"qemu+tcp://10.250.{SECOND_HOST_INDEX}.9/system"
    with socket.socket() as silent, server.client("admin") as admin:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        silent_uri = f"qemu+tcp://127.0.0.1:{silent.getsockname()[1]}/system"
        for name, uri in ((DOWN, down_uri), (SILENT, silent_uri)):
            added = admin.post("/hosts", json={"name": name, "uri": uri, "check": False})
            assert added.status_code == 201, added.text
        try:
            every = admin.get("/vms", params={"host": "all"})
            assert every.status_code == 200, every.text
            gone = dict(part.split(": ", 1)
                        for part in every.headers["X-Kvmops-Unreachable"].split("; "))
            assert set(gone) == {DOWN, SILENT}, gone
            assert gone[SILENT] == "did not answer within 3 s"
            hosts = {vm["host"] for vm in every.json()}
            assert H2 in hosts and DOWN not in hosts and SILENT not in hosts
            assert remote_vm in {vm["name"] for vm in every.json() if vm["host"] == H2}
            # the next list remembers them: answered at once, asked again aside
            again = admin.get("/vms", params={"host": "all"})
            assert again.status_code == 200, again.text
            gone = dict(part.split(": ", 1)
                        for part in again.headers["X-Kvmops-Unreachable"].split("; "))
            assert set(gone) == {DOWN, SILENT}, gone
            assert all(why.startswith("not answering since ") for why in gone.values()), gone
            assert H2 in {vm["host"] for vm in again.json()}

            for name in (DOWN, SILENT):
                one = admin.get("/vms", params={"host": name})
                assert one.status_code == 503, one.text
                assert _one_line(one).startswith(f"host '{name}' ("), one.text
                action = admin.post(f"/vms/{remote_vm}/start", params={"host": name})
                assert action.status_code == 503, action.text
        finally:
            for name in (DOWN, SILENT):
                assert admin.delete(f"/hosts/{name}").status_code == 200
