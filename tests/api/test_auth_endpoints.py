"""Every endpoint: 401 without credentials, 403 below its role, 422 naming the bad field,
403 for paths outside the allowed directories. (tests/api/test_authz_matrix.py checks
that every route of the route table has a role check.)"""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.integration.api_server import ApiServer

VM = "kvmops-test-nosuchvm"
REPO = "/var/lib/kvmops/test-backups/no-repo"

# (method, path, JSON body, lowest role allowed)
ENDPOINTS: list[tuple[str, str, Any, str]] = [
    ("GET", "/host", None, "viewer"),
    ("GET", "/host/doctor", None, "viewer"),
    ("GET", "/vms", None, "viewer"),
    ("GET", f"/vms/{VM}", None, "viewer"),
    ("POST", "/vms", {"name": VM, "memory": "64M"}, "operator"),
    ("POST", f"/vms/{VM}/start", {"paused": False}, "operator"),
    ("POST", f"/vms/{VM}/shutdown", {}, "operator"),
    ("POST", f"/vms/{VM}/destroy", None, "operator"),
    ("POST", f"/vms/{VM}/reboot", {}, "operator"),
    ("POST", f"/vms/{VM}/suspend", None, "operator"),
    ("POST", f"/vms/{VM}/resume", None, "operator"),
    ("DELETE", f"/vms/{VM}", None, "operator"),
    ("POST", f"/vms/{VM}/clone", {"new_name": VM + "-2"}, "operator"),
    ("GET", f"/vms/{VM}/xml", None, "viewer"),
    ("PUT", f"/vms/{VM}/autostart", {"enabled": False}, "operator"),
    ("GET", f"/vms/{VM}/disks", None, "viewer"),
    ("POST", f"/vms/{VM}/disks", {"size": "16M"}, "operator"),
    ("DELETE", f"/vms/{VM}/disks/vdb", None, "operator"),
    ("GET", f"/vms/{VM}/snapshots", None, "viewer"),
    ("POST", f"/vms/{VM}/snapshots", {"name": "s1"}, "operator"),
    ("POST", f"/vms/{VM}/snapshots/s1/revert", {}, "operator"),
    ("DELETE", f"/vms/{VM}/snapshots/s1", None, "operator"),
    ("GET", f"/vms/{VM}/guest/ping", None, "operator"),
    ("GET", f"/vms/{VM}/guest/info", None, "operator"),
    ("GET", f"/vms/{VM}/guest/interfaces", None, "operator"),
    ("POST", f"/vms/{VM}/guest/exec", {"argv": ["true"]}, "operator"),
    ("POST", f"/vms/{VM}/guest/push", {"path": "/tmp/x", "content_b64": "eA=="}, "operator"),
    ("POST", f"/vms/{VM}/guest/pull", {"path": "/tmp/x"}, "operator"),
    ("GET", f"/vms/{VM}/guest/ssh-keys?user=root", None, "operator"),
    ("POST", f"/vms/{VM}/guest/ssh-keys", {"user": "root", "keys": ["ssh-ed25519 AAAA k"]},
     "operator"),
    ("POST", f"/vms/{VM}/guest/ssh-keys/remove",
     {"user": "root", "keys": ["ssh-ed25519 AAAA k"]}, "operator"),
    ("POST", f"/vms/{VM}/guest/password", {"user": "root", "password": "x"}, "operator"),
    ("POST", f"/vms/{VM}/guest/fsfreeze", {}, "operator"),
    ("GET", f"/vms/{VM}/guest/fsfreeze", None, "operator"),
    ("POST", f"/vms/{VM}/guest/fsthaw", None, "operator"),
    ("POST", f"/vms/{VM}/qmp", {"execute": "query-status"}, "admin"),
    ("POST", f"/vms/{VM}/hmp", {"command": "info status"}, "admin"),
    ("POST", f"/vms/{VM}/backups", {"repo": REPO}, "operator"),
    ("GET", f"/vms/{VM}/backups?repo={REPO}", None, "viewer"),
    ("POST", f"/vms/{VM}/backups/restore", {"repo": REPO, "to": REPO + "/r"}, "operator"),
    ("POST", "/backups/verify", {"repo": REPO}, "operator"),
    ("POST", f"/vms/{VM}/backups/prune", {"repo": REPO, "keep_last": 1}, "operator"),
    ("GET", f"/backups/repo?repo={REPO}", None, "viewer"),
    ("POST", "/backups/repo/rekey", {"repo": REPO, "key_file": "k", "new_key_file": "n"},
     "admin"),
    ("POST", f"/vms/{VM}/backups/cancel", None, "operator"),
    ("GET", "/images/info?path=/var/lib/kvmops/none.qcow2", None, "viewer"),
    ("POST", "/images", {"path": "/var/lib/kvmops/test-images/n.qcow2", "size": "1M"},
     "operator"),
    ("POST", "/images/check", {"path": "/var/lib/kvmops/none.qcow2"}, "operator"),
    ("POST", "/images/convert", {"source": "/var/lib/kvmops/a.raw",
                                 "destination": "/var/lib/kvmops/b.qcow2"}, "operator"),
    ("GET", "/jobs", None, "viewer"),
    ("GET", "/jobs/nonexistent", None, "viewer"),
    ("POST", "/jobs/nonexistent/cancel", None, "operator"),
    ("GET", "/events", None, "viewer"),
    ("GET", "/me", None, "viewer"),
    ("POST", "/me/password", {"old_password": "x", "new_password": "yyyyyyyy"}, "viewer"),
    ("POST", "/logout", None, "viewer"),
    ("GET", "/users", None, "admin"),
    ("POST", "/users", {"name": "someone", "role": "viewer"}, "admin"),
    ("DELETE", "/users/nobody", None, "admin"),
    ("POST", "/users/nobody/tokens", None, "admin"),
    ("GET", "/audit", None, "admin"),
]
BELOW = {"operator": "viewer", "admin": "operator"}


