"""A booted tiny guest with fio and sysbench: the tools disk attached read-only.

The ``tools_vm`` fixture (tests/integration/conftest.py, one VM per test module) boots
a tiny VM with ``tools.ext4`` (label ``kvmopstools``) attached read-only, so
``kvmops guest exec VM -- fio ...`` and ``-- sysbench ...`` work, plus a raw scratch
disk for fio to read and write. For another VM: ``attach_tools_disk`` before it
starts (the guest's /init mounts the disk at boot only).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from kvmops.devguest.build import GuestImage
from kvmops.host.connection import Host
from kvmops.vm import disks
from kvmops.vm.domxml import DiskSpec, disk_xml
from tests.conftest import run_cli
from tests.integration.backup_util import guest_sh

SCRATCH_MIB = 96  # the raw scratch disk (the VM's own vda is 64M qcow2)


@dataclass(frozen=True)
class ToolsVm:
    """A running tiny guest with fio and sysbench on its PATH."""

    name: str
    tools_target: str  # libvirt's target of the tools disk (read-only)
    scratch_target: str  # libvirt's target of the raw scratch disk (e.g. for iotune)
    scratch_image: Path  # its file on the host
    scratch_dev: str  # the scratch disk in the guest, e.g. /dev/vdc (fio --filename)


def attach_tools_disk(host: Host, vm: str, tools: Path) -> str:
    """Add the tools disk, read-only, to shut-off ``vm``'s definition; its target.

    Read-only, so VMs share the one file (QEMU takes only a shared lock), and a guest
    build renaming a new image over it never changes what a running VM reads. No
    cache mode: the file may live where O_DIRECT is refused.
    """
    used = [d.target for d in disks.list_disks(host, vm, inactive=True)]
    target = disks.next_free_target(used)
    xml = disk_xml(DiskSpec(target=target, source=str(tools), fmt="raw", cache=None,
                            readonly=True))
    host.lookup(vm).attach_device(xml, live=False, config=True,
                                  what=f"attaching the tools disk to VM '{vm}'")
    return target


def _scratch_dev(vm: str) -> str:
    """The guest's one writable disk besides vda (the tools disk is read-only)."""
    out = guest_sh(vm, "for s in /sys/block/vd?; do d=${s##*/}; [ $d = vda ] && continue; "
                       "[ \"$(cat $s/ro)\" = 0 ] && echo /dev/$d; done")
    found = out.split()
    assert len(found) == 1, f"expected one writable non-vda disk in {vm}, found {found}"
    return found[0]


def boot_tools_vm(vm_factory: Callable[..., str], host: Host, tiny_guest: GuestImage,
                  images_dir: Path) -> Iterator[ToolsVm]:
    """Create, set up and boot the VM; the scratch file is removed after (the VM itself
    by vm_factory's scope)."""
    name = vm_factory()
    scratch = images_dir / f"{name}-scratch-{time.monotonic_ns()}.raw"
    with open(scratch, "wb") as fh:
        fh.truncate(SCRATCH_MIB * 1024 * 1024)
    scratch.chmod(0o644)
    try:
        tools_target = attach_tools_disk(host, name, tiny_guest.tools)
        attached = run_cli("vm", "disk", "attach", name, "--image", str(scratch), "--format",
                           "raw", "--json")
        assert attached.code == 0, attached.stderr
        scratch_target = json.loads(attached.stdout)["target"]
        started = run_cli("vm", "start", name, "--wait-agent", "120")
        assert started.code == 0, started.stderr
        yield ToolsVm(name, tools_target, scratch_target, scratch, _scratch_dev(name))
    finally:
        scratch.unlink(missing_ok=True)
