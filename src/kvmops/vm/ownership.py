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

from kvmops.errors import KvmopsError, StorageError
from kvmops.host.connection import Host
from kvmops.host.domain import Domain
from kvmops.images.chain import inspect_partial
from kvmops.paths import PathPolicy, policy
from kvmops.vm.domxml import (
    METADATA_KEY,
    METADATA_NS,
    DiskSpec,
    DomainDocument,
    DomainSpec,
    OwnedFile,
    owned_files_xml,
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
def owned_files(domain: Domain) -> list[OwnedFile]:
    """The files recorded in the VM's persistent definition."""
    return DomainDocument(Domain.of(domain).config_xml()).owned_files()


def _store(domain: Domain, files: list[OwnedFile]) -> None:
    domain.set_metadata(METADATA_KEY, METADATA_NS, owned_files_xml(files) if files else None,
                        what=f"recording the files of VM '{domain.name}'")


def add_owned(domain: Domain, added: list[OwnedFile]) -> None:
    domain = Domain.of(domain)
    current = owned_files(domain)
    known = {f.path for f in current}
    _store(domain, current + [f for f in added if f.path not in known])


def drop_owned(domain: Domain, paths: list[str]) -> None:
    domain = Domain.of(domain)
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
        if disk.pool:  # a volume of a block pool (an iSCSI LUN ...): the pool's, not ours
            stopped.append(KeptFile(f"{disk.pool}/{disk.volume}", "a volume of storage pool "
                                    f"'{disk.pool}' (remove it with 'kvmops volume delete')"))
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
    for domain in host.all_domains():
        name = domain.name
        if name == vm:
            continue
        try:
            spec = DomainSpec.from_xml(domain.config_xml(what="reading XML"))
        except KvmopsError:
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
