"""Hosts over the API (``/api/v1/hosts``): viewers list and read, only admins add and
remove; a host that does not answer is listed unreachable with the reason next to the
reachable local one; refusals are one-line errors; the changes are in the audit log.
(The second daemon is used by tests/integration/test_second_host.py alone: only one can
exist at a time.)"""

from __future__ import annotations

import socket

from tests.integration.api_server import ApiServer

CLOSED = "qemu+tcp://127.0.0.1:1/system"  # nothing listens on port 1


def test_hosts_roles_listing_and_audit(api: ApiServer) -> None:
    name = "apihost-closed"
    with api.client("viewer") as viewer, api.client("operator") as operator, \
            api.client("admin") as admin:
        body = {"name": name, "uri": CLOSED, "check": False, "labels": {"rack": "r9"}}
        assert viewer.post("/hosts", json=body).status_code == 403
        assert operator.post("/hosts", json=body).status_code == 403
        checked = admin.post("/hosts", json={**body, "check": True})
        assert checked.status_code == 503, checked.text
        error = checked.json()["error"]
        assert f"host '{name}'" in error and "Connection refused" in error
        assert "\n" not in error
        bad = admin.post("/hosts", json={**body, "uri": "qemu+ssh://-oProxyCommand=id/system"})
        assert bad.status_code == 422 and "not an option" in bad.json()["error"], bad.text
        try:
            added = admin.post("/hosts", json=body)
            assert added.status_code == 201, added.text
            assert added.json()["added_by"] == "admin"
            assert admin.post("/hosts", json=body).status_code == 409

            listed = viewer.get("/hosts", params={"timeout": 5})
            assert listed.status_code == 200, listed.text
            hosts = {h["name"]: h for h in listed.json()}
            assert hosts["local"]["reachable"] is True and hosts["local"]["vms_defined"] >= 0
            assert hosts[name]["uri"] == CLOSED and hosts[name]["reachable"] is False
            assert "Connection refused" in hosts[name]["error"]
            assert hosts[name]["labels"] == {"rack": "r9"}

            info = viewer.get(f"/hosts/{name}")
            assert info.status_code == 200 and info.json()["reachable"] is False, info.text
            local = viewer.get("/hosts/local").json()
            assert local["reachable"] is True and local["accelerator"] in ("kvm", "tcg")
            assert local["libvirt_version"] and local["memory_total"] > 0
            assert viewer.get("/hosts/nosuchhost").status_code == 404
            assert viewer.delete(f"/hosts/{name}").status_code == 403
            assert operator.delete(f"/hosts/{name}").status_code == 403
            assert admin.delete("/hosts/local").status_code == 409
        finally:
            removed = admin.delete(f"/hosts/{name}")
        assert removed.status_code == 200, removed.text
        assert name not in [h["name"] for h in viewer.get("/hosts").json()]
        assert admin.delete(f"/hosts/{name}").status_code == 404

        entries = admin.get("/audit", params={"limit": 500}).json()
    actions = {(e["user"], e["action"], e["target"], e["status_code"]) for e in entries}
    for expected in (("admin", "add_host", name, 201), ("admin", "add_host", name, 503),
                     ("op", "remove_host", name, 403), ("admin", "remove_host", name, 200),
                     ("admin", "remove_host", "local", 409)):
        assert expected in actions, (expected, actions)
    # Refused before the body is read: who and what, without the target.
    assert ("view", "add_host", 403) in {(u, a, c) for u, a, _t, c in actions}


def test_a_host_that_never_answers_is_listed_by_the_deadline(api: ApiServer) -> None:
    """A socket that takes connections and never replies (the kernel's listen backlog):
    libvirt would wait on it; the list reports it at the deadline, with the local host
    reachable next to it, and ``host info`` does the same."""
    name = "apihost-silent"
    with socket.socket() as silent, api.client("admin") as admin:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        uri = f"qemu+tcp://127.0.0.1:{silent.getsockname()[1]}/system"
        added = admin.post("/hosts", json={"name": name, "uri": uri, "check": False})
        assert added.status_code == 201, added.text
        try:
            listed = admin.get("/hosts", params={"timeout": 5})
            assert listed.status_code == 200, listed.text
            hosts = {h["name"]: h for h in listed.json()}
            assert hosts["local"]["reachable"] is True
            assert hosts[name]["reachable"] is False
            assert hosts[name]["error"] == "did not answer within 5 s"
        finally:
            assert admin.delete(f"/hosts/{name}").status_code == 200
