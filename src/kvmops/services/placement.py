"""Placement as a use case: every known host asked for its room at once (each under a
deadline: one that does not answer is rejected as unreachable, without delaying the
others), then the pure rules of kvmops.migration.placement pick the host.

``vm create --host auto`` places a new VM; ``host evacuate`` places every running VM of
a host among the others. ``KVMOPS_VCPU_RATIO`` (default 16) is how many vCPUs of running
VMs a host may carry per CPU.
"""

from __future__ import annotations

import functools
import os
from typing import TYPE_CHECKING

from kvmops.errors import StateError, ValidationError
from kvmops.migration.placement import (
    DEFAULT_MEMORY_RESERVE,
    DEFAULT_VCPU_RATIO,
    DiskNeed,
    HostFacts,
    Needs,
    Placement,
    PoolFacts,
)
from kvmops.migration.placement import place as rank
from kvmops.services import hosts
from kvmops.services.caller import Caller

if TYPE_CHECKING:
    from kvmops.host.capacity import Room
    from kvmops.store.db import Store
    from kvmops.vm.lifecycle import CreateRequest

DEFAULT_DEADLINE_S = 5.0
AUTO = "auto"

__all__ = ["AUTO", "DiskNeed", "HostFacts", "Needs", "Placement", "facts", "needs_of",
           "place", "place_request", "vcpu_ratio"]


def vcpu_ratio() -> float:
    """vCPUs per host CPU a host may run (``KVMOPS_VCPU_RATIO``)."""
    text = os.environ.get("KVMOPS_VCPU_RATIO")
    if not text:
        return DEFAULT_VCPU_RATIO
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0.1 <= value <= 1024:
        raise ValidationError(f"KVMOPS_VCPU_RATIO={text!r} is not a ratio",
                              hint="give vCPUs per host CPU, e.g. 4 or 16 (0.1 to 1024)")
    return value


def _probe_room(uri: str) -> Room:
    from kvmops.host import capacity, remote

    with remote.POOL.connection(uri) as conn:
        return capacity.room(conn)


def _facts(name: str, room: Room) -> HostFacts:
    return HostFacts(name=name, reachable=True, cpus=room.cpus,
                     memory_total=room.memory_total, memory_free=room.memory_free,
                     vcpus_running=room.vcpus_running, vms_running=room.vms_running,
                     vms=list(room.vms), networks=dict(room.networks),
                     pools=[PoolFacts(p.name, p.path, p.active, p.available)
                            for p in room.pools])


def facts(caller: Caller, db: str | Store | None = None, *,
          deadline: float = DEFAULT_DEADLINE_S, exclude: tuple[str, ...] = ()
          ) -> list[HostFacts]:
    """Every known host's room (``local`` first), asked in parallel; a host that fails
    or does not answer within ``deadline`` is listed unreachable with the reason."""
    known = [k for k in hosts._known(db) if k.name not in exclude]
    outcomes = hosts.gather({k.name: functools.partial(_probe_room, k.uri) for k in known},
                            deadline)
    found = []
    for k in known:
        outcome = outcomes[k.name]
        if outcome.value is None:
            found.append(HostFacts(name=k.name, reachable=False, error=outcome.error))
        else:
            found.append(_facts(k.name, outcome.value))
    return found


def needs_of(req: CreateRequest) -> Needs:
    """What a new VM needs of its host: memory, vCPUs, the networks its NICs join, and
    the space of its new disks (in their pool, or in the images directory)."""
    from kvmops.config import settings

    networks = [req.network] if req.network else []
    networks += [n.source for n in req.nics if n.kind == "network"]
    images_dir = str(req.images_dir or settings().images_dir)
    disks = [DiskNeed(size=d.size, pool=d.pool, directory=None if d.pool else images_dir)
             for d in req.disks if d.size is not None]
    return Needs(vm=req.name, memory=req.memory, vcpus=req.vcpus,
                 networks=list(dict.fromkeys(networks)), disks=disks)


def place(caller: Caller, needs: Needs, db: str | Store | None = None, *,
          deadline: float = DEFAULT_DEADLINE_S) -> Placement:
    """Every known host ranked for the VM (``host`` None when none fits)."""
    return rank(facts(caller, db, deadline=deadline), needs, vcpu_ratio=vcpu_ratio(),
                memory_reserve=DEFAULT_MEMORY_RESERVE)


def place_request(caller: Caller, req: CreateRequest, db: str | Store | None = None, *,
                  deadline: float = DEFAULT_DEADLINE_S) -> tuple[Placement, str]:
    """The host for a new VM and its URI (StateError naming every host's reason when
    none fits)."""
    placed = place(caller, needs_of(req), db, deadline=deadline)
    if placed.host is None:
        raise StateError(f"no host can take VM '{req.name}': {placed.reason}",
                         hint="add a host (kvmops host add), free room, or name one "
                              "with --host NAME")
    return placed, hosts.uri_of(caller, placed.host, db)
