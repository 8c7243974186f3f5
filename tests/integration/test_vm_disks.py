"""``kvmops vm disk``: hot-plug into a booted guest, see it there, unplug it, refusals."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import libvirt
import libvirt_qemu
import pytest

from kvmops.host.connection import Host
from kvmops.images import qemuimg
from tests.conftest import SESSION_PREFIX, assert_one_line_error, run_cli

DEADLINE = 90.0  # upper bound for the guest to notice a change; only failures wait this long


def _agent(host: Host, vm: str, command: str, arguments: dict[str, Any]) -> Any:
    request = json.dumps({"execute": command, "arguments": arguments})
    return json.loads(libvirt_qemu.qemuAgentCommand(host.domain(vm), request, 10, 0))["return"]


def guest_has_block_device(host: Host, vm: str, dev: str) -> bool:
    """``test -b /dev/DEV`` in the guest, through qemu-ga's guest-exec."""
    pid = _agent(host, vm, "guest-exec", {"path": "/bin/sh",
                                          "arg": ["-c", f"test -b /dev/{dev}"]})["pid"]
    while True:
        status = _agent(host, vm, "guest-exec-status", {"pid": pid})
        if status.get("exited"):
            return bool(status.get("exitcode") == 0)
        time.sleep(0.1)


def wait_guest_sees(host: Host, vm: str, dev: str, present: bool) -> None:
    deadline = time.monotonic() + DEADLINE
    while guest_has_block_device(host, vm, dev) != present:
        assert time.monotonic() < deadline, f"/dev/{dev} present={not present} in the guest"
        time.sleep(0.5)


def disk_list(vm: str, *extra: str) -> dict[str, dict[str, Any]]:
    result = run_cli("vm", "disk", "list", vm, "--json", *extra)
    assert result.code == 0, result.stderr
    return {d["target"]: d for d in json.loads(result.stdout)}


@pytest.fixture(scope="module")
def booted_disk_vm(vm_factory: Callable[..., str]) -> str:
    """A booted guest of our own (hot-plug changes it)."""
    return vm_factory(start=True, disk="size=16M")


@pytest.fixture
def disk_vm(booted_disk_vm: str, host: Host) -> str:
    """The module's guest with vda alone, in its definition and as the guest sees it,
    whatever an earlier test (failed or not) left attached."""
    vm = booted_disk_vm
    extra = [t for t in disk_list(vm, "--inactive") | disk_list(vm) if t != "vda"]
    for target in extra:
        result = run_cli("vm", "disk", "detach", vm, target, "--remove-storage",
                         "--timeout", str(DEADLINE))
        assert result.code == 0, result.stderr
    if extra:
        for dev in ("vdb", "sda"):
            wait_guest_sees(host, vm, dev, False)
    return vm


def test_hotplug_new_disk_seen_by_guest_then_unplugged(disk_vm: str, host: Host,
                                                       images_dir: Path) -> None:
    result = run_cli("vm", "disk", "attach", disk_vm, "--size", "32M",
                     "--images-dir", str(images_dir), "--json")
    assert result.code == 0, result.stderr
    attached = json.loads(result.stdout)
    assert attached["target"] == "vdb"
    image = Path(attached["image"])
    assert image.parent == images_dir and image.name.startswith(SESSION_PREFIX)
    assert attached["virtual_size"] == 32 * 1024**2
    wait_guest_sees(host, disk_vm, "vdb", True)

    disks = disk_list(disk_vm)
    vdb = disks["vdb"]
    assert vdb["node_name"].startswith("libvirt-") and vdb["node_name"].endswith("-format")
    assert vdb["storage_node_name"] == vdb["node_name"].replace("-format", "-storage")
    assert vdb["qdev"] == "virtio-disk1"
    assert vdb["qmp_checked"] is True
    assert disks["vda"]["qdev"] == "virtio-disk0"
    assert "vdb" in disk_list(disk_vm, "--inactive")  # persistent too

    result = run_cli("vm", "disk", "detach", disk_vm, "vdb", "--remove-storage",
                     "--timeout", str(DEADLINE))
    assert result.code == 0, result.stderr
    assert "vdb" not in disk_list(disk_vm)
    assert "vdb" not in disk_list(disk_vm, "--inactive")
    assert "dev='vdb'" not in host.domain(disk_vm).XMLDesc(0)
    assert not image.exists()
    wait_guest_sees(host, disk_vm, "vdb", False)


