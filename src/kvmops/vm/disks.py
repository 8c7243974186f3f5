"""Disks of a VM: list them with their QEMU names, hot-plug and hot-unplug.

Changes go through libvirt (``attachDeviceFlags``/``detachDeviceFlags`` with
LIVE and/or CONFIG) so libvirt's view of the VM stays right; QMP is only used
to read (``query-block``/``query-named-block-nodes``) and cross-check the
node names libvirt reports in the live XML.

Names in the live XML (libvirt >= 5.10 uses ``-blockdev``):

* ``<source index='N'>`` -> format node ``libvirt-N-format`` on top of the
  protocol node ``libvirt-N-storage``;
* ``<alias name='virtio-disk0'>`` -> the QEMU device id (qdev id).
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from kvmops.errors import (
    AlreadyExistsError,
    KvmopsError,
    NotFoundError,
    OperationTimeoutError,
    StateError,
    StorageError,
    UnsupportedError,
    ValidationError,
)
from kvmops.host.connection import Host
from kvmops.host.domain import Domain
from kvmops.images import qemuimg
from kvmops.images.usage import vms_using
from kvmops.paths import policy
from kvmops.vm.domxml import (
    DiskSpec,
    DomainDocument,
    OwnedFile,
    controller_xml,
    disk_xml,
)
from kvmops.vm.lifecycle import ensure_qemu_can_reach, state_name
from kvmops.vm.ownership import (
    add_owned,
    drop_owned,
    files_of_other_vms,
    owned_files,
    plan_removal,
)

BUS_PREFIX = {"virtio": "vd", "scsi": "sd", "sata": "sd", "usb": "sd", "ide": "hd"}
# QEMU's AHCI and IDE buses refuse device_add/device_del.
NO_HOTPLUG_BUSES = frozenset({"sata", "ide"})
_PERIPHERAL = "/machine/peripheral/"


class DiskInfo(BaseModel):
    target: str  # vda, vdb, sda ...
    image: str | None  # file (or device) path; None for an empty CD-ROM drive
    format: str
    virtual_size: int | None  # bytes; None when unknown (missing file, empty drive)
    bus: str
    device: str  # disk or cdrom
    readonly: bool = False
    node_name: str | None = None  # QEMU format node, e.g. libvirt-1-format (running VM)
    storage_node_name: str | None = None  # QEMU protocol node, e.g. libvirt-1-storage
    qdev: str | None = None  # QEMU device id = libvirt alias, e.g. virtio-disk0
    qmp_checked: bool = False  # names confirmed by query-block / query-named-block-nodes


class DetachResult(BaseModel):
    target: str
    image: str | None
    live: bool  # removed from the running VM
    config: bool  # removed from the persistent definition
    removed_storage: bool = False


# ------------------------------------------------------------------ targets
def suffix_index(suffix: str) -> int:
    """``a`` -> 0, ``z`` -> 25, ``aa`` -> 26 (libvirt's disk-name numbering)."""
    if not suffix or not suffix.isascii() or not suffix.isalpha() or not suffix.islower():
        raise ValueError(f"invalid disk name suffix {suffix!r}")
    index = 0
    for char in suffix:
        index = index * 26 + (ord(char) - ord("a") + 1)
    return index - 1


def index_suffix(index: int) -> str:
    """Inverse of :func:`suffix_index`."""
    if index < 0:
        raise ValueError("disk index must not be negative")
    letters = ""
    index += 1
    while index:
        index, rest = divmod(index - 1, 26)
        letters = chr(ord("a") + rest) + letters
    return letters


def bus_prefix(bus: str) -> str:
    try:
        return BUS_PREFIX[bus]
    except KeyError:
        raise ValidationError(f"unknown disk bus '{bus}'",
                              hint=f"use one of {', '.join(BUS_PREFIX)}") from None


def validate_target(target: str, bus: str) -> str:
    prefix = bus_prefix(bus)
    if not re.fullmatch(rf"{prefix}[a-z]{{1,3}}", target):
        raise ValidationError(f"invalid target '{target}' for bus {bus}",
                              hint=f"{bus} disks are named {prefix}a, {prefix}b, ...")
    return target


def next_free_target(used: Iterable[str], prefix: str = "vd") -> str:
    """The first ``<prefix><letters>`` name not in ``used`` (vda, vdb, ..., vdz, vdaa ...)."""
    taken = set()
    for name in used:
        if name.startswith(prefix):
            with contextlib.suppress(ValueError):
                taken.add(suffix_index(name[len(prefix):]))
    index = 0
    while index in taken:
        index += 1
    return prefix + index_suffix(index)


# ------------------------------------------------------------------ XML
_EMPTY = "<domain/>"


def _docs(domain: Domain) -> tuple[DomainDocument, DomainDocument, bool, bool]:
    """(live XML, persistent XML, running?, persistent?); a document the VM does not
    have (not running, transient) is empty."""
    running = domain.is_active()
    persistent = domain.is_persistent()
    live = DomainDocument(domain.xml() if running else _EMPTY)
    config = DomainDocument(domain.xml(inactive=True) if persistent else _EMPTY)
    return live, config, running, persistent


# ------------------------------------------------------------------ list
def _qdev_id(qdev: str) -> str:
    """``/machine/peripheral/virtio-disk0/virtio-backend`` -> ``virtio-disk0``."""
    if qdev.startswith(_PERIPHERAL):
        return qdev[len(_PERIPHERAL):].split("/", 1)[0]
    return qdev


def _qmp_block_view(domain: Domain) -> tuple[dict[str, dict[str, Any]],
                                                        list[dict[str, Any]]] | None:
    """query-block entries by qdev id, and the flat named nodes; None if unavailable."""
    from kvmops.monitor.libvirt_channel import LibvirtMonitorChannel

    try:
        with LibvirtMonitorChannel(domain) as channel:
            blocks = channel.execute("query-block")
            nodes = channel.execute("query-named-block-nodes", {"flat": True})
    except KvmopsError:
        return None
    by_qdev = {_qdev_id(str(b.get("qdev", ""))): b for b in blocks if isinstance(b, dict)}
    return by_qdev, [n for n in nodes if isinstance(n, dict)]


def _disk_info(spec: DiskSpec, view: tuple[dict[str, dict[str, Any]],
                                            list[dict[str, Any]]] | None,
               live: bool) -> DiskInfo:
    info = DiskInfo(
        target=spec.target, image=spec.source, format=spec.fmt, virtual_size=None,
        bus=spec.bus, device=spec.device, readonly=spec.readonly,
        node_name=spec.node_name if live else None,
        storage_node_name=spec.storage_node_name if live else None,
        qdev=spec.alias if live else None,
    )
    if view is not None and info.qdev:
        by_qdev, nodes = view
        inserted = (by_qdev.get(info.qdev) or {}).get("inserted")
        if isinstance(inserted, dict):
            node = inserted.get("node-name")
            info.node_name = str(node) if node else info.node_name
            image = inserted.get("image") or {}
            if "virtual-size" in image:
                info.virtual_size = int(image["virtual-size"])
            names = {str(n.get("node-name")): n for n in nodes}
            if info.storage_node_name not in names:
                # not libvirt's naming: the protocol node holding the same file
                info.storage_node_name = next(
                    (name for name, n in names.items()
                     if name != info.node_name and n.get("drv") in ("file", "host_device")
                     and n.get("file") == inserted.get("file")), None)
            info.qmp_checked = True
    if info.virtual_size is None and info.image and Path(info.image).exists():
        with contextlib.suppress(KvmopsError):
            info.virtual_size = qemuimg.info(info.image, info.format).virtual_size
    return info


def list_disks(host: Host, vm: str, *, inactive: bool = False, use_qmp: bool = True
               ) -> list[DiskInfo]:
    """The VM's disks: from the live XML when it runs (cross-checked with QMP unless
    ``use_qmp`` is false), else (or with ``inactive``) from its persistent XML."""
    domain = host.lookup(vm)
    live = domain.is_active() and not inactive
    doc = DomainDocument(domain.xml(inactive=not live))
    view = _qmp_block_view(domain) if live and use_qmp else None
    return [_disk_info(disk, view, live) for disk in doc.disks()]


# ------------------------------------------------------------------ attach
def attach(host: Host, vm: str, *, image: Path | None = None, size: int | None = None,
           bus: str = "virtio", fmt: str | None = None, images_dir: Path | None = None,
           target: str | None = None, live: bool = True, persistent: bool = True,
           readonly: bool = False) -> DiskInfo:
    """Add a disk: an existing ``image`` or a new qcow2 of ``size`` bytes.

    Into the running VM (``live``) and its definition (``persistent``); a
    shut-off VM only gets the definition change. Returns the new disk. A ``readonly``
    image may be shared with running VMs that read it read-only too (a tools disk).
    """
    if (image is None) == (size is None):
        raise ValidationError("give exactly one of an image (--image) or a size (--size)")
    if not live and not persistent:
        raise ValidationError("nothing to do: neither the running VM nor its definition")
    prefix = bus_prefix(bus)
    domain = host.lookup(vm)
    live_doc, config_doc, running, defined = _docs(domain)
    in_live = live and running
    in_config = persistent and defined
    if live and not persistent and not running:
        state = state_name(domain)
        raise StateError(f"cannot hot-plug a disk into VM '{vm}': it is {state}",
                         actual=state, required="running",
                         hint="start it first, or attach without --live-only to change "
                              "its definition")
    if not in_live and not in_config:
        raise StateError(f"cannot change the definition of VM '{vm}': it is transient",
                         hint="attach it live only (--live-only)")

    if in_live and bus in NO_HOTPLUG_BUSES:
        raise UnsupportedError(
            f"a {bus} disk cannot be hot-plugged into running VM '{vm}': QEMU's "
            f"{bus.upper()} controller has no hot-plug",
            hint="use --bus virtio or --bus scsi, or --config-only to add it at the next "
                 "start")
    used = set(live_doc.targets()) | set(config_doc.targets())
    if target is not None:
        validate_target(target, bus)
        if target in used:
            raise AlreadyExistsError(
                f"target {target} is already in use on VM '{vm}'",
                hint=f"the next free one is {next_free_target(used, prefix)}; "
                     "or leave out --target")
    else:
        target = next_free_target(used, prefix)

    created: Path | None = None
    if image is not None:
        path = image.absolute()
        if not path.is_file():
            raise NotFoundError(f"disk image {path} not found (attach to VM '{vm}')",
                                hint="check the path, or use --size for a new disk")
        if not fmt:
            raise ValidationError(f"no format given for {path} (attach to VM '{vm}')",
                                  hint="name it with --format raw or --format qcow2")
        resolved = path.resolve()
        for doc in (live_doc, config_doc):
            for disk in doc.disks():
                if disk.source and Path(disk.source).resolve() == resolved:
                    raise AlreadyExistsError(
                        f"image {path} is already attached to VM '{vm}' as {disk.target}")
        others = [name for name in vms_using(path) if name != vm]
        if readonly:
            others = [name for name in others if not _reads_only(host, name, resolved)]
        if others:
            raise StateError(f"image {path} is in use by running VM(s) {', '.join(others)}",
                             hint="detach it there first; two VMs writing one image "
                                  "corrupt it")
        ensure_qemu_can_reach(path.parent)
    else:
        assert size is not None
        directory = policy().new_images_dir(images_dir, trusted=True)
        ensure_qemu_can_reach(directory)
        fmt = fmt or "qcow2"
        path = directory / f"{vm}-{target}.{fmt}"
        qemuimg.create(path, size, fmt=fmt)
        created = path

    xml = disk_xml(DiskSpec(target=target, source=str(path), fmt=fmt, bus=bus,
                            readonly=readonly))
    try:
        if bus == "scsi":
            _ensure_scsi_controller(domain, vm, in_live and not live_doc.has_controller("scsi"),
                                    in_config and not config_doc.has_controller("scsi"))
        domain.attach_device(xml, live=in_live, config=in_config,
                             what=f"attaching {path} to VM '{vm}' as {target}")
        if created is not None:
            add_owned(domain, [OwnedFile(str(created), fmt)])
    except BaseException:
        if created is not None:
            with contextlib.suppress(OSError):
                created.unlink()
        raise
    for attached in list_disks(host, vm, inactive=not in_live):
        if attached.target == target:
            return attached
    raise StorageError(f"disk {target} was attached to VM '{vm}' but is not in its XML")


def _reads_only(host: Host, vm: str, image: Path) -> bool:
    """Running ``vm`` has ``image`` only as read-only disks (vanished: nothing to fear)."""
    try:
        live = DomainDocument(host.lookup(vm).xml())
    except KvmopsError:
        return True
    return all(d.readonly for d in live.disks()
               if d.source and Path(d.source).resolve() == image)


def _ensure_scsi_controller(domain: Domain, vm: str, live: bool, config: bool) -> None:
    """Add a virtio-scsi controller where the VM has no SCSI controller yet (``live``:
    the running VM lacks one, ``config``: its definition does).

    Left to itself, libvirt adds an emulated LSI controller for a SCSI disk;
    virtio-scsi is faster, hot-pluggable and what current guests expect.
    """
    if live or config:
        domain.attach_device(controller_xml("scsi", "virtio-scsi"), live=live, config=config,
                             what=f"adding a virtio-scsi controller to VM '{vm}'")


# ------------------------------------------------------------------ detach
def detach(host: Host, vm: str, target: str, *, remove_storage: bool = False,
           timeout: float = 30.0, live: bool = True, persistent: bool = True
           ) -> DetachResult:
    """Remove disk ``target`` from the running VM and/or its definition.

    A live removal needs the guest to release the device: this waits up to
    ``timeout`` seconds for it to leave the live XML (libvirt's device-removed),
    else raises OperationTimeoutError. ``remove_storage`` then deletes the image
    file, unless another VM still uses it.
    """
    domain = host.lookup(vm)
    live_doc, config_doc, _running, _defined = _docs(domain)
    live_el = live_doc.disk_device_xml(target)
    config_el = config_doc.disk_device_xml(target)
    if live_el is None and config_el is None:
        known = sorted(set(live_doc.targets()) | set(config_doc.targets()))
        raise NotFoundError(f"VM '{vm}' has no disk {target}",
                            hint=f"its disks: {', '.join(known)}" if known else
                            "it has no disks")
    in_live = live and live_el is not None
    in_config = persistent and config_el is not None
    if not in_live and not in_config:
        where = "running VM" if live else "definition"
        raise NotFoundError(f"disk {target} is not in the {where} of VM '{vm}'")
    element = live_el if in_live else config_el
    found = (live_doc if in_live else config_doc).find_disk(target)
    assert element is not None and found is not None
    disk = found
    deadline = time.monotonic() + timeout  # libvirt itself waits a few seconds in the call
    domain.detach_device(element, live=in_live, config=in_config,
                         what=f"detaching disk {target} from VM '{vm}'")
    if in_live:
        _wait_removed(domain, vm, target, deadline, timeout)

    result = DetachResult(target=target, image=disk.source, live=in_live, config=in_config)
    if remove_storage and disk.source and disk.device == "disk":
        result.removed_storage = _remove_image(host, domain, vm, disk)
    elif disk.source and result.config:
        drop_owned(domain, [disk.source])  # no longer this VM's disk: never removed with it
    return result


def _wait_removed(domain: Domain, vm: str, target: str, deadline: float,
                  timeout: float) -> None:
    while True:
        try:
            if not domain.is_active():
                return
            xml = domain.xml()
        except KvmopsError:
            return  # a transient VM that went away has no disks left
        if DomainDocument(xml).find_disk(target) is None:
            return
        if time.monotonic() >= deadline:
            raise OperationTimeoutError(
                f"disk {target} of VM '{vm}' was not released by the guest within "
                f"{timeout:g}s",
                hint="libvirt finishes the removal when the guest releases it (is it "
                     f"mounted?); check with 'kvmops vm disk list {vm}'")
        time.sleep(0.25)


def _remove_image(host: Host, domain: Domain, vm: str, disk: DiskSpec) -> bool:
    """Delete a detached disk's image: only a file kvmops created for this VM, inside the
    image directories, used by no other VM (its chain below is never followed)."""
    assert disk.source is not None
    path = Path(disk.source)
    live_doc, config_doc, _running, _defined = _docs(domain)
    resolved = path.resolve()
    for doc in (live_doc, config_doc):
        for found in doc.disks():
            source = found.source
            if source and Path(source).resolve() == resolved:
                raise StateError(f"not removing {path}: VM '{vm}' still uses it",
                                 hint="detach it from both the running VM and the definition")
    users = vms_using(path)
    if users:
        raise StateError(f"not removing {path}: it is in use by VM(s) {', '.join(users)}")
    owned = owned_files(domain)
    recorded = [f for f in owned if Path(f.path).resolve() == resolved]
    rules = policy()
    single = DiskSpec(target=disk.target, source=str(resolved),
                      fmt=recorded[0].fmt if recorded else disk.fmt)
    plan = plan_removal(vm, [single], recorded, files_of_other_vms(host, vm, rules), rules)
    if resolved not in plan.remove:
        reason = next((k.reason for k in plan.kept if Path(k.path) == resolved),
                      "it no longer exists")
        raise StateError(f"disk detached, but {path} was kept: {reason}",
                         hint="remove it yourself if it is really unused")
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    except OSError as err:
        raise StorageError(f"disk detached, but removing {path} failed: {err.strerror}") from err
    drop_owned(domain, [disk.source])
    return True


__all__ = ["DetachResult", "DiskInfo", "attach", "detach", "list_disks", "next_free_target"]
