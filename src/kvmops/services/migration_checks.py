"""The migration preflight use case: every blocker of moving a VM between two hosts at
once, each naming the object and the host, with its remedy (issue 12 item 3).

The facts come from both hosts through libvirt (:mod:`kvmops.host.migration_facts`), the
rules are pure (:mod:`kvmops.migration.preflight`). ``vm migrate`` (live and cold) and
``vm migrate --dry-run`` run it first, and so does a cold migration called alone
(:func:`kvmops.services.coldmigration.cold_migrate`): it is the one place for the
blocker rules. It changes nothing.
"""

from __future__ import annotations

import contextlib

from kvmops.errors import KvmopsError
from kvmops.host import migration_facts
from kvmops.migration.model import Blocker, Kind, MigrationOptions, Preflight
from kvmops.migration.preflight import check, copy_pool
from kvmops.services.caller import Caller
from kvmops.services.session import Connection

__all__ = ["preflight"]


def _sriov_pools(caller: Caller, target: Connection) -> list[str]:
    """kvmops's SR-IOV pools on the target: they live in this machine's database and
    describe its own PFs, so only a target that is this machine has them."""
    from kvmops.config import settings

    if target.uri != settings().uri:
        return []
    from kvmops.store.direct import state_db

    if state_db(None) is None:  # no database yet: no pools (and none created here)
        return []
    from kvmops.services import sriov

    with contextlib.suppress(KvmopsError):
        return [p.name for p in sriov.list_pools(caller)]
    return []


def preflight(caller: Caller, source: Connection, target: Connection, vm: str,
              options: MigrationOptions, *, source_name: str, kind: Kind) -> Preflight:
    """The blockers of migrating VM ``vm`` from ``source`` (host ``source_name``) to
    ``target`` (host ``options.target``) as ``kind`` (live or cold) with ``options``.

    A VM missing on the source is an error (NotFoundError); a host that stops answering
    while asked is one blocker (``unreachable``); the same libvirt host on both ends is
    ``same-host``.
    """
    target_name = options.target
    result = Preflight(vm=vm, source=source_name, target=target_name, kind=kind)
    source.lookup(vm)  # NotFoundError naming the VM and the source
    try:
        same = migration_facts.host_uuid(source)
        if same is not None and same == migration_facts.host_uuid(target):
            result.blockers.append(Blocker(
                code="same-host", message=f"hosts {source_name} and {target_name} are the "
                f"same libvirt host (host UUID {same})", remedy="choose another host with "
                "--to ('kvmops host list')"))
            return result
        facts = migration_facts.gather(source, target, vm, live=kind == "live")
        if kind == "cold":
            migration_facts.cold_facts(source, target, facts,
                                       pool=copy_pool(options, kind))
    except KvmopsError as err:
        for conn, name in ((target, target_name), (source, source_name)):
            if not conn.alive():  # it went away while asked: say which one
                result.blockers.append(Blocker(
                    code="unreachable", message=f"host {name} does not answer: {err}",
                    remedy=f"check it with 'kvmops host info {name}', then run it again"))
                return result
        raise
    facts.target.sriov_pools = _sriov_pools(caller, target)
    return check(facts, options, source=source_name, target=target_name, kind=kind)
