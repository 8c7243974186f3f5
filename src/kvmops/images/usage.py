"""Which running VMs hold a disk image open.

Used to turn qemu-img's "Failed to get write lock" into a message naming the
VM. Best effort: when libvirt cannot be reached the answer is simply ``[]``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

from kvmops.errors import KvmopsError
from kvmops.host.connection import open_host
from kvmops.vm.domxml import DomainDocument


def _resolve(path: str | os.PathLike[str]) -> Path:
    return Path(path).expanduser().resolve()


def disk_files(domain_xml: str | bytes) -> list[str]:
    """Every file a domain's disks refer to, backing chain included (libvirt
    lists the backing files of a running domain as nested ``<backingStore>``)."""
    return [name for name, _fmt in DomainDocument(domain_xml).chain_files()]


def _running_xml() -> Iterator[tuple[str, str]]:
    """(name, live XML) of every running domain; nothing when libvirt is unreachable."""
    try:
        with open_host() as host:
            for domain in host.all_domains():
                try:
                    if not domain.is_active():
                        continue
                    xml = domain.xml(what="reading VM XML")
                except KvmopsError:
                    continue  # the domain went away while we looked
                yield domain.name, xml
    except KvmopsError:
        return


def attached_formats(path: str | os.PathLike[str]) -> dict[str, str]:
    """Running VMs holding ``path`` in a disk chain, with the format they read it as."""
    target = _resolve(path)
    return {name: fmt for name, xml in _running_xml() for fmt in _formats_of(xml, target)}


def _formats_of(domain_xml: str, target: Path) -> list[str]:
    return [fmt for name, fmt in DomainDocument(domain_xml).chain_files()
            if _resolve(name) == target]


def vms_using(path: str | os.PathLike[str]) -> list[str]:
    """Names of the *running* libvirt domains whose disks include ``path``."""
    target = _resolve(path)
    return sorted(name for name, xml in _running_xml()
                  if any(_resolve(f) == target for f in disk_files(xml)))
