"""VM use cases that name files: create (with existing disks, kernel, ISO), clone and
undefine with storage -- each path through the path policy before anything runs."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from kvmops.errors import NotFoundError, StateError
from kvmops.host.accel import Accelerator
from kvmops.host.connection import Host
from kvmops.paths import policy
from kvmops.services.audit import audited
from kvmops.services.caller import Caller
from kvmops.vm import lifecycle
from kvmops.vm.lifecycle import (
    CreateRequest,
    DiskRequest,
    ShutdownMode,
    UndefineResult,
    VmInfo,
    VmSummary,
)

__all__ = ["Accelerator", "CreateRequest", "DiskRequest", "ShutdownMode", "UndefineResult",
           "VmInfo", "VmSummary"]  # the faces' models


def _file(caller: Caller, path: Path | None, what: str, vm: str) -> Path | None:
    if path is None:
        return None
    real = policy().image_path(path, trusted=caller.trusted_paths, what=what)
    if not real.is_file():
        raise NotFoundError(f"{what} file {path} not found (VM '{vm}')", hint="check the path")
    return real


def check_create(caller: Caller, req: CreateRequest) -> tuple[CreateRequest, list[str]]:
    """The request with every path checked and resolved and every existing disk's
    format chosen (given, recorded, else raw) and its chain checked; plus notes."""
    rules = policy()
    notes: list[str] = []
    disks = []
    for disk in req.disks:
        if disk.path is None:
            disks.append(disk)
            continue
        from kvmops.images.chain import open_user_image  # here: quick kvmops vm list/info
        from kvmops.images.usage import vms_using

        image = open_user_image(disk.path, disk.fmt, rules=rules, trusted=caller.trusted_paths)
        users = vms_using(image.path)
        if users:
            raise StateError(f"image {image.path} is in use by running VM(s) "
                             f"{', '.join(users)}", hint="two VMs writing one image corrupt it")
        notes.extend(image.notes)
        disks.append(disk.model_copy(update={"path": image.path, "fmt": image.format}))
    checked = req.model_copy(update={
        "disks": disks,
        "kernel": _file(caller, req.kernel, "kernel", req.name),
        "initrd": _file(caller, req.initrd, "initrd", req.name),
        "cdrom": _file(caller, req.cdrom, "CD-ROM ISO", req.name),
        "images_dir": rules.new_images_dir(req.images_dir, trusted=caller.trusted_paths),
    })
    return checked, notes


@audited("vm.create", target="req")
def create(caller: Caller, host: Host, req: CreateRequest,
           progress: Callable[[str], None] | None = None,
           note: Callable[[str], None] | None = None) -> VmInfo:
    """Create a VM; ``note`` hears what the user should know (e.g. an image read as raw
    whose first bytes look like another format), ``progress`` the steps."""
    checked, notes = check_create(caller, req)
    for text in notes:
        (note or progress or (lambda _t: None))(text)
    return lifecycle.create(host, checked, progress=progress, note=note)


def check_clone(caller: Caller, images_dir: Path | None) -> Path:
    return policy().new_images_dir(images_dir, trusted=caller.trusted_paths)


@audited("vm.clone", target="new_name")
def clone(caller: Caller, host: Host, source: str, new_name: str, *,
          images_dir: Path | None = None,
          progress: Callable[[str, float], None] | None = None) -> VmInfo:
    directory = check_clone(caller, images_dir)
    return lifecycle.clone(host, source, new_name, images_dir=directory, progress=progress)


@audited("vm.undefine", target="name")
def undefine(caller: Caller, host: Host, name: str, *, remove_storage: bool = False
             ) -> UndefineResult:
    return lifecycle.undefine(host, name, remove_storage=remove_storage)


# Life cycle -------------------------------------------------------------------------
def list_vms(caller: Caller, host: Host) -> list[VmSummary]:
    """Every defined VM with state, vCPUs, memory, accelerator and autostart."""
    return lifecycle.list_vms(host)


def info(caller: Caller, host: Host, name: str) -> VmInfo:
    return lifecycle.info(host, name)


def dumpxml(caller: Caller, host: Host, name: str, *, inactive: bool = False) -> str:
    return lifecycle.dumpxml(host, name, inactive=inactive)


@audited("vm.start", target="name")
def start(caller: Caller, host: Host, name: str, *, paused: bool = False,
          discard_managed_save: bool = False, wait_agent: float | None = None) -> None:
    """Start a VM; with ``wait_agent`` wait that many seconds for its guest agent."""
    lifecycle.start(host, name, paused=paused, discard_managed_save=discard_managed_save)
    if wait_agent:
        lifecycle.wait_for_agent(host, name, wait_agent)


@audited("vm.shutdown", target="name")
def shutdown(caller: Caller, host: Host, name: str, *, mode: ShutdownMode = "acpi",
             timeout: float = 60.0, wait: bool = True) -> None:
    lifecycle.shutdown(host, name, mode=mode, timeout=timeout, wait=wait)


@audited("vm.destroy", target="name")
def destroy(caller: Caller, host: Host, name: str) -> None:
    lifecycle.destroy(host, name)


@audited("vm.suspend", target="name")
def suspend(caller: Caller, host: Host, name: str) -> None:
    lifecycle.suspend(host, name)


@audited("vm.resume", target="name")
def resume(caller: Caller, host: Host, name: str) -> None:
    lifecycle.resume(host, name)


@audited("vm.reboot", target="name")
def reboot(caller: Caller, host: Host, name: str, *, mode: ShutdownMode = "acpi") -> None:
    lifecycle.reboot(host, name, mode=mode)


@audited("vm.autostart", target="name")
def set_autostart(caller: Caller, host: Host, name: str, enabled: bool) -> None:
    lifecycle.set_autostart(host, name, enabled)
