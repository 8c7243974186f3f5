"""VM use cases that name files: create (with existing disks, kernel, ISO), clone and
undefine with storage -- each path through the path policy before anything runs."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from kvmops.errors import NotFoundError, StateError
from kvmops.host.connection import Host
from kvmops.images.chain import open_user_image
from kvmops.images.usage import vms_using
from kvmops.paths import policy
from kvmops.services.caller import Caller
from kvmops.vm import lifecycle
from kvmops.vm.lifecycle import CreateRequest, UndefineResult, VmInfo


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


def clone(caller: Caller, host: Host, source: str, new_name: str, *,
          images_dir: Path | None = None,
          progress: Callable[[str, float], None] | None = None) -> VmInfo:
    directory = check_clone(caller, images_dir)
    return lifecycle.clone(host, source, new_name, images_dir=directory, progress=progress)


def undefine(caller: Caller, host: Host, name: str, *, remove_storage: bool = False
             ) -> UndefineResult:
    return lifecycle.undefine(host, name, remove_storage=remove_storage)
