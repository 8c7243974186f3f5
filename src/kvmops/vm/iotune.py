"""Disk I/O limits (libvirt's ``<iotune>``): read, and change them on a running VM
(``virDomainSetBlockIoTune``, LIVE and, for a persistent VM, CONFIG) or in the
definition alone (the typed domain XML model, redefined).

Limits are named as the CLI and API name them (``total_iops``, ``read_bytes_sec`` ...);
libvirt's names add ``_sec`` to the iops ones. 0 is "no limit". A group (iops or bytes)
holds either a total or read/write limits -- QEMU refuses both: setting one side clears
the other side of its group unless that is given too (then the call is refused).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from kvmops.errors import NotFoundError, ValidationError
from kvmops.host.connection import Host
from kvmops.records import Record
from kvmops.vm.domxml import DomainDocument

__all__ = ["FIELDS", "LIBVIRT_NAMES", "IoTune", "IoTuneResult", "apply", "merge", "read"]

FIELDS = ("total_iops", "read_iops", "write_iops", "total_bytes_sec", "read_bytes_sec",
          "write_bytes_sec")
LIBVIRT_NAMES = {"total_iops": "total_iops_sec", "read_iops": "read_iops_sec",
                 "write_iops": "write_iops_sec", "total_bytes_sec": "total_bytes_sec",
                 "read_bytes_sec": "read_bytes_sec", "write_bytes_sec": "write_bytes_sec"}
_GROUPS = (("total_iops", ("read_iops", "write_iops")),
           ("total_bytes_sec", ("read_bytes_sec", "write_bytes_sec")))
_MAX = 2**53  # QEMU's throttle limit (1e15) is below; a JSON number stays exact


@dataclass
class IoTune(Record):
    """A disk's limits; 0 is none."""

    total_iops: int = 0
    read_iops: int = 0
    write_iops: int = 0
    total_bytes_sec: int = 0
    read_bytes_sec: int = 0
    write_bytes_sec: int = 0

    @classmethod
    def from_libvirt(cls, values: Mapping[str, int]) -> IoTune:
        return cls(**{f: int(values.get(LIBVIRT_NAMES[f], 0)) for f in FIELDS})

    def libvirt(self) -> dict[str, int]:
        """All six by libvirt's names (0 included: a group is set whole)."""
        return {LIBVIRT_NAMES[f]: getattr(self, f) for f in FIELDS}

    def limits(self) -> dict[str, int]:
        """The limits in force (non-zero), by our names."""
        return {f: getattr(self, f) for f in FIELDS if getattr(self, f)}

    def describe(self) -> str:
        """``total_iops=200 read_bytes_sec=10485760``, or ``none``."""
        return " ".join(f"{k}={v}" for k, v in self.limits().items()) or "none"


@dataclass
class IoTuneResult(Record):
    vm: str
    target: str
    limits: IoTune
    live: bool  # the running VM's limits (else the definition's)
    config: bool  # the definition has them (changed, or read from it)


def merge(current: IoTune, changes: Mapping[str, int | None]) -> IoTune:
    """``current`` with ``changes`` (None: not given) applied, validated."""
    given = {k: v for k, v in changes.items() if v is not None}
    unknown = sorted(set(given) - set(FIELDS))
    if unknown:
        raise ValidationError(f"unknown I/O limit {', '.join(unknown)}",
                              hint=f"use {', '.join(FIELDS)}")
    for key, value in given.items():
        if not 0 <= int(value) <= _MAX:
            raise ValidationError(f"{key} must be between 0 and {_MAX} (0 removes it)")
    values = current.limits() | {k: int(v) for k, v in given.items()}
    for total, sides in _GROUPS:
        both = given.get(total) and any(given.get(s) for s in sides)
        if both:
            raise ValidationError(f"{total} and {'/'.join(sides)} cannot both be set: QEMU "
                                  "takes a total or read/write limits per group",
                                  hint=f"give {total} alone, or {' and '.join(sides)}")
        if given.get(total):
            for side in sides:
                values[side] = 0  # a new total replaces the read/write limits
        elif any(given.get(s) for s in sides):
            values[total] = 0
    return IoTune(**{f: int(values.get(f, 0)) for f in FIELDS})


def _disk_limits(doc: DomainDocument, vm: str, target: str) -> IoTune:
    disk = doc.find_disk(target)
    if disk is None:
        raise NotFoundError(f"VM '{vm}' has no disk {target}",
                            hint=f"see 'kvmops vm disk list {vm}'")
    return IoTune.from_libvirt(disk.iotune)


def read(host: Host, vm: str, target: str, *, inactive: bool = False) -> IoTuneResult:
    """The limits of disk ``target``: the running VM's (``inactive``: the
    definition's)."""
    domain = host.lookup(vm)
    running = domain.is_active()
    live = running and not inactive
    doc = DomainDocument(domain.xml(inactive=not live and domain.is_persistent()))
    return IoTuneResult(vm=vm, target=target, limits=_disk_limits(doc, vm, target),
                        live=live, config=not live)


def apply(host: Host, vm: str, target: str, changes: Mapping[str, int | None], *,
          config_only: bool = False) -> IoTuneResult:
    """Change disk ``target``'s limits: a running VM at once (and its definition when
    it has one), else -- or with ``config_only`` -- the definition (next start)."""
    domain = host.lookup(vm)
    running = domain.is_active()
    persistent = domain.is_persistent()
    if config_only and not persistent:
        raise ValidationError(f"VM '{vm}' is transient: it has no definition to change",
                              hint="leave out --config-only")
    if running and not config_only:
        live_doc = DomainDocument(domain.xml())
        wanted = merge(_disk_limits(live_doc, vm, target), changes)
        domain.set_block_iotune(target, wanted.libvirt(), live=True, config=persistent,
                                what=f"setting the I/O limits of disk {target} of VM '{vm}'")
        return IoTuneResult(vm=vm, target=target, limits=wanted, live=True,
                            config=persistent)
    doc = DomainDocument(domain.xml(inactive=True))
    wanted = merge(_disk_limits(doc, vm, target), changes)
    doc.set_disk_iotune(target, wanted.libvirt())
    domain.redefine(doc.to_xml(), what=f"setting the I/O limits of disk {target} of VM "
                                       f"'{vm}' in its definition")
    return IoTuneResult(vm=vm, target=target, limits=wanted, live=False, config=True)