def test_attach_existing_image_with_target_and_keep_it(disk_vm: str, host: Host,
                                                       images_dir: Path) -> None:
    image = images_dir / f"{SESSION_PREFIX}existing.qcow2"
    qemuimg.create(image, 16 * 1024**2)
    try:
        result = run_cli("vm", "disk", "attach", disk_vm, "--image", str(image),
                         "--target", "vdc")
        assert result.code == 0, result.stderr
        assert "vdc" in result.stdout
        # the guest kernel names virtio disks in probe order, not by libvirt's target
        wait_guest_sees(host, disk_vm, "vdb", True)
        # the same image a second time is refused
        assert_one_line_error(
            run_cli("vm", "disk", "attach", disk_vm, "--image", str(image)), 4,
            str(image), "already attached", "vdc")
        result = run_cli("vm", "disk", "detach", disk_vm, "vdc", "--timeout", str(DEADLINE))
        assert result.code == 0, result.stderr
        assert image.exists()  # no --remove-storage: the file stays
        assert "vdc" not in disk_list(disk_vm)
        wait_guest_sees(host, disk_vm, "vdb", False)
    finally:
        image.unlink(missing_ok=True)


def test_scsi_hotplug_brings_a_virtio_scsi_controller_and_sata_is_refused(
        disk_vm: str, host: Host, images_dir: Path) -> None:
    result = run_cli("vm", "disk", "attach", disk_vm, "--size", "16M", "--bus", "scsi",
                     "--images-dir", str(images_dir), "--json")
    assert result.code == 0, result.stderr
    attached = json.loads(result.stdout)
    image = Path(attached["image"])
    try:
        assert (attached["target"], attached["bus"]) == ("sda", "scsi")
        assert attached["qmp_checked"] is True and attached["qdev"].startswith("scsi0-")
        for flags in (0, libvirt.VIR_DOMAIN_XML_INACTIVE):  # live VM and definition
            xml = host.domain(disk_vm).XMLDesc(flags)
            assert "<controller type='scsi' index='0' model='virtio-scsi'" in xml
        # a second SCSI disk reuses the controller
        result = run_cli("vm", "disk", "attach", disk_vm, "--size", "16M", "--bus", "scsi",
                         "--images-dir", str(images_dir), "--json")
        assert result.code == 0, result.stderr
        assert json.loads(result.stdout)["target"] == "sdb"
        assert host.domain(disk_vm).XMLDesc(0).count("<controller type='scsi'") == 1
        for target in ("sdb", "sda"):
            result = run_cli("vm", "disk", "detach", disk_vm, target, "--remove-storage",
                             "--timeout", str(DEADLINE))
            assert result.code == 0, result.stderr
        assert not image.exists()
        assert not {"sda", "sdb"} & set(disk_list(disk_vm))
        # SATA (AHCI) has no hot-plug in QEMU: refused before any file is made
        assert_one_line_error(
            run_cli("vm", "disk", "attach", disk_vm, "--size", "16M", "--bus", "sata",
                    "--images-dir", str(images_dir)), 6, "sata", disk_vm, "--config-only")
        assert not list(images_dir.glob(f"{disk_vm}-sd*"))
    finally:
        for target in ("sda", "sdb"):
            if target in disk_list(disk_vm, "--inactive"):
                run_cli("vm", "disk", "detach", disk_vm, target, "--remove-storage")
        image.unlink(missing_ok=True)


def test_refusals_on_running_vm(disk_vm: str, running_vm: str, images_dir: Path) -> None:
    missing = images_dir / f"{SESSION_PREFIX}missing.qcow2"
    assert_one_line_error(run_cli("vm", "disk", "attach", disk_vm, "--image", str(missing)),
                          3, str(missing), "does not exist")
    assert_one_line_error(
        run_cli("vm", "disk", "attach", disk_vm, "--size", "16M", "--target", "vda",
                "--images-dir", str(images_dir)), 4, "vda", "already in use", disk_vm)
    # the shared guest's own disk: in use by another running VM
    other_image = disk_list(running_vm)["vda"]["image"]
    assert_one_line_error(
        run_cli("vm", "disk", "attach", disk_vm, "--image", other_image), 5,
        other_image, running_vm)
    assert_one_line_error(run_cli("vm", "disk", "detach", disk_vm, "vdz"), 3, "vdz", disk_vm)
    assert_one_line_error(run_cli("vm", "disk", "attach", disk_vm), 2, "--size")
    assert_one_line_error(
        run_cli("vm", "disk", "attach", disk_vm, "--size", "16M", "--target", "sdb"), 2, "sdb")


def test_shut_off_vm_gets_a_config_only_change(fresh_vm: str, images_dir: Path) -> None:
    assert_one_line_error(
        run_cli("vm", "disk", "attach", fresh_vm, "--size", "16M", "--live-only",
                "--images-dir", str(images_dir)), 5, fresh_vm, "shut off")
    result = run_cli("vm", "disk", "attach", fresh_vm, "--size", "16M",
                     "--images-dir", str(images_dir), "--json")
    assert result.code == 0, result.stderr
    attached = json.loads(result.stdout)
    assert attached["target"] == "vdb"
    assert attached["node_name"] is None  # no QEMU runs: no node names
    assert "vdb" in disk_list(fresh_vm)
    result = run_cli("vm", "disk", "detach", fresh_vm, "vdb", "--remove-storage")
    assert result.code == 0, result.stderr
    assert "definition only" in result.stdout
    assert not Path(attached["image"]).exists()
