"""Which files belong to a VM, and which of them ``--remove-storage`` may delete.

kvmops records every file it creates for a VM -- new disks, clones, restored
disks, snapshot overlays -- in the VM's ``<metadata>`` (see
:class:`~kvmops.vm.domxml.OwnedFile`). Storage removal deletes a file only when

* kvmops recorded it as created for *this* VM,
* it lies inside an allowed image directory, and
* no other defined VM's disk chain uses it;

everything else in the VM's chains is kept and named with the reason. Chains are
walked with :func:`kvmops.images.chain.inspect_partial`: a link that leads out of
the allowed directories ends the walk there, so removal never follows it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import libvirt
from lxml import etree

from kvmops.errors import KvmopsError, StorageError
from kvmops.host.connection import Host, call
from kvmops.images.chain import inspect_partial
from kvmops.paths import PathPolicy, policy
from kvmops.vm.domxml import (
    METADATA_KEY,
    METADATA_NS,
    DiskSpec,
    DomainSpec,
    OwnedFile,
    owned_files_xml,
    parse_owned_files,
)


@dataclass
class KeptFile:
    path: str
    reason: str


@dataclass
class RemovalPlan:
    remove: list[Path] = field(default_factory=list)
    kept: list[KeptFile] = field(default_factory=list)


# ------------------------------------------------------------------ records
def owned_files(domain: libvirt.virDomain) -> list[OwnedFile]:
    """The files recorded in the VM's persistent definition."""
    flags = libvirt.VIR_DOMAIN_XML_INACTIVE if domain.isPersistent() else 0
    xml = call(f"reading XML of VM '{domain.name()}'", domain.XMLDesc, flags)
    root = etree.fromstring(str(xml).encode())
    return parse_owned_files(root.find(f"metadata/{{{METADATA_NS}}}vm"))


def _store(domain: libvirt.virDomain, files: list[OwnedFile]) -> None:
    flags = libvirt.VIR_DOMAIN_AFFECT_CONFIG if domain.isPersistent() else 0
    if domain.isActive():
        flags |= libvirt.VIR_DOMAIN_AFFECT_LIVE
    call(f"recording the files of VM '{domain.name()}'", domain.setMetadata,
         libvirt.VIR_DOMAIN_METADATA_ELEMENT, owned_files_xml(files) if files else None,
         METADATA_KEY, METADATA_NS, flags)


def add_owned(domain: libvirt.virDomain, added: list[OwnedFile]) -> None:
    current = owned_files(domain)
    known = {f.path for f in current}
    _store(domain, current + [f for f in added if f.path not in known])


def drop_owned(domain: libvirt.virDomain, paths: list[str]) -> None:
    gone = set(paths)
    current = owned_files(domain)
    kept = [f for f in current if f.path not in gone]
    if len(kept) != len(current):
        _store(domain, kept)


# ------------------------------------------------------------------ planning
def chain_files(disks: list[DiskSpec], rules: PathPolicy) -> tuple[list[Path], list[KeptFile]]:
    """Files of the disks' chains as far as they may be followed, and where a walk
    stopped (the file named there is never touched)."""
    files: list[Path] = []
    stopped: list[KeptFile] = []
    for disk in disks:
        if disk.device != "disk" or not disk.source:
            continue
        links, problem = inspect_partial(disk.source, disk.fmt or "raw", rules=rules,
                                         trusted_top=True)
        for link in links:
            files.append(link.path)
            if link.data_file is not None:
                files.append(link.data_file)
        if problem is not None:
            stopped.append(KeptFile(disk.source, f"chain not followed further: {problem}"))
    return list(dict.fromkeys(files)), stopped


def plan_removal(vm: str, disks: list[DiskSpec], owned: list[OwnedFile],
                 used_elsewhere: dict[Path, str], rules: PathPolicy) -> RemovalPlan:
    """What ``--remove-storage`` deletes for ``vm`` (see the module docstring)."""
    files, stopped = chain_files(disks, rules)
    recorded = {Path(f.path).resolve(): f for f in owned}
    plan = RemovalPlan(kept=stopped)
    for path in dict.fromkeys([*files, *recorded]):
        if not path.exists():
            continue
        if path not in recorded:
            plan.kept.append(KeptFile(str(path), f"kvmops did not create it for VM '{vm}' "
                                                 "(an imported image, a template or another "
                                                 "VM's file)"))
        elif not rules.in_image_dirs(path):
            plan.kept.append(KeptFile(str(path), "outside the allowed image directories"))
        elif path in used_elsewhere:
            plan.kept.append(KeptFile(str(path), f"VM '{used_elsewhere[path]}' uses it"))
        else:
            plan.remove.append(path)
    return plan


def files_of_other_vms(host: Host, vm: str, rules: PathPolicy) -> dict[Path, str]:
    """Every file in the disk chains of the other defined VMs -> one VM using it."""
    used: dict[Path, str] = {}
    for domain in host.domains():
        try:
            name = str(domain.name())
            if name == vm:
                continue
            flags = libvirt.VIR_DOMAIN_XML_INACTIVE if domain.isPersistent() else 0
            spec = DomainSpec.from_xml(str(call("reading XML", domain.XMLDesc, flags)))
        except (KvmopsError, libvirt.libvirtError):
            continue  # went away while we looked
        files, _stopped = chain_files(spec.disks, rules)
        for path in files:
            used.setdefault(path, name)
    return used


def removal_plan(host: Host, vm: str, spec: DomainSpec,
                 rules: PathPolicy | None = None) -> RemovalPlan:
    rules = rules or policy()
    return plan_removal(vm, spec.disks, spec.owned_files, files_of_other_vms(host, vm, rules),
                        rules)


def remove_files(plan: RemovalPlan, vm: str) -> list[str]:
    removed = []
    for path in plan.remove:
        try:
            path.unlink()
        except FileNotFoundError:
            continue
        except OSError as err:
            raise StorageError(f"removing {path} of VM '{vm}' failed: {err.strerror}") from err
        removed.append(str(path))
    return removed
