"""Rebuild a VM definition from stored XML through the typed model -- never verbatim.

A backup's domain XML is bytes from a repository: even authenticated, it holds
whatever the VM's definition held (an admin's ``<qemu:commandline>``, a host
device, an emulator path). A restore as a *new* VM therefore keeps only what
:class:`~kvmops.vm.domxml.DomainSpec` models, checks every file it names against
the path policy, and lists everything it dropped, so nothing is lost silently
and nothing unsafe is defined.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

from kvmops.vm.domxml import (
    AGENT_CHANNEL,
    DiskSpec,
    DomainDocument,
    DomainSpec,
    NicSpec,
)

# Elements the model rebuilds (or libvirt regenerates) -- not reported as dropped.
_TOP_KEPT = {"name", "uuid", "description", "title", "metadata", "memory", "currentMemory",
             "vcpu", "os", "features", "cpu", "on_poweroff", "on_reboot", "on_crash",
             "devices", "clock", "pm", "resource"}
_DEVICES_KEPT = {"disk", "interface", "serial", "console", "graphics", "video",
                 "memballoon", "controller", "input", "emulator"}
_MACHINE_RE = re.compile(r"^[a-z][a-z0-9._-]{0,63}$")
_NET_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$")
_BOOT_DEVICES = {"hd", "cdrom", "network", "fd"}
MAX_VCPUS = 255


@dataclass
class Rebuilt:
    spec: DomainSpec
    dropped: list[str] = field(default_factory=list)


def rebuild(xml: str, name: str, *, domain_type: str, disks: list[DiskSpec],
            file_ok: Callable[[str], str | None],
            network_ok: Callable[[str], bool], bridge_ok: Callable[[str], bool]) -> Rebuilt:
    """A new definition named ``name`` from stored ``xml`` with the given ``disks``.

    ``file_ok(path)`` returns None when a kernel/initrd/ISO path may be used, else why
    not; ``network_ok``/``bridge_ok`` say whether a NIC's network/bridge exists here.
    """
    doc = DomainDocument(xml)
    old = doc.spec()
    out = Rebuilt(DomainSpec(name=name, memory_bytes=old.memory_bytes,
                             domain_type=domain_type))
    dropped = out.dropped
    dropped += [f"<{tag}>" for tag in doc.top_level_tags() if tag not in _TOP_KEPT]
    dropped += [f"device <{tag}>" for tag in doc.device_tags() if tag not in _DEVICES_KEPT]
    dropped += [f"channel {name or '?'}" for name in doc.channel_names()
                if name != AGENT_CHANNEL]

    spec = out.spec
    spec.description = old.description
    spec.vcpus = min(max(1, old.vcpus), MAX_VCPUS)
    if old.topology and old.topology.vcpus == spec.vcpus:
        spec.topology = old.topology
    if _MACHINE_RE.match(old.machine):
        spec.machine = old.machine
    else:
        dropped.append(f"machine type '{old.machine[:40]}'")
    if old.arch != "x86_64":
        dropped.append(f"architecture {old.arch[:20]} (x86_64 used)")
    if old.kernel:
        problem = file_ok(old.kernel) or (file_ok(old.initrd) if old.initrd else None)
        if problem:
            dropped.append(f"direct kernel boot ({problem})")
        else:
            spec.kernel, spec.initrd, spec.cmdline = old.kernel, old.initrd, old.cmdline
    spec.boot = [b for b in old.boot if b in _BOOT_DEVICES] or ["hd"]
    spec.acpi, spec.apic = old.acpi, old.apic
    spec.disks = list(disks)
    restored = {d.target for d in disks}
    for disk in old.disks:
        if disk.target in restored:
            continue
        if disk.device == "cdrom":
            source = disk.source
            problem = file_ok(source) if source else None
            if problem:
                dropped.append(f"the medium of CD-ROM {disk.target} ({problem})")
                source = None
            spec.disks.append(DiskSpec(target=disk.target, source=source, fmt="raw",
                                       bus=disk.bus, device="cdrom", cache=None))
        else:
            dropped.append(f"disk {disk.target} (not in the backup)")
    for nic in old.nics:
        exists = network_ok if nic.kind == "network" else bridge_ok
        if not _NET_RE.match(nic.source) or not exists(nic.source):
            dropped.append(f"NIC on {nic.kind} '{nic.source[:40]}' (not on this host)")
            continue
        model = nic.model if nic.model in ("virtio", "e1000", "e1000e", "rtl8139") else "virtio"
        spec.nics.append(NicSpec(kind=nic.kind, source=nic.source, model=model))
    unmodelled_nics = doc.interface_count() - len(old.nics)
    if unmodelled_nics > 0:
        dropped.append(f"{unmodelled_nics} NIC(s) of a kind kvmops does not model")
    spec.agent_channel = old.agent_channel
    spec.vnc = old.vnc  # always on 127.0.0.1: the console bridge reaches it there
    spec.serial_console = old.serial_console
    return out
