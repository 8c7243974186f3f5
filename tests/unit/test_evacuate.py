"""Evacuation's moves (kvmops.services.evacuate) with the plan and the migration faked:
at most ``parallel`` migrations at once, VMs that are blocked or have no room are not
attempted, a failure is reported for its VM while the others move, a cancel stops new
ones, ``dry_run`` moves nothing; the report's lines."""

from __future__ import annotations

import os
import signal
import threading
import time
from typing import Any

import pytest

from kvmops.errors import CancelledError, HypervisorError, ValidationError
from kvmops.migration.model import Blocker, MigrationOptions, MigrationResult
from kvmops.services import evacuate as evacuation
from kvmops.services import migration
from kvmops.services.caller import Caller
from kvmops.services.evacuate import EvacuationItem, EvacuationReport


def _plan(names: list[str], extra: list[EvacuationItem] | None = None) -> EvacuationReport:
    report = EvacuationReport(host="src", dry_run=True, parallel=2, copy_storage=False)
    report.vms = [EvacuationItem(vm=n, target="dst", reason="the most room: ...",
                                 status="planned") for n in names] + list(extra or [])
    return report


class FakeMigrations:
    """migration.migrate stand-in: counts how many run at once; fails ``bad``."""

    def __init__(self, bad: set[str] | None = None, hold: float = 0.05) -> None:
        self.bad = bad or set()
        self.hold = hold
        self.lock = threading.Lock()
        self.running = 0
        self.most = 0
        self.calls: list[tuple[str, str, str | None]] = []
        self.options: list[MigrationOptions] = []

    def __call__(self, caller: Caller, vm: str, options: MigrationOptions, *,
                 source: str | None = None, progress: Any = None, cancelled: Any = None,
                 db: Any = None) -> MigrationResult:
        with self.lock:
            self.running += 1
            self.most = max(self.most, self.running)
            self.calls.append((vm, options.target, source))
            self.options.append(options)
        try:
            time.sleep(self.hold)  # overlap with the others, if they may run
            if vm in self.bad:
                raise HypervisorError(f"migration of '{vm}' failed: connection reset")
            return MigrationResult(vm=vm, source=source or "local", target=options.target,
                                   kind="live", seconds=1.5, downtime_ms=42)
        finally:
            with self.lock:
                self.running -= 1


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> FakeMigrations:
    found = FakeMigrations(bad={"vm3"})
    monkeypatch.setattr(migration, "migrate", found)
    return found


def _evacuate(monkeypatch: pytest.MonkeyPatch, plan: EvacuationReport, **kwargs: Any
              ) -> EvacuationReport:
    monkeypatch.setattr(evacuation, "plan_evacuation", lambda *a, **k: plan)
    return evacuation.evacuate(Caller(name="test"), "src", **kwargs)


def test_at_most_parallel_at_once_blocked_skipped_failures_reported(
        monkeypatch: pytest.MonkeyPatch, fake: FakeMigrations) -> None:
    blocked = EvacuationItem(vm="pinned", target="dst", reason="r", status="blocked",
                             blockers=[Blocker("hostdev", "a host device", "detach it")])
    homeless = EvacuationItem(vm="huge", target=None, reason="no host has room: ...",
                              status="no-room")
    lines: list[str] = []
    planned: list[EvacuationReport] = []
    report = _evacuate(monkeypatch, _plan([f"vm{i}" for i in range(6)], [blocked, homeless]),
                       parallel=2, on_plan=planned.append, note=lines.append)
    assert planned == [report]
    assert fake.most == 2
    assert sorted(c[0] for c in fake.calls) == [f"vm{i}" for i in range(6)]
    assert {(c[1], c[2]) for c in fake.calls} == {("dst", "src")}
    status = {item.vm: item.status for item in report.vms}
    assert status == {"vm0": "moved", "vm1": "moved", "vm2": "moved", "vm3": "failed",
                      "vm4": "moved", "vm5": "moved", "pinned": "blocked", "huge": "no-room"}
    assert not report.ok and report.dry_run is False
    assert report.counts() == {"moved": 5, "failed": 1, "blocked": 1, "no-room": 1}
    by_vm = {item.vm: item for item in report.vms}
    assert by_vm["vm0"].line() == "vm0 -> dst: moved in 1.5 s, downtime 42 ms"
    assert by_vm["vm3"].line() == ("vm3 -> dst: failed: migration of 'vm3' failed: "
                                   "connection reset")
    assert by_vm["pinned"].line() == "pinned -> dst: blocked: hostdev: a host device (detach it)"
    assert by_vm["huge"].line() == "huge -> -: no-room (no host has room: ...)"
    assert "vm0: migrating to dst" in lines and by_vm["vm3"].line() in lines


def test_one_at_a_time_with_the_migration_options(monkeypatch: pytest.MonkeyPatch,
                                                  fake: FakeMigrations) -> None:
    report = _evacuate(monkeypatch, _plan(["a", "b", "c"]), parallel=1, bandwidth_mib=50,
                       auto_converge=True, copy_storage=True)
    assert fake.most == 1 and report.ok
    assert {(o.bandwidth_mib, o.auto_converge, o.copy_storage) for o in fake.options} == {
        (50, True, True)}
    with pytest.raises(ValidationError, match="bandwidth 0"):
        _evacuate(monkeypatch, _plan(["a"]), bandwidth_mib=0)


