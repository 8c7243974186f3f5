"""``POST /api/v1/hosts/{name}/evacuate`` (operators and admins): a job whose result is
the evacuation report. Here only the plan (``dry_run``) of the server's own host, which
has no other host to go to: every running VM is reported with no room and nothing
moves. (The moves across two daemons: tests/integration/test_placement_evacuate.py.)"""

from __future__ import annotations

from tests.integration.api_server import ApiServer, wait_job


def test_evacuate_route_roles_refusals_and_a_dry_run_job(api: ApiServer) -> None:
    with api.client("viewer") as viewer, api.client("operator") as operator:
        assert viewer.post("/hosts/local/evacuate", json={"dry_run": True}
                           ).status_code == 403
        missing = operator.post("/hosts/nosuchhost/evacuate", json={"dry_run": True})
        assert missing.status_code == 404 and "nosuchhost" in missing.json()["error"]
        assert operator.post("/hosts/local/evacuate", json={"parallel": 0}
                             ).status_code == 422
        started = operator.post("/hosts/local/evacuate",
                                json={"dry_run": True, "parallel": 3})
        assert started.status_code == 202, started.text
        accepted = started.json()
        assert accepted["kind"] == "host.evacuate" and accepted["target"] == "local"
        job = wait_job(operator, accepted["job_id"])
        assert job["state"] == "succeeded", job
        report = job["result"]
        assert report["host"] == "local" and report["dry_run"] is True
        assert report["parallel"] == 3 and report["copy_storage"] is False
        for item in report["vms"]:
            assert item["status"] == "no-room" and item["target"] is None, item
            assert item["reason"].startswith(("no host has room: ",
                                              "no other host is known")), item
