"""VM tags (kvmops.vm.tags): add, remove, list; which VMs carry a tag (backup schedules
with ``--tag``)."""

from __future__ import annotations

from kvmops.host.connection import Host
from kvmops.host.domain import Domain
from kvmops.services.audit import audited
from kvmops.services.caller import Caller
from kvmops.vm import tags as vm_tags


@audited("vm.tag.add", target="vm")
def add(caller: Caller, uri: str | None, vm: str, tags: list[str]) -> list[str]:
    wanted = [vm_tags.check_tag(t) for t in tags]
    with Host(uri) as host:
        domain = Domain.of(host.domain(vm))
        current = vm_tags.get_tags(domain)
        new = sorted({*current, *wanted})
        if new != current:
            vm_tags.set_tags(domain, new)
        return new


@audited("vm.tag.remove", target="vm")
def remove(caller: Caller, uri: str | None, vm: str, tags: list[str]) -> list[str]:
    with Host(uri) as host:
        domain = Domain.of(host.domain(vm))
        current = vm_tags.get_tags(domain)
        new = [t for t in current if t not in set(tags)]
        if new != current:
            vm_tags.set_tags(domain, new)
        return new


def list_tags(uri: str | None, vm: str | None = None) -> dict[str, list[str]]:
    """VM -> its tags (one VM, or every defined VM)."""
    with Host(uri) as host:
        if vm is not None:
            return {vm: vm_tags.get_tags(Domain.of(host.domain(vm)))}
        found: dict[str, list[str]] = {}
        for raw in host.domains():
            domain = Domain.of(raw)
            found[domain.name] = vm_tags.get_tags(domain)
        return dict(sorted(found.items()))


def vms_with_tag(uri: str | None, tag: str) -> list[str]:
    return [vm for vm, tags in list_tags(uri).items() if tag in tags]
