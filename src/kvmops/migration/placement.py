"""Placement: which host has room for a VM, and why each other host was passed over.

Pure: the facts of every candidate host (gathered by kvmops.services.placement) and
what the VM needs go in; one verdict per host comes out, the fitting ones ranked. A
host fits when it answered, has no VM of that name, keeps ``memory_reserve`` free after
the VM's memory, stays within ``vcpu_ratio`` vCPUs per host CPU (the running VMs' and
this one's), has the space for the VM's new or copied disks in the pool they go to, and
has every libvirt network the VM's NICs join, active. Among the fitting hosts the one
with the most room left afterwards wins: the smaller of its memory and vCPU headroom
(as fractions), then the larger free memory, then the name (stable).

``plan`` places several VMs at once (evacuating a host): biggest memory first, each
placement taking its share off the chosen host's facts before the next is placed.
"""

from __future__ import annotations

import dataclasses
import posixpath
from collections.abc import Iterable
from dataclasses import dataclass, field

from kvmops.records import Record
from kvmops.sizes import format_size

#: vCPUs per host CPU a host may run (OpenStack Nova's long-standing default ratio).
DEFAULT_VCPU_RATIO = 16.0
#: Memory a host keeps for itself and QEMU's overhead after a VM is placed on it.
DEFAULT_MEMORY_RESERVE = 512 * 1024**2


@dataclass
class PoolFacts(Record):
    """One storage pool of a host."""

    name: str
    path: str | None  # its target directory (dir/fs/netfs pools), else None
    active: bool
    available: int  # bytes


@dataclass
class HostFacts(Record):
    """What placement knows about one host (``reachable`` false: ``error`` says why)."""

    name: str
    reachable: bool
    error: str | None = None
    cpus: int = 0
    memory_total: int = 0  # bytes
    memory_free: int = 0  # bytes: free + buffers + cache
    vcpus_running: int = 0  # the running VMs' vCPUs, summed
    vms_running: int = 0
    vms: list[str] = field(default_factory=list)  # every defined or running VM's name
    networks: dict[str, bool] = field(default_factory=dict)  # name -> active
    pools: list[PoolFacts] = field(default_factory=list)


@dataclass
class DiskNeed(Record):
    """Space a new (or copied) disk takes on the host: in pool ``pool``, or (no pool)
    in directory ``directory`` -- checked against the host's pool for that directory."""

    size: int
    pool: str | None = None
    directory: str | None = None


@dataclass
class Needs(Record):
    """What a VM needs of the host it is placed on."""

    vm: str
    memory: int  # bytes
    vcpus: int = 1
    networks: list[str] = field(default_factory=list)
    disks: list[DiskNeed] = field(default_factory=list)
    exclude: list[str] = field(default_factory=list)  # hosts not to use (the source)
    #: hosts rejected for a reason found elsewhere (host -> reason: the preflight's)
    avoid: dict[str, str] = field(default_factory=dict)


@dataclass
class Verdict(Record):
    """One host's verdict: fits (with its score) or rejected, with the reason."""

    host: str
    fits: bool
    reason: str
    score: float = 0.0
    memory_free_after: int | None = None
    vcpus_after: int | None = None
    vcpus_limit: int | None = None

    def line(self) -> str:
        return f"{self.host}: {'fits' if self.fits else 'rejected'}: {self.reason}"


@dataclass
class Placement(Record):
    """Where a VM goes (``host`` None: nowhere fits) and every host's verdict, the
    chosen first, then the other fitting ones by rank, then the rejected ones."""

    vm: str
    host: str | None
    reason: str
    verdicts: list[Verdict] = field(default_factory=list)

    def lines(self) -> list[str]:
        return [v.line() for v in self.verdicts]


def _pool_for(pools: list[PoolFacts], directory: str) -> PoolFacts | None:
    """The active pool whose target directory is ``directory`` or its nearest parent."""
    best: PoolFacts | None = None
    target = posixpath.normpath(directory)
    for pool in pools:
        if not pool.active or not pool.path:
            continue
        root = posixpath.normpath(pool.path)
        inside = target == root or target.startswith(root.rstrip("/") + "/")
        if inside and (best is None or len(root) > len(posixpath.normpath(best.path or ""))):
            best = pool
    return best


def _disk_space(facts: HostFacts, disks: list[DiskNeed]) -> tuple[list[str], list[str]]:
    """(problems, notes) of the VM's disks on this host."""
    wanted: dict[str, int] = {}
    notes: list[str] = []
    problems: list[str] = []
    by_name = {p.name: p for p in facts.pools}
    for disk in disks:
        if disk.size <= 0:
            continue
        if disk.pool is not None:
            pool = by_name.get(disk.pool)
            if pool is None:
                problems.append(f"no storage pool '{disk.pool}'")
                continue
            if not pool.active:
                problems.append(f"storage pool '{disk.pool}' is not active")
                continue
            wanted[pool.name] = wanted.get(pool.name, 0) + disk.size
        elif disk.directory is not None:
            found = _pool_for(facts.pools, disk.directory)
            if found is None:
                notes.append(f"space in {disk.directory} not known (no pool there)")
                continue
            wanted[found.name] = wanted.get(found.name, 0) + disk.size
    for name, size in wanted.items():
        pool = by_name[name]
        if size > pool.available:
            problems.append(f"pool '{name}' has {format_size(pool.available)} free, the "
                            f"disks need {format_size(size)}")
        else:
            notes.append(f"pool '{name}' {format_size(pool.available)} free")
    return problems, notes


