"""VM life cycle through the real CLI, libvirtd and QEMU, with the tiny guest."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path

from kvmops.errors import (
    HostUnavailableError,
    NotFoundError,
    OperationTimeoutError,
    StateError,
    ValidationError,
)
from kvmops.host.connection import Host
from tests.conftest import SESSION_PREFIX, assert_one_line_error, run_cli


def vm_info(name: str) -> dict[str, object]:
    result = run_cli("vm", "info", name, "--json")
    assert result.code == 0, result.stderr
    data = json.loads(result.stdout)
    assert isinstance(data, dict)
    return data


def wait_state(name: str, state: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if vm_info(name)["state"] == state:
            return
        time.sleep(0.3)
    raise AssertionError(f"{name} never reached {state}: {vm_info(name)['state']}")


def test_create_start_agent_shutdown_undefine(vm_factory: Callable[..., str]) -> None:
    name = vm_factory()
    info = vm_info(name)
    assert info["state"] == "shut off"
    assert info["accelerator"] in ("kvm", "tcg")
    assert info["agent"] is False
    disk = Path(str(info["disks"][0]["source"]))  # type: ignore[index]
    assert disk.is_file()

    assert run_cli("vm", "start", name, "--wait-agent", "90").code == 0
    info = vm_info(name)
    assert info["state"] == "running"
    assert info["agent"] is True

    result = run_cli("vm", "shutdown", name, "--agent", "--timeout", "60")
    assert result.code == 0, result.stderr
    assert vm_info(name)["state"] == "shut off"

    result = run_cli("vm", "undefine", name, "--remove-storage")
    assert result.code == 0, result.stderr
    assert not disk.exists()
    assert_one_line_error(run_cli("vm", "info", name), NotFoundError.exit_code, name)


def test_paused_start_then_resume(fresh_vm: str) -> None:
    assert run_cli("vm", "start", fresh_vm, "--paused").code == 0
    assert vm_info(fresh_vm)["state"] == "paused"
    assert run_cli("vm", "resume", fresh_vm).code == 0
    assert vm_info(fresh_vm)["state"] == "running"
    assert run_cli("vm", "suspend", fresh_vm).code == 0
    assert vm_info(fresh_vm)["state"] == "paused"
    assert run_cli("vm", "destroy", fresh_vm).code == 0
    assert vm_info(fresh_vm)["state"] == "shut off"


def test_list_json_is_valid(running_vm: str) -> None:
    result = run_cli("vm", "list", "--json")
    assert result.code == 0, result.stderr
    vms = json.loads(result.stdout)
    assert isinstance(vms, list)
    mine = [vm for vm in vms if vm["name"] == running_vm]
    assert len(mine) == 1
    assert mine[0]["state"] == "running"
    assert {"name", "state", "vcpus", "memory", "accelerator"} <= set(mine[0])


def test_acpi_shutdown_ignored_by_guest_times_out(running_vm: str) -> None:
    # The tiny guest has no acpid: the power-button request is ignored.
    result = run_cli("vm", "shutdown", running_vm, "--timeout", "3")
    assert_one_line_error(result, OperationTimeoutError.exit_code, running_vm, "ACPI",
                          "--agent", "destroy")
    assert vm_info(running_vm)["state"] == "running"


def test_dumpxml_and_autostart(running_vm: str) -> None:
    result = run_cli("vm", "dumpxml", running_vm)
    assert result.code == 0
    assert f"<name>{running_vm}</name>" in result.stdout
    assert "org.qemu.guest_agent.0" in result.stdout
    assert "<acpi/>" in result.stdout
    assert run_cli("vm", "autostart", running_vm, "on").code == 0
    assert vm_info(running_vm)["autostart"] is True
    assert run_cli("vm", "autostart", running_vm, "off").code == 0
    assert vm_info(running_vm)["autostart"] is False


def test_topology_and_definition(vm_factory: Callable[..., str], host: Host) -> None:
    name = vm_factory("--vcpus", "4", "--sockets", "2", "--cores", "2")
    info = vm_info(name)
    assert info["vcpus"] == 4
    assert info["topology"] == {"sockets": 2, "cores": 2, "threads": 1}
    xml = host.domain(name).XMLDesc(0)
    assert "cache='none'" in xml
    assert "<listen type='address' address='127.0.0.1'/>" in xml
    result = run_cli("vm", "create", f"{SESSION_PREFIX}topo", "--vcpus", "3", "--sockets", "2")
    assert_one_line_error(result, ValidationError.exit_code, "topology")


def test_clone(vm_factory: Callable[..., str], host: Host, images_dir: Path) -> None:
    source = vm_factory()
    clone = f"{source}-clone"
    try:
        result = run_cli("vm", "clone", source, clone, "--images-dir", str(images_dir))
        assert result.code == 0, result.stderr
        a, b = vm_info(source), vm_info(clone)
        assert a["uuid"] != b["uuid"]
        src_disk = a["disks"][0]["source"]  # type: ignore[index]
        clone_disk = b["disks"][0]["source"]  # type: ignore[index]
        assert src_disk != clone_disk and Path(str(clone_disk)).is_file()
    finally:
        run_cli("vm", "undefine", clone, "--remove-storage")


def test_stale_managed_save_is_explained(vm_factory: Callable[..., str], host: Host) -> None:
    name = vm_factory()
    assert run_cli("vm", "start", name).code == 0  # a memory state to save needs no boot
    domain = host.domain(name)
    domain.managedSave(0)
    assert domain.hasManagedSaveImage(0)
    save = Path(f"/var/lib/libvirt/qemu/save/{name}.save")
    assert save.exists()
    # Corrupt the saved memory state after libvirt's header: QEMU cannot load it.
    size = save.stat().st_size
    with open(save, "r+b") as fh:
        fh.seek(size // 2)
        fh.write(os.urandom(1024 * 1024))
        fh.truncate(size // 2 + 1024 * 1024)
    result = run_cli("vm", "start", name)
    assert_one_line_error(result, StateError.exit_code, name, "managed-save",
                          "--discard-managed-save")
    result = run_cli("vm", "start", name, "--discard-managed-save", "--wait-agent", "90")
    assert result.code == 0, result.stderr
    assert vm_info(name)["agent"] is True
    run_cli("vm", "destroy", name)


# ----------------------------------------------------------------- failures
def test_unknown_vm() -> None:
    for action in ("info", "start", "destroy", "undefine"):
        result = run_cli("vm", action, f"{SESSION_PREFIX}does-not-exist")
        assert_one_line_error(result, NotFoundError.exit_code, "does-not-exist", "not found")


def test_libvirtd_not_reachable() -> None:
    result = run_cli("vm", "list", "--connect", "qemu+unix:///system?socket=/nonexistent.sock")
    assert_one_line_error(result, HostUnavailableError.exit_code, "cannot connect", "libvirtd")


def test_bad_size() -> None:
    result = run_cli("vm", "create", f"{SESSION_PREFIX}bad", "--memory", "256M",
                     "--disk", "size=12XB")
    assert_one_line_error(result, ValidationError.exit_code, "12XB")
    result = run_cli("vm", "create", f"{SESSION_PREFIX}bad", "--memory", "12XB")
    assert_one_line_error(result, ValidationError.exit_code, "12XB", "memory")


def test_invalid_name() -> None:
    result = run_cli("vm", "create", "bad name/with slash", "--memory", "256M")
    assert_one_line_error(result, ValidationError.exit_code, "invalid VM name")


def test_missing_disk_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.qcow2"
    result = run_cli("vm", "create", f"{SESSION_PREFIX}nodisk", "--memory", "256M",
                     "--disk", f"path={missing}")
    assert_one_line_error(result, NotFoundError.exit_code, str(missing))
    result = run_cli("vm", "create", f"{SESSION_PREFIX}nokernel", "--memory", "256M",
                     "--kernel", str(missing))
    assert_one_line_error(result, NotFoundError.exit_code, str(missing), "kernel")


def test_wrong_state(fresh_vm: str) -> None:
    assert_one_line_error(run_cli("vm", "resume", fresh_vm), StateError.exit_code,
                          fresh_vm, "shut off")
    assert_one_line_error(run_cli("vm", "shutdown", fresh_vm), StateError.exit_code,
                          fresh_vm, "shut off")


def test_wrong_state_running(running_vm: str) -> None:
    assert_one_line_error(run_cli("vm", "undefine", running_vm), StateError.exit_code,
                          running_vm, "running", "destroy")
    assert_one_line_error(run_cli("vm", "start", running_vm), StateError.exit_code,
                          running_vm, "running")
