"""VM configuration through the REST API: vCPUs and memory in the persistent definition
(read back with ``kvmops vm info``), refusals as one line with a remedy, and the
preview of what an undefine with storage deletes (and then does delete)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from kvmops.devguest.build import GuestImage
from kvmops.host.connection import Host
from tests.conftest import SESSION_PREFIX, run_cli
from tests.integration.api_server import ApiServer
from tests.integration.conftest import remove_vm


@pytest.fixture
def shut_off_vm(tiny_guest: GuestImage, images_dir: Path, host: Host) -> Iterator[str]:
    name = f"{SESSION_PREFIX}api-config"
    created = run_cli("vm", "create", name, "--memory", "256M", "--vcpus", "1",
                      "--kernel", str(tiny_guest.kernel), "--initrd", str(tiny_guest.initrd),
                      "--cmdline", "console=ttyS0", "--disk", "size=64M", "--images-dir",
                      str(images_dir))
    try:
        assert created.code == 0, created.stderr
        yield name
    finally:
        remove_vm(host, name)


def _info(name: str) -> dict[str, object]:
    result = run_cli("vm", "info", name, "--json")
    assert result.code == 0, result.stderr
    info: dict[str, object] = json.loads(result.stdout)
    return info


def test_vcpus_memory_and_storage_preview(api: ApiServer, shut_off_vm: str,
                                          host: Host) -> None:
    name = shut_off_vm
    with api.client("operator") as operator, api.client("viewer") as viewer:
        done = operator.put(f"/vms/{name}/vcpus", json={"vcpus": 3})
        assert done.status_code == 200, done.text
        assert (done.json()["vcpus"], done.json()["applies"]) == (3, "now")
        done = operator.put(f"/vms/{name}/memory", json={"memory": 384})  # bare: MiB
        assert done.status_code == 200, done.text
        assert done.json()["memory"] == 384 * 1024**2
        info = _info(name)
        assert (info["vcpus"], info["memory"]) == (3, 384 * 1024**2)
        # back down: the maximum follows, not only the current value
        assert operator.put(f"/vms/{name}/vcpus", json={"vcpus": 1}).status_code == 200
        assert operator.put(f"/vms/{name}/memory", json={"memory": "200M"}).status_code == 200
        info = _info(name)
        assert (info["vcpus"], info["memory"]) == (1, 200 * 1024**2)

        refused = operator.put(f"/vms/{name}/memory", json={"memory": "4000G"})
        assert refused.status_code == 422, refused.text
        assert "more than this host has" in refused.json()["error"]
        assert "force" in refused.json()["error"]
        refused = operator.put(f"/vms/{name}/vcpus", json={"vcpus": 0})
        assert refused.status_code == 422
        assert viewer.put(f"/vms/{name}/vcpus", json={"vcpus": 2}).status_code == 403
        assert _info(name)["memory"] == 200 * 1024**2

        disk = str(_info(name)["disks"][0]["source"])  # type: ignore[index]
        preview = viewer.get(f"/vms/{name}/storage")
        assert preview.status_code == 200, preview.text
        assert preview.json() == {"vm": name, "remove": [disk], "kept": []}
        gone = operator.delete(f"/vms/{name}", params={"remove_storage": True})
        assert gone.status_code == 200, gone.text
        assert gone.json()["details"]["removed"] == [disk]
    assert not host.has_domain(name) and not Path(disk).exists()