def judge(facts: HostFacts, needs: Needs, *, vcpu_ratio: float = DEFAULT_VCPU_RATIO,
          memory_reserve: int = DEFAULT_MEMORY_RESERVE) -> Verdict:
    """One host's verdict for the VM: every reason it cannot take it, or how much room
    it has left afterwards."""
    if facts.name in needs.exclude:
        return Verdict(facts.name, False, "the VM's own host")
    if not facts.reachable:
        return Verdict(facts.name, False, f"unreachable ({facts.error or 'no answer'})")
    if facts.name in needs.avoid:
        return Verdict(facts.name, False, needs.avoid[facts.name])
    problems: list[str] = []
    if needs.vm in facts.vms:
        problems.append(f"a VM named '{needs.vm}' exists there")
    memory_after = facts.memory_free - needs.memory
    if memory_after < memory_reserve:
        problems.append(f"memory: needs {format_size(needs.memory)} + "
                        f"{format_size(memory_reserve)} reserve, "
                        f"{format_size(facts.memory_free)} free")
    limit = int(facts.cpus * vcpu_ratio)
    vcpus_after = facts.vcpus_running + needs.vcpus
    if vcpus_after > limit:
        problems.append(f"vCPUs: {facts.vcpus_running} running + {needs.vcpus} > "
                        f"{limit} ({facts.cpus} CPUs x {vcpu_ratio:g})")
    missing = [n for n in dict.fromkeys(needs.networks) if n not in facts.networks]
    inactive = [n for n in dict.fromkeys(needs.networks) if facts.networks.get(n) is False]
    if missing:
        problems.append(f"network{'s' if len(missing) > 1 else ''} "
                        f"{', '.join(missing)} not present")
    if inactive:
        problems.append(f"network{'s' if len(inactive) > 1 else ''} "
                        f"{', '.join(inactive)} not active")
    disk_problems, disk_notes = _disk_space(facts, needs.disks)
    problems += disk_problems
    if problems:
        return Verdict(facts.name, False, "; ".join(problems),
                       memory_free_after=memory_after, vcpus_after=vcpus_after,
                       vcpus_limit=limit)
    memory_room = (memory_after - memory_reserve) / max(facts.memory_total, 1)
    vcpu_room = (limit - vcpus_after) / max(limit, 1)
    parts = [f"{format_size(memory_after)} memory free after it",
             f"{vcpus_after} of {limit} vCPUs in use after it"]
    if needs.networks:
        parts.append(f"network{'s' if len(set(needs.networks)) > 1 else ''} "
                     f"{', '.join(dict.fromkeys(needs.networks))} present")
    parts += disk_notes
    return Verdict(facts.name, True, ", ".join(parts), score=min(memory_room, vcpu_room),
                   memory_free_after=memory_after, vcpus_after=vcpus_after,
                   vcpus_limit=limit)


def place(hosts: Iterable[HostFacts], needs: Needs, *,
          vcpu_ratio: float = DEFAULT_VCPU_RATIO,
          memory_reserve: int = DEFAULT_MEMORY_RESERVE) -> Placement:
    """Rank every host for the VM: the fitting ones best first, then the rejected ones
    (in the order given). ``host`` is the best fitting one, or None."""
    verdicts = [judge(h, needs, vcpu_ratio=vcpu_ratio, memory_reserve=memory_reserve)
                for h in hosts]
    fitting = sorted((v for v in verdicts if v.fits),
                     key=lambda v: (-v.score, -(v.memory_free_after or 0), v.host))
    rejected = [v for v in verdicts if not v.fits]
    if not fitting:
        considered = [v for v in rejected if v.reason != "the VM's own host"]
        reason = ("no host has room: " + " | ".join(v.line() for v in considered)
                  if considered else "no other host is known (kvmops host add NAME URI)")
        return Placement(needs.vm, None, reason, rejected)
    best = fitting[0]
    reason = "the most room" if len(fitting) > 1 else "the only host that fits"
    return Placement(needs.vm, best.host, f"{reason}: {best.reason}", fitting + rejected)


def take(facts: HostFacts, needs: Needs) -> HostFacts:
    """The host's facts once the VM runs there (for placing the next VM of a plan)."""
    pools = [dataclasses.replace(p) for p in facts.pools]
    by_name = {p.name: p for p in pools}
    for disk in needs.disks:
        pool = by_name.get(disk.pool) if disk.pool is not None else (
            _pool_for(pools, disk.directory) if disk.directory else None)
        if pool is not None:
            pool.available -= disk.size
    return dataclasses.replace(
        facts, memory_free=facts.memory_free - needs.memory,
        vcpus_running=facts.vcpus_running + needs.vcpus, vms_running=facts.vms_running + 1,
        vms=[*facts.vms, needs.vm], pools=pools)


def plan(hosts: Iterable[HostFacts], vms: Iterable[Needs], *,
         vcpu_ratio: float = DEFAULT_VCPU_RATIO,
         memory_reserve: int = DEFAULT_MEMORY_RESERVE) -> list[Placement]:
    """Place several VMs (the biggest memory first), each taking its share of the chosen
    host before the next is placed; the placements in the order of ``vms``."""
    facts = {h.name: h for h in hosts}
    wanted = list(vms)
    done: dict[int, Placement] = {}
    for index in sorted(range(len(wanted)), key=lambda i: (-wanted[i].memory,
                                                          -wanted[i].vcpus, wanted[i].vm)):
        needs = wanted[index]
        placed = place(facts.values(), needs, vcpu_ratio=vcpu_ratio,
                       memory_reserve=memory_reserve)
        if placed.host is not None:
            facts[placed.host] = take(facts[placed.host], needs)
        done[index] = placed
    return [done[i] for i in range(len(wanted))]
