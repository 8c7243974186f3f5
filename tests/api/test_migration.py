"""The migration routes without a second host: the preflight of a VM that is not there
is a 404 naming it; a body the route cannot take is a 422; a migration to a host the
server does not know is a job that fails naming the host (the API resolves host names
in its own database); viewers are refused."""

from __future__ import annotations

from pathlib import Path

from kvmops.devguest.build import GuestImage
from kvmops.host.connection import Host
from tests.conftest import SESSION_PREFIX, run_cli
from tests.integration.api_server import ApiServer, wait_job
from tests.integration.conftest import remove_vm

MISSING = f"{SESSION_PREFIX}api-mig-missing"


def test_migration_routes_refuse_what_they_cannot_do(api: ApiServer, tiny_guest: GuestImage,
                                                     images_dir: Path, host: Host) -> None:
    fresh_vm = f"{SESSION_PREFIX}api-mig"
    created = run_cli("vm", "create", fresh_vm, "--memory", "256M", "--vcpus", "1",
                      "--kernel", str(tiny_guest.kernel), "--initrd", str(tiny_guest.initrd),
                      "--cmdline", "console=ttyS0", "--disk", "size=64M",
                      "--images-dir", str(images_dir))
    assert created.code == 0, created.stderr
    try:
        _refusals(api, fresh_vm)
    finally:
        remove_vm(host, fresh_vm)


def _refusals(api: ApiServer, fresh_vm: str) -> None:
    with api.client("operator") as op, api.client("viewer") as viewer:
        missing = op.post(f"/vms/{MISSING}/migrate/preflight", json={"to": "local"})
        assert missing.status_code == 404, missing.text
        assert MISSING in missing.json()["error"]
        for body in ({"to": "-oX"}, {"to": "h2", "bandwidth_mib": 0}, {"to": "h2", "x": 1},
                     {}):
            assert op.post(f"/vms/{fresh_vm}/migrate", json=body).status_code == 422, body
        assert viewer.post(f"/vms/{fresh_vm}/migrate",
                           json={"to": "local"}).status_code == 403
        # The same host: the preflight says so (not a refusal: it changes nothing).
        same = op.post(f"/vms/{fresh_vm}/migrate/preflight", json={"to": "local"})
        assert same.status_code == 200, same.text
        assert "same-host" in [b["code"] for b in same.json()["blockers"]]
        started = op.post(f"/vms/{fresh_vm}/migrate", json={"to": "nosuchhost"})
        assert started.status_code == 202, started.text
        job = wait_job(op, started.json()["job_id"])
        assert job["state"] == "failed" and "host 'nosuchhost' not found" in job["error"]
