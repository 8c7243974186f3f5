"""SR-IOV over the API: a server started with KVMOPS_SYSFS_ROOT reads the simulated
tree; viewers read, operators allocate and release VFs (a NIC change), admins create and
delete pools, set VF counts and reconcile; refusals are one-line errors; the calls are
in the audit log. The VM is defined, never booted (a VF NIC cannot start here)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kvmops.devguest.build import GuestImage
from kvmops.host.connection import Host
from tests.conftest import SESSION_PREFIX, run_cli
from tests.integration.api_server import ApiServer, add_users, start_server
from tests.integration.conftest import remove_vm

_BUS = 0x80 + os.getpid() % 0x60  # apart from tests/integration/test_sriov.py's buses


@pytest.fixture
def sriov_api(tmp_path: Path) -> Iterator[tuple[ApiServer, Path]]:
    root = tmp_path / "sys"
    for pf, vfs, driver, bus in (("kvtapi0", 2, "ixgbe", _BUS), ("kvtapi1", 4, "i40e",
                                                                   _BUS + 1)):
        made = run_cli("dev", "fake-sriov", str(root), "--pf", pf, "--vfs", str(vfs),
                       "--driver", driver, "--bus", str(bus))
        assert made.code == 0, made.stderr
    server = start_server(f"sqlite:///{tmp_path / 'api.db'}", tmp_path,
                          extra_env={"KVMOPS_SYSFS_ROOT": str(root)})
    try:
        add_users(server)
        yield server, root
    finally:
        server.stop()


@pytest.fixture
def vm(host: Host, tiny_guest: GuestImage, images_dir: Path) -> Iterator[str]:
    """A defined, shut-off VM (never started)."""
    name = f"{SESSION_PREFIX}api-sriov"
    try:
        made = run_cli("vm", "create", name, "--memory", "256M", "--vcpus", "1", "--kernel",
                       str(tiny_guest.kernel), "--initrd", str(tiny_guest.initrd),
                       "--cmdline", "console=ttyS0", "--disk", "size=64M", "--images-dir",
                       str(images_dir))
        assert made.code == 0, made.stderr
        yield name
    finally:
        remove_vm(host, name)


def _state(root: Path, pci: str) -> dict[str, Any]:
    path = root / "devices" / "pci0000:00" / pci / "kvmops-vf-state.json"
    state: dict[str, Any] = json.loads(path.read_text())
    return state


def test_vf_pools_over_the_api(sriov_api: tuple[ApiServer, Path], vm: str) -> None:
    api, root = sriov_api
    with api.client("viewer") as viewer, api.client("operator") as operator, \
            api.client("admin") as admin:
        pfs = viewer.get("/sriov/pfs")
        assert pfs.status_code == 200, pfs.text
        assert {(p["name"], p["driver"], p["numvfs"]) for p in pfs.json()} == {
            ("kvtapi0", "ixgbe", 2), ("kvtapi1", "i40e", 4)}
        body = {"name": "apipool", "pfs": ["kvtapi0"]}
        assert viewer.post("/sriov/pools", json=body).status_code == 403
        assert operator.post("/sriov/pools", json=body).status_code == 403
        created = admin.post("/sriov/pools", json=body)
        assert created.status_code == 201, created.text
        assert (created.json()["vfs"], created.json()["free"]) == (2, 2)
        assert admin.post("/sriov/pools", json=body).status_code == 409
        assert operator.put("/sriov/pfs/kvtapi1/vfs", json={"count": 2}).status_code == 403
        counted = admin.put("/sriov/pfs/kvtapi1/vfs", json={"count": 2})
        assert counted.status_code == 200 and counted.json()["numvfs"] == 2, counted.text
        assert admin.post("/sriov/pools", json={"name": "x710", "pfs": ["kvtapi1"]}
                          ).status_code == 201

        nics = f"/vms/{vm}/nics"
        add = {"vf_pool": "apipool", "vlan": 12, "rate": 100, "live": False}
        assert viewer.post(nics, json=add).status_code == 403
        slow = operator.post(nics, json={**add, "rate": 5})
        assert slow.status_code == 422, slow.text
        assert "outside the ixgbe range 11..10000" in slow.json()["error"]
        i40e = operator.post(nics, json={"vf_pool": "x710", "rate": 30, "live": False})
        assert i40e.status_code == 422 and "i40e range 50..10000" in i40e.json()["error"]
        both = operator.post(nics, json={**add, "network": "default"})
        assert both.status_code == 422, both.text
        first = operator.post(nics, json=add)
        assert first.status_code == 201, first.text
        second = operator.post(nics, json={**add, "spoofchk": False, "trust": True})
        assert second.status_code == 201, second.text
        third = operator.post(nics, json=add)
        assert third.status_code == 409, third.text
        assert "PF 'kvtapi0' has 2 VFs" in third.json()["error"]
        assert "\n" not in third.json()["error"]

        nic = second.json()
        assert (nic["type"], nic["pool"], nic["pf"], nic["vlan"]) == (
            "hostdev", "apipool", "kvtapi0", "12")
        assert _state(root, nic["source"]) == {"mac": nic["mac"], "vlan": 12,
                                               "max_tx_rate": 100, "spoofchk": False,
                                               "trust": True}
        listed = viewer.get(nics).json()
        assert {(n["mac"], n["pool"], n["vf"]) for n in listed if n["type"] == "hostdev"} == {
            (first.json()["mac"], "apipool", first.json()["vf"]),
            (nic["mac"], "apipool", nic["vf"])}
        info = viewer.get("/sriov/pools/apipool").json()
        assert (info["allocated"], info["free"]) == (2, 0)
        assert {a["vm"] for a in info["allocations"]} == {vm}
        assert admin.delete("/sriov/pools/apipool").status_code == 409
        xml = viewer.get("/sriov/pools/x710/xml", params={"method": "network"})
        assert xml.status_code == 200 and '<pf dev="kvtapi1"/>' in xml.json()["xml"]

        removed = operator.delete(f"{nics}/{nic['mac']}", params={"live": "false"})
        assert removed.status_code == 200, removed.text
        assert _state(root, nic["source"])["mac"] == "00:00:00:00:00:00"
        assert _state(root, nic["source"])["max_tx_rate"] == 0
        assert viewer.get("/sriov/pools/apipool").json()["free"] == 1

        assert operator.post("/sriov/reconcile").status_code == 403
        report = admin.post("/sriov/reconcile")
        assert report.status_code == 200, report.text
        assert report.json()["released"] == []  # the VM still holds its VF

        # Undefining the VM over the API frees (and resets) its last VF.
        kept = first.json()
        assert _state(root, kept["source"])["mac"] == kept["mac"]
        undefined = operator.delete(f"/vms/{vm}")
        assert undefined.status_code == 200, undefined.text
        assert _state(root, kept["source"])["mac"] == "00:00:00:00:00:00"
        assert viewer.get("/sriov/pools/apipool").json()["allocated"] == 0
        assert admin.delete("/sriov/pools/apipool").status_code == 200

        entries = admin.get("/audit", params={"limit": 500}).json()
    actions = {(e["user"], e["action"], e["status_code"]) for e in entries}
    for expected in (("admin", "create_pool", 201), ("op", "create_pool", 403),
                     ("op", "add_nic", 201), ("op", "add_nic", 409),
                     ("admin", "set_vfs", 200), ("op", "remove_nic", 200),
                     ("admin", "reconcile", 200)):
        assert expected in actions, (expected, actions)
