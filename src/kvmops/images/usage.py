"""Which running VMs hold a disk image open.

Used to turn qemu-img's "Failed to get write lock" into a message naming the
VM. Best effort: when libvirt cannot be reached the answer is simply ``[]``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

from lxml import etree

from kvmops.errors import KvmopsError
from kvmops.host.connection import call, open_host


def _resolve(path: str | os.PathLike[str]) -> Path:
    return Path(path).expanduser().resolve()


def disk_files(domain_xml: str | bytes) -> list[str]:
    """Every file a domain's disks refer to, backing chain included (libvirt
    lists the backing files of a running domain as nested ``<backingStore>``)."""
    data = domain_xml.encode() if isinstance(domain_xml, str) else domain_xml
    root = etree.fromstring(data)
    files: list[str] = []
    for source in root.iterfind("devices/disk//source"):
        name = source.get("file")
        if name:
            files.append(name)
    return files


def _running_xml() -> Iterator[tuple[str, str]]:
    """(name, live XML) of every running domain; nothing when libvirt is unreachable."""
    try:
        with open_host() as host:
            for dom in host.domains():
                try:
                    if not call("reading VM state", dom.isActive):
                        continue
                    xml = call("reading VM XML", dom.XMLDesc, 0)
                    name = str(call("reading VM name", dom.name))
                except KvmopsError:
                    continue  # the domain went away while we looked
                yield name, xml
    except KvmopsError:
        return


def attached_formats(path: str | os.PathLike[str]) -> dict[str, str]:
    """Running VMs holding ``path`` in a disk chain, with the format they read it as."""
    target = _resolve(path)
    return {name: fmt for name, xml in _running_xml() for fmt in _formats_of(xml, target)}


def _formats_of(domain_xml: str, target: Path) -> list[str]:
    root = etree.fromstring(domain_xml.encode())
    formats: list[str] = []
    for disk in root.iterfind("devices/disk"):
        # The disk's own source uses <driver type>, nested backing stores <format type>.
        level: etree._Element | None = disk
        fmt_el = disk.find("driver")
        while level is not None:
            source = level.find("source")
            name = source.get("file") if source is not None else None
            if name and _resolve(name) == target:
                formats.append(fmt_el.get("type", "raw") if fmt_el is not None else "raw")
            level = level.find("backingStore")
            fmt_el = level.find("format") if level is not None else None
    return formats


def vms_using(path: str | os.PathLike[str]) -> list[str]:
    """Names of the *running* libvirt domains whose disks include ``path``."""
    target = _resolve(path)
    return sorted(name for name, xml in _running_xml()
                  if any(_resolve(f) == target for f in disk_files(xml)))