def _id(entry: tuple[str, str, Any, str]) -> str:
    return f"{entry[0]} {entry[1]}"


def _send(client: httpx.Client, method: str, path: str, body: Any) -> httpx.Response:
    return client.request(method, path, json=body)


@pytest.mark.parametrize("entry", ENDPOINTS, ids=_id)
def test_unauthenticated_is_401(api: ApiServer, entry: tuple[str, str, Any, str]) -> None:
    method, path, body, _role = entry
    with api.client() as client:
        response = _send(client, method, path, body)
    assert response.status_code == 401, response.text
    assert response.json()["kind"] == "Unauthorized"


@pytest.mark.parametrize("entry", [e for e in ENDPOINTS if e[3] != "viewer"], ids=_id)
def test_below_role_is_403(api: ApiServer, entry: tuple[str, str, Any, str]) -> None:
    method, path, body, role = entry
    with api.client(BELOW[role]) as client:
        response = _send(client, method, path, body)
    assert response.status_code == 403, response.text
    assert response.json()["kind"] == "Forbidden"
    assert role in response.json()["error"]


@pytest.mark.parametrize("entry", [e for e in ENDPOINTS if f"/vms/{VM}" in e[1]], ids=_id)
def test_bad_vm_name_is_422(api: ApiServer, entry: tuple[str, str, Any, str]) -> None:
    method, path, body, _role = entry
    with api.client("admin") as client:
        response = _send(client, method, path.replace(VM, "-bad%20name"), body)
    assert response.status_code == 422, response.text
    assert response.json()["error"].startswith("name: invalid VM name"), response.text


