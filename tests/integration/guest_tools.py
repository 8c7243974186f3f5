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


def attach_tools_disk(vm: str, tools: Path) -> str:
    """Add the tools disk, read-only, to ``vm``'s definition (before it starts: the
    guest looks for it at boot); its target.

    Read-only, so VMs share the one file (QEMU takes only a shared lock), and a guest
    build renaming a new image over it never changes what a running VM reads.
    """
    result = run_cli("vm", "disk", "attach", vm, "--image", str(tools), "--format", "raw",
                     "--readonly", "--config-only", "--json")
    assert result.code == 0, result.stderr
    return str(json.loads(result.stdout)["target"])


def _scratch_dev(vm: str) -> str:
    """The guest's one writable disk besides vda (the tools disk is read-only)."""
    out = guest_sh(vm, "for s in /sys/block/vd?; do d=${s##*/}; [ $d = vda ] && continue; "
                       "[ \"$(cat $s/ro)\" = 0 ] && echo /dev/$d; done")
    found = out.split()
    assert len(found) == 1, f"expected one writable non-vda disk in {vm}, found {found}"
    return found[0]


def boot_tools_vm(vm_factory: Callable[..., str], tiny_guest: GuestImage, images_dir: Path
                  ) -> Iterator[ToolsVm]:
    """Create, set up and boot the VM; the scratch file is removed after (the VM itself
    by vm_factory's scope)."""
    name = vm_factory()
    scratch = images_dir / f"{name}-scratch-{time.monotonic_ns()}.raw"
    with open(scratch, "wb") as fh:
        fh.truncate(SCRATCH_MIB * 1024 * 1024)
    scratch.chmod(0o644)
    try:
        tools_target = attach_tools_disk(name, tiny_guest.tools)
        attached = run_cli("vm", "disk", "attach", name, "--image", str(scratch), "--format",
                           "raw", "--json")
        assert attached.code == 0, attached.stderr
        scratch_target = json.loads(attached.stdout)["target"]
        started = run_cli("vm", "start", name, "--wait-agent", "120")
        assert started.code == 0, started.stderr
        yield ToolsVm(name, tools_target, scratch_target, scratch, _scratch_dev(name))
    finally:
        scratch.unlink(missing_ok=True)
