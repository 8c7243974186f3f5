"""Snapshot use cases (libvirt snapshots of a VM: disk-only external or with memory):
list, inspect, create, revert, delete -- the changes audited, long ones jobs."""

from __future__ import annotations

from collections.abc import Callable

from kvmops.host.connection import Host
from kvmops.services.audit import audited
from kvmops.services.caller import Caller
from kvmops.services.jobs import track
from kvmops.snapshot import service
from kvmops.snapshot.service import CreateRequest, DeleteResult, RevertResult, SnapshotInfo

__all__ = ["CreateRequest", "DeleteResult", "RevertResult", "SnapshotInfo", "tree"]
NoteFn = Callable[[str], None]
tree = service.tree  # (depth, snapshot) pairs in parent-first order, for display


def _both(first: NoteFn | None, second: NoteFn) -> NoteFn:
    def say(text: str) -> None:
        second(text)
        if first is not None:
            first(text)

    return say


def list_snapshots(caller: Caller, host: Host, vm: str) -> list[SnapshotInfo]:
    return service.list_snapshots(host, vm)


def info(caller: Caller, host: Host, vm: str, name: str) -> SnapshotInfo:
    return service.info(host, vm, name)


@audited("snapshot.create", target="vm")
def create(caller: Caller, host: Host, vm: str, req: CreateRequest,
           note: NoteFn | None = None) -> SnapshotInfo:
    """Take a snapshot of ``vm`` (``req.vm`` must name it)."""
    with track(caller, "snapshot.create", vm) as job:
        snap = service.create(host, req.model_copy(update={"vm": vm}),
                              note=_both(note, job.note))
        job.result = snap
    return snap


@audited("snapshot.revert", target="vm")
def revert(caller: Caller, host: Host, vm: str, name: str, *, running: bool = False,
           paused: bool = False, force: bool = False,
           note: NoteFn | None = None) -> RevertResult:
    return service.revert(host, vm, name, running=running, paused=paused, force=force,
                          note=note)


@audited("snapshot.delete", target="vm")
def delete(caller: Caller, host: Host, vm: str, name: str, *, children: bool = False,
           note: NoteFn | None = None) -> DeleteResult:
    with track(caller, "snapshot.delete", vm) as job:
        result = service.delete(host, vm, name, children=children, note=_both(note, job.note))
        job.result = result
    return result