def test_dry_run_moves_nothing(monkeypatch: pytest.MonkeyPatch, fake: FakeMigrations) -> None:
    report = _evacuate(monkeypatch, _plan(["a", "b"]), dry_run=True)
    assert fake.calls == [] and report.dry_run is True and report.ok
    assert [item.line() for item in report.vms] == [
        "a -> dst: planned (the most room: ...)", "b -> dst: planned (the most room: ...)"]


def test_cancel_starts_no_new_migration(monkeypatch: pytest.MonkeyPatch,
                                        fake: FakeMigrations) -> None:
    report = _evacuate(monkeypatch, _plan(["a", "b", "c"]), parallel=1,
                       cancelled=lambda: len(fake.calls) >= 1)
    assert [c[0] for c in fake.calls] == ["a"]
    assert [item.status for item in report.vms] == ["moved", "cancelled", "cancelled"]
    assert report.vms[1].error == "cancelled before it started"


def test_ctrl_c_cancels_the_running_migration_and_starts_no_new_one(
        monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []

    def migrate(caller: Caller, vm: str, options: MigrationOptions, *,
                source: str | None = None, progress: Any = None, cancelled: Any = None,
                db: Any = None) -> MigrationResult:
        calls.append(vm)
        os.kill(os.getpid(), signal.SIGINT)  # as Ctrl-C in the terminal
        deadline = time.monotonic() + 30
        while not cancelled() and time.monotonic() < deadline:
            time.sleep(0.01)
        raise CancelledError(f"migration of '{vm}' cancelled: it still runs on 'src'")

    monkeypatch.setattr(migration, "migrate", migrate)
    lines: list[str] = []
    report = _evacuate(monkeypatch, _plan(["a", "b"]), parallel=1, note=lines.append)
    assert calls == ["a"]
    assert [item.status for item in report.vms] == ["cancelled", "cancelled"]
    assert "still runs on 'src'" in (report.vms[0].error or "")
    assert "cancelling: no new migration starts, the running ones abort" in lines


# --------------------------------------------------------------------------- the plan
def test_plan_places_again_around_preflight_blockers(monkeypatch: pytest.MonkeyPatch
                                                     ) -> None:
    """A VM blocked on its best host goes to the next one that passes; a VM blocked
    everywhere is tried on three hosts at most and takes no room; the others go by
    room."""
    import contextlib

    from kvmops.host.capacity import VmTake
    from kvmops.migration.model import Preflight
    from kvmops.migration.placement import HostFacts
    from kvmops.services import hosts, placement

    GiB = 1024**3
    takes = [VmTake(name=n, running=True, memory=GiB, vcpus=1) for n in ("v1", "v2", "v3")]

    @contextlib.contextmanager
    def source(uri: str) -> Any:
        yield takes, ["off1"]

    def facts(caller: Caller, db: Any = None, *, deadline: float = 5, exclude: Any = ()
              ) -> list[HostFacts]:
        assert "src" in exclude
        return [HostFacts(name=n, reachable=True, cpus=8, memory_total=64 * GiB,
                          memory_free=free * GiB)
                for n, free in (("a", 40), ("b", 30), ("c", 20), ("d", 10))]

    checks: list[tuple[str, str]] = []

    def check(caller: Caller, vm: str, options: MigrationOptions, *,
              source: str | None = None, db: Any = None) -> Preflight:
        assert source == "src" and options.dry_run
        checks.append((vm, options.target))
        found = Preflight(vm=vm, source="src", target=options.target, kind="live")
        if vm == "v1" and options.target == "a":
            found.blockers.append(Blocker("local-disk", "disk vda is local", "copy it"))
        if vm == "v2":
            found.blockers.append(Blocker("hostdev", "a host device", "detach it"))
        return found

    monkeypatch.setattr(hosts, "uri_of", lambda caller, name, db=None: f"qemu+tcp://{name}/x")
    monkeypatch.setattr(evacuation, "_known", lambda db: [("src", "qemu+tcp://src/x", False)])
    monkeypatch.setattr(evacuation, "_source", source)
    monkeypatch.setattr(placement, "facts", facts)
    monkeypatch.setattr(migration, "check", check)
    monkeypatch.delenv("KVMOPS_VCPU_RATIO", raising=False)

    report = evacuation.plan_evacuation(Caller(name="t"), "src")
    by_vm = {item.vm: item for item in report.vms}
    assert report.staying == ["off1"] and report.dry_run
    assert by_vm["v3"].status == "planned" and by_vm["v3"].target == "a"
    assert by_vm["v1"].status == "planned" and by_vm["v1"].target == "b"
    assert by_vm["v1"].notes == ["not a: local-disk: disk vda is local"]
    assert "a: rejected: preflight: local-disk" in by_vm["v1"].hosts
    v2 = by_vm["v2"]
    assert (v2.status, v2.target) == ("blocked", "a")
    assert [b.code for b in v2.blockers] == ["hostdev"]
    assert v2.line() == "v2 -> a: blocked: hostdev: a host device (detach it)"
    assert len([c for c in checks if c[0] == "v2"]) == evacuation.MAX_TRIES
    assert "d: rejected: not tried (blocked on 3 hosts)" in v2.hosts
    assert not report.ok
