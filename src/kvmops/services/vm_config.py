"""VM configuration use cases: vCPUs, memory, and what an undefine with storage
would remove -- one function each for the CLI, the API and the web UI.

vCPU and memory changes are made to the persistent configuration (like ``virsh
setvcpus --config`` / ``setmaxmem --config`` / ``setmem --config``): a running VM
gets them at its next start, and the result says so.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from kvmops.errors import StateError, ValidationError
from kvmops.host.connection import Host
from kvmops.services.audit import audited
from kvmops.services.caller import Caller
from kvmops.sizes import format_size
from kvmops.vm import lifecycle
from kvmops.vm.domxml import DomainSpec, validate_name

MIN_MEMORY = 16 * 1024**2

Applies = Literal["now", "next start"]


class ConfigChange(BaseModel):
    """What changed, and when the guest sees it."""

    vm: str
    vcpus: int
    memory: int  # bytes
    applies: Applies
    message: str
    notes: list[str] = Field(default_factory=list)


class KeptPath(BaseModel):
    path: str
    reason: str


class RemovalPreview(BaseModel):
    """What ``undefine --remove-storage`` would delete, and what it would keep (why)."""

    vm: str
    remove: list[str] = Field(default_factory=list)
    kept: list[KeptPath] = Field(default_factory=list)


def _config(host: Host, vm: str) -> tuple[DomainSpec, bool]:
    """The persistent configuration of ``vm`` and whether it runs now."""
    domain = host.lookup(validate_name(vm))
    if not domain.is_persistent():
        raise StateError(f"VM '{vm}' is transient: it has no configuration to change",
                         hint=f"define it first ('virsh dumpxml {vm} > f.xml; virsh define "
                              "f.xml')")
    return DomainSpec.from_xml(domain.xml(inactive=True)), domain.is_active()


def _result(host: Host, vm: str, running: bool, what: str, notes: list[str]) -> ConfigChange:
    spec, _ = _config(host, vm)
    applies: Applies = "next start" if running else "now"
    when = " (the running VM gets it at its next start)" if running else ""
    return ConfigChange(vm=vm, vcpus=spec.vcpus, memory=spec.memory_bytes, applies=applies,
                        message=f"VM '{vm}': {what}{when}", notes=notes)


@audited("vm.setvcpus")
def set_vcpus(caller: Caller, host: Host, vm: str, count: int) -> ConfigChange:
    """Give ``vm`` ``count`` vCPUs (its maximum and current count)."""
    del caller  # audited by the face; no paths involved
    if count < 1:
        raise ValidationError(f"{count} vCPUs: a VM needs at least 1", hint="give 1 or more")
    spec, running = _config(host, vm)
    if spec.topology is not None and spec.topology.vcpus != count:
        t = spec.topology
        raise ValidationError(
            f"VM '{vm}' has a CPU topology of {t.sockets} socket(s) x {t.cores} core(s) x "
            f"{t.threads} thread(s) = {t.vcpus} vCPUs; {count} does not match it",
            hint="change the topology in the XML ('virsh edit') or recreate the VM")
    most = host.max_vcpus(spec.domain_type, spec.arch)
    if most is not None and count > most:
        raise ValidationError(f"{count} vCPUs is more than the {most} a VM of this kind can "
                              f"have (VM '{vm}')", hint=f"give at most {most}")
    notes: list[str] = []
    cpus = host.cpus()
    if count > cpus:
        notes.append(f"VM '{vm}' gets {count} vCPUs on a host with {cpus} CPUs: they will "
                     "share them")
    domain = host.lookup(vm)
    if count >= spec.vcpus:  # the maximum first: the current count may not exceed it
        domain.set_max_vcpus(count)
        domain.set_vcpus(count, live=False, config=True)
    else:
        domain.set_vcpus(count, live=False, config=True)
        domain.set_max_vcpus(count)
    return _result(host, vm, running, f"{count} vCPU(s)", notes)


@audited("vm.setmem")
def set_memory(caller: Caller, host: Host, vm: str, memory: int, *, force: bool = False
               ) -> ConfigChange:
    """Give ``vm`` ``memory`` bytes (its maximum and current memory); more than the host
    has is refused unless ``force``."""
    del caller
    if memory < MIN_MEMORY:
        raise ValidationError(f"memory {format_size(memory)} is too small for VM '{vm}'",
                              hint="give at least 16M")
    if memory > lifecycle.MAX_MEMORY:
        raise ValidationError(f"memory {format_size(memory)} is more than the "
                              f"{format_size(lifecycle.MAX_MEMORY)} a VM may have")
    _spec, running = _config(host, vm)
    total = host.memory_total()
    if memory > total and not force:
        raise ValidationError(
            f"memory {format_size(memory)} for VM '{vm}' is more than this host has "
            f"({format_size(total)})",
            hint='give less, or overcommit with --force (API: "force": true)')
    notes: list[str] = []
    available = host.memory_available()
    if available is not None and memory > available:
        notes.append(f"VM '{vm}' asks for {format_size(memory)}; only "
                     f"{format_size(available)} is available now")
    size = memory // 1024 * 1024  # libvirt counts KiB
    domain = host.lookup(vm)
    # The maximum first (libvirt lowers the current memory with it), then the current.
    domain.set_max_memory(size)
    domain.set_memory(size, live=False, config=True)
    return _result(host, vm, running, f"memory {format_size(size)}", notes)


def removal_preview(caller: Caller, host: Host, vm: str) -> RemovalPreview:
    """The files ``undefine`` with storage would delete and those it keeps, named before
    anyone confirms (nothing is changed)."""
    from kvmops.vm.ownership import removal_plan

    del caller
    spec, _running = _config(host, vm)
    plan = removal_plan(host, vm, spec)
    return RemovalPreview(vm=vm, remove=[str(p) for p in plan.remove],
                          kept=[KeptPath(path=k.path, reason=k.reason) for k in plan.kept])
