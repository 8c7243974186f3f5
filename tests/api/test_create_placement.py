"""``POST /api/v1/vms?host=auto`` (issue 12, placement from the API as ``vm create --host
auto`` from the CLI): with a network that exists only on the second host, a VM joining
it is placed there; the answer names the host and every host's verdict (the local host
rejected for the missing network). A VM with a new disk is a job whose first note and
result carry the placement. Nowhere to go is a 409 with one line naming each host's
reason, audited as a refusal, nothing created. Nothing boots: the VMs are only defined.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import libvirt
import pytest

from kvmops.config import settings
from kvmops.devguest.build import GuestImage
from tests.conftest import SESSION_PREFIX
from tests.integration.api_server import ApiServer, server_with_host, wait_job
from tests.integration.nshost import NsHost, second_host

H2 = "cph2"
NETWORK = f"{SESSION_PREFIX}cpnet"
VM = f"{SESSION_PREFIX}cpauto"
VM_DISK = f"{SESSION_PREFIX}cpdisk"


@pytest.fixture(scope="module")
def h2() -> Iterator[NsHost]:
    with second_host(f"{SESSION_PREFIX}cp") as host:
        made = host.run_cli("net", "create", NETWORK, "--mode", "isolated",
                            "--ipv4", "192.168.237.1/24")
        assert made.code == 0, made.stderr
        yield host  # its VMs and network go with it


@pytest.fixture(scope="module")
def server(h2: NsHost, workdir: Path) -> Iterator[ApiServer]:
    guest_dir = settings().cache_dir / "guest"
    # The machine's libvirtd runs other tests' guests: the vCPU limit must not depend
    # on how many run right now (as in tests/integration/test_placement_evacuate.py).
    with server_with_host(f"sqlite:///{workdir / 'create-placement.db'}", workdir, H2,
                          h2.uri, "--allow-dir", str(guest_dir), "--allow-dir",
                          h2.images_dir, extra_env={"KVMOPS_VCPU_RATIO": "64"}) as srv:
        yield srv


def _body(name: str, guest: GuestImage, network: str) -> dict[str, object]:
    return {"name": name, "memory": "128M", "vcpus": 1, "kernel": str(guest.kernel),
            "initrd": str(guest.initrd), "network": network}


def _defined(uri: str | None) -> list[str]:
    conn = libvirt.open(uri)
    try:
        return [dom.name() for dom in conn.listAllDomains()]
    finally:
        conn.close()


def _check_placement(placement: dict[str, object]) -> None:
    assert placement["host"] == H2, placement
    assert str(placement["reason"]).startswith("the only host that fits: "), placement
    assert f"network {NETWORK} present" in str(placement["reason"]), placement
    verdicts = {v["host"]: v for v in placement["verdicts"]}  # type: ignore[attr-defined]
    assert verdicts[H2]["fits"] is True, verdicts
    assert verdicts["local"]["fits"] is False, verdicts
    assert verdicts["local"]["reason"] == f"network {NETWORK} not present", verdicts


def test_create_with_host_auto_places_reports_and_refuses(
        server: ApiServer, h2: NsHost, tiny_guest: GuestImage) -> None:
    with server.client("operator") as op, server.client("admin") as admin:
        # no disk: defined at once, the answer says where and why
        created = op.post("/vms", params={"host": "auto"}, json=_body(VM, tiny_guest, NETWORK))
        assert created.status_code == 201, created.text
        vm = created.json()
        assert (vm["name"], vm["host"], vm["state"]) == (VM, H2, "shut off"), vm
        _check_placement(vm["placement"])
        assert VM in _defined(h2.uri)
        assert VM not in _defined(settings().uri)
        got = op.get(f"/vms/{VM}", params={"host": H2})
        assert got.status_code == 200 and got.json()["nics"][0]["source"] == NETWORK

        # a new disk: a job; its first note and its result carry the placement
        body = _body(VM_DISK, tiny_guest, NETWORK) | {
            "disks": [{"size": "16M"}], "images_dir": h2.images_dir}
        started = op.post("/vms", params={"host": "auto"}, json=body)
        assert started.status_code == 202, started.text
        job = wait_job(op, started.json()["job_id"])
        assert job["state"] == "succeeded", job
        assert job["result"]["host"] == H2
        _check_placement(job["result"]["placement"])
        assert VM_DISK in _defined(h2.uri)

        # nowhere to go: 409, one line naming every host's reason; audited; nothing made
        refused = op.post("/vms", params={"host": "auto"},
                          json=_body(f"{VM}x", tiny_guest, "nowhere-net"))
        assert refused.status_code == 409, refused.text
        error = refused.json()["error"]
        assert "\n" not in error
        for part in (f"no host can take VM '{VM}x'",
                     "local: rejected: network nowhere-net not present",
                     f"{H2}: rejected: network nowhere-net not present"):
            assert part in error, error
        rows = admin.get("/audit", params={"user": "op", "limit": 20}).json()
        row = next(r for r in rows if r["target"] == f"{VM}x")
        assert (row["method"], row["status_code"], row["result"]) == ("POST", 409, "failed")
        assert f"{VM}x" not in _defined(h2.uri) + _defined(settings().uri)

        # the local host and ?host=NAME keep working as before (VmInfo keys, plus host)
        unknown = op.post("/vms", params={"host": "nosuchhost"},
                          json=_body(f"{VM}y", tiny_guest, NETWORK))
        assert unknown.status_code == 404 and "nosuchhost" in unknown.json()["error"]