BAD_BODIES: list[tuple[str, str, Any, str]] = [
    ("POST", "/vms", {"name": "ok", "memory": "12Q"}, "memory"),
    ("POST", "/vms", {"name": "-x", "memory": "64M"}, "name"),
    ("POST", "/vms", {"name": "ok", "memory": "64M", "mac": "01:00:00:00:00:01"}, "mac"),
    ("POST", "/vms", {"name": "ok", "memory": "64M", "disks": [{"size": "1G",
                                                                  "path": "/var/lib/kvmops/x"}]},
     "disks.0"),
    ("POST", "/vms", {"name": "ok", "memory": "64M", "vcpus": 0}, "vcpus"),
    ("POST", "/vms", {"name": "ok", "memory": "64M", "bogus": 1}, "bogus"),
    ("POST", f"/vms/{VM}/start", {"paused": "maybe"}, "paused"),
    ("POST", f"/vms/{VM}/shutdown", {"mode": "yank"}, "mode"),
    ("POST", f"/vms/{VM}/clone", {"new_name": "a b"}, "new_name"),
    ("POST", f"/vms/{VM}/clone", {"new_name": "ok", "images_dir": "tmp"}, "images_dir"),
    ("PUT", f"/vms/{VM}/autostart", {}, "enabled"),
    ("POST", f"/vms/{VM}/disks", {"size": "16M", "image": "/var/lib/kvmops/a"}, "request"),
    ("POST", f"/vms/{VM}/snapshots", {"name": "bad name"}, "name"),
    ("POST", f"/vms/{VM}/guest/exec", {"argv": []}, "argv"),
    ("POST", f"/vms/{VM}/guest/push", {"path": "/tmp/x", "content_b64": "!!"}, "content_b64"),
    ("POST", f"/vms/{VM}/guest/pull", {"path": "relative"}, "path"),
    ("POST", f"/vms/{VM}/guest/password", {"user": "bad user", "password": "x"}, "user"),
    ("POST", f"/vms/{VM}/qmp", {"execute": "bad cmd"}, "execute"),
    ("POST", f"/vms/{VM}/hmp", {"command": ""}, "command"),
    ("POST", f"/vms/{VM}/backups", {"repo": REPO, "speed": "fast"}, "speed"),
    ("POST", f"/vms/{VM}/backups", {"repo": "relative/dir"}, "repo"),
    ("POST", f"/vms/{VM}/backups/restore", {"repo": REPO, "to": REPO, "in_place": True},
     "request"),
    ("POST", "/backups/verify", {"repo": "/var/lib/\u0000"}, "repo"),
    ("POST", f"/vms/{VM}/backups/prune", {"repo": REPO}, "request"),
    ("GET", "/images/info?path=", None, "path"),
    ("POST", "/images", {"path": "/var/lib/kvmops/x.qcow2", "size": "-1"}, "size"),
    ("POST", "/images", {"path": "/var/lib/kvmops/images/x.qcow2", "size": "1000000T"},
     "size"),
    ("POST", "/vms", {"name": "ok", "memory": "99999999T"}, "memory"),
    ("POST", "/images/convert", {"source": "x.raw", "destination": "/var/lib/kvmops/b"},
     "source"),
    ("GET", "/jobs?limit=0", None, "limit"),
    ("GET", "/audit?limit=0", None, "limit"),
    ("POST", "/users", {"name": "x", "role": "god"}, "role"),
    ("POST", "/users", {"name": "x", "role": "viewer", "password": "short"}, "password"),
    ("POST", "/login", {"username": "admin"}, "password"),
]


@pytest.mark.parametrize("entry", BAD_BODIES, ids=lambda e: f"{e[0]} {e[1]} {e[3]}")
def test_invalid_input_is_422_naming_the_field(api: ApiServer,
                                               entry: tuple[str, str, Any, str]) -> None:
    method, path, body, field = entry
    with api.client("admin") as client:
        response = _send(client, method, path, body)
    assert response.status_code == 422, response.text
    data = response.json()
    assert data["kind"] == "ValidationError"
    assert data["error"].startswith(f"{field}: ") or f"{field}:" in data["error"], data


OUTSIDE: list[tuple[str, str, Any]] = [
    ("POST", "/vms", {"name": "kvmops-test-x", "memory": "64M", "kernel": "/etc/passwd"}),
    ("POST", "/vms", {"name": "kvmops-test-x", "memory": "64M",
                      "disks": [{"path": "/var/lib/kvmops/state/kvmops.db"}]}),
    ("POST", "/vms", {"name": "kvmops-test-x", "memory": "64M", "images_dir": "/tmp"}),
    ("POST", f"/vms/{VM}/clone", {"new_name": "ok", "images_dir": "/tmp"}),
    ("POST", f"/vms/{VM}/disks", {"image": "/etc/shadow"}),
    ("POST", f"/vms/{VM}/backups", {"repo": "/etc"}),
    ("GET", f"/vms/{VM}/backups?repo=/etc", None),
    ("POST", f"/vms/{VM}/backups/restore", {"repo": "/var/lib/kvmops/test-images",
                                            "in_place": True}),
    ("POST", "/backups/verify", {"repo": "/var/lib/kvmops/backups/../../../etc"}),
    ("GET", "/images/info?path=/etc/passwd", None),
    ("GET", "/images/info?path=/var/lib/kvmops/state/kvmops.db", None),
    ("POST", "/images", {"path": "/var/lib/kvmops/backups/x/backups/y/manifest.json",
                         "size": "1M"}),
    ("POST", "/images/check", {"path": "/etc/passwd"}),
    ("POST", "/images/convert", {"source": "/etc/passwd",
                                 "destination": "/var/lib/kvmops/images/b.qcow2"}),
]


@pytest.mark.parametrize("entry", OUTSIDE, ids=lambda e: f"{e[0]} {e[1]} {e[2]}")
def test_paths_outside_the_allowed_dirs_are_refused(api: ApiServer,
                                                    entry: tuple[str, str, Any]) -> None:
    method, path, body = entry
    with api.client("admin") as client:
        response = _send(client, method, path, body)
    assert response.status_code == 403, response.text
    assert response.json()["kind"] == "PathRefusedError", response.text
