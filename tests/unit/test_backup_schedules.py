"""Backup schedules with a fake clock and fake backups: due slots, one catch-up after
downtime, no pile-up, retry with backoff then report, concurrency limits, full every N,
the unique slot claim, the webhook."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from kvmops.errors import PathRefusedError, ValidationError
from kvmops.services import schedules as svc
from kvmops.services.caller import Caller
from kvmops.store import schedules as rows
from kvmops.store.db import Store
from tests.webhook import webhook_server

T0 = datetime(2026, 12, 1, 10, 0, tzinfo=UTC)
ROOT = Caller(name="root", role="admin", via="cli", trusted_paths=True)


class FakeClock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **kwargs: float) -> None:
        self.now += timedelta(**kwargs)


class FakeBackups:
    """Records each job; fails the VMs in ``failing``; can hold jobs on a gate."""

    def __init__(self) -> None:
        self.jobs: list[svc.Job] = []
        self.failing: set[str] = set()
        self.gate: threading.Event | None = None
        self.started = threading.Semaphore(0)
        self.lock = threading.Lock()

    def __call__(self, job: svc.Job) -> svc.Outcome:
        with self.lock:
            self.jobs.append(job)
        self.started.release()
        if self.gate is not None:
            self.gate.wait(30)
        if job.run.vm in self.failing:
            return svc.Outcome(ok=False, error=f"VM '{job.run.vm}' not found")
        n = len(self.jobs)
        return svc.Outcome(ok=True, backup_id=f"b{n}", kind="full" if job.full else
                           "incremental", pruned=0)


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Store]:
    store = Store(f"sqlite:///{tmp_path / 'kvmops.db'}")
    store.migrate()
    yield store
    store.close()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(T0)


def scheduler(db: Store, clock: FakeClock, fake: FakeBackups, **cfg: Any) -> svc.Scheduler:
    return svc.Scheduler(db, clock=clock, execute=fake,
                         cfg=svc.SchedulerSettings(**{"retry_minutes": (1.0, 5.0, 15.0),
                                                      **cfg}))


def add(db: Store, clock: FakeClock, tmp_path: Path, vm: str = "vm1", **fields: Any
        ) -> svc.ScheduleView:
    spec = {"vm": vm, "repo": str(tmp_path / "repo"), "cron": "0 * * * *", "keep_last": 3,
            **fields}
    return svc.add(db, ROOT, svc.ScheduleSpec(**spec), clock=clock)


def test_cron_slots() -> None:
    assert svc.next_slot("0 * * * *", T0) == T0 + timedelta(hours=1)
    assert svc.latest_slot("0 * * * *", T0, T0 + timedelta(minutes=59)) is None
    assert svc.latest_slot("0 * * * *", T0, T0 + timedelta(hours=1)) == T0 + timedelta(hours=1)
    assert svc.latest_slot("0 * * * *", T0, T0 + timedelta(hours=5, minutes=3)) \
        == T0 + timedelta(hours=5)
    # A time zone: 02:00 in Berlin is 01:00 UTC in winter.
    assert svc.next_slot("0 2 * * *", T0, "Europe/Berlin") == datetime(2026, 12, 2, 1, 0,
                                                                        tzinfo=UTC)
    with pytest.raises(ValidationError, match="not a cron expression"):
        svc.check_cron("every hour")


def test_a_run_is_due_at_each_cron_time(db: Store, clock: FakeClock, tmp_path: Path) -> None:
    fake = FakeBackups()
    sched = scheduler(db, clock, fake)
    schedule = add(db, clock, tmp_path)
    clock.advance(minutes=30)
    assert sched.run_due() == []
    clock.advance(minutes=30)
    first = sched.run_due()
    assert [(r.due_at, r.result, r.attempt, r.backup_id) for r in first] == \
        [(T0 + timedelta(hours=1), "ok", 1, "b1")]
    assert sched.run_due() == []  # the slot is done: nothing twice
    clock.advance(hours=1)
    assert [r.due_at for r in sched.run_due()] == [T0 + timedelta(hours=2)]
    assert [j.run.vm for j in fake.jobs] == ["vm1", "vm1"]
    assert svc.get(db, schedule.id).last_run is not None


def test_downtime_is_caught_up_once(db: Store, clock: FakeClock, tmp_path: Path) -> None:
    fake = FakeBackups()
    sched = scheduler(db, clock, fake)
    add(db, clock, tmp_path)
    clock.advance(hours=1)
    sched.run_due()
    clock.advance(hours=6, minutes=20)  # down over six slots
    caught = sched.run_due()
    assert [(r.due_at, r.result) for r in caught] == [(T0 + timedelta(hours=7), "ok")]
    assert sched.run_due() == []
    assert len(fake.jobs) == 2
    assert len(svc.runs(db)) == 2  # no row per missed slot


def test_no_pile_up_while_a_run_is_active(db: Store, clock: FakeClock, tmp_path: Path) -> None:
    fake = FakeBackups()
    fake.failing.add("vm1")
    sched = scheduler(db, clock, fake, retry_minutes=(90.0,))
    add(db, clock, tmp_path)
    clock.advance(hours=1)
    assert [r.result for r in sched.run_due()] == ["retrying"]
    clock.advance(hours=1)  # the next slot while the first waits for its retry
    touched = sched.run_due()
    assert [r.result for r in touched] == ["skipped"]
    assert "still retrying" in (touched[0].error or "")
    assert len(fake.jobs) == 1


def test_failure_retried_with_backoff_then_reported(db: Store, clock: FakeClock,
                                                     tmp_path: Path) -> None:
    fake = FakeBackups()
    fake.failing.add("vm1")
    with webhook_server("/hook") as (url, received):
        sched = scheduler(db, clock, fake, webhook=url)
        add(db, clock, tmp_path)
        clock.advance(hours=1)
        (run,) = sched.run_due()
        assert (run.result, run.attempt) == ("retrying", 1)
        assert run.next_attempt_at == clock.now + timedelta(minutes=1)
        clock.advance(seconds=59)
        assert sched.run_due() == []  # backoff not over
        clock.advance(seconds=1)
        (run,) = sched.run_due()
        assert (run.attempt, run.next_attempt_at) == (2, clock.now + timedelta(minutes=5))
        clock.advance(minutes=5)
        (run,) = sched.run_due()
        assert (run.attempt, run.next_attempt_at) == (3, clock.now + timedelta(minutes=15))
        assert received == []
        clock.advance(minutes=15)
        (run,) = sched.run_due()
        assert (run.result, run.attempt) == ("failed", 4)
        assert run.error == "VM 'vm1' not found"
    assert len(fake.jobs) == 4
    assert [(r["event"], r["vm"], r["attempts"], r["error"]) for r in received] == \
        [("backup.schedule.failed", "vm1", 4, "VM 'vm1' not found")]
    from kvmops.services.audit import entries

    audit = [(e.action, e.target, e.result) for e in entries(db)]
    assert audit == [("backup.schedule.failed", "vm1", "failed"),
                     ("backup.schedule.add", "vm1", "ok")]  # newest first


def test_concurrency_limits_per_repository_and_host(db: Store, clock: FakeClock,
                                                    tmp_path: Path) -> None:
    fake = FakeBackups()
    fake.gate = threading.Event()
    sched = scheduler(db, clock, fake, per_host=2, per_repository=1)
    add(db, clock, tmp_path, "a", repo=str(tmp_path / "r1"))
    add(db, clock, tmp_path, "b", repo=str(tmp_path / "r1"))
    add(db, clock, tmp_path, "c", repo=str(tmp_path / "r2"))
    add(db, clock, tmp_path, "d", repo=str(tmp_path / "r3"))
    clock.advance(hours=1)
    try:
        touched = sched.run_due(wait=False)
        assert fake.started.acquire(timeout=10) and fake.started.acquire(timeout=10)
        by_vm = {r.vm: r.result for r in touched}
        # r1 takes one (a), b waits for r1; c takes the host's second; d waits for the host.
        assert by_vm == {"a": "running", "b": "queued", "c": "running", "d": "queued"}
        assert sched.run_due(wait=False) == []  # still over the limits
    finally:
        fake.gate.set()
        sched.wait()
    fake.gate = None
    later = {r.vm: r.result for r in sched.run_due()}
    assert later == {"b": "ok", "d": "ok"}
    assert sorted(j.run.vm for j in fake.jobs) == ["a", "b", "c", "d"]


def test_every_nth_backup_is_a_full(db: Store, clock: FakeClock, tmp_path: Path) -> None:
    fake = FakeBackups()
    sched = scheduler(db, clock, fake)
    add(db, clock, tmp_path, full_every=3)
    for _ in range(7):
        clock.advance(hours=1)
        sched.run_due()
    assert [j.full for j in fake.jobs] == [True, False, False, True, False, False, True]


def test_a_slot_is_claimed_once_by_several_schedulers(db: Store, clock: FakeClock,
                                                      tmp_path: Path) -> None:
    fake = FakeBackups()
    one = scheduler(db, clock, fake)
    two = scheduler(db, clock, fake)
    schedule = add(db, clock, tmp_path)
    clock.advance(hours=1)
    assert len(one.claim_due(clock.now)) == 1
    assert two.claim_due(clock.now) == []
    row = rows.schedules(db)[0]
    assert rows.insert_run(db, schedule=row, vm="vm1", due_at=clock.now, trigger="cron",
                           result="queued", now=clock.now) is None
    one.run_due()
    two.run_due()
    assert len(fake.jobs) == 1 and schedule.id == row.id


def test_run_now_and_remove(db: Store, clock: FakeClock, tmp_path: Path) -> None:
    fake = FakeBackups()
    sched = scheduler(db, clock, fake)
    schedule = add(db, clock, tmp_path)
    (run,) = sched.run_now(schedule.id)
    assert (run.trigger, run.result, run.due_at) == ("manual", "ok", T0)
    clock.advance(hours=1)
    assert [r.trigger for r in sched.run_due()] == ["cron"]  # a manual run moves no slot
    svc.remove(db, ROOT, schedule.id)
    assert svc.list_schedules(db) == [] and svc.runs(db) == []


def test_add_checks_its_input(db: Store, clock: FakeClock, tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="keeps nothing"):
        add(db, clock, tmp_path, keep_last=0, keep_daily=0)
    with pytest.raises(ValidationError, match="one of them"):
        add(db, clock, tmp_path, tag="web")
    with pytest.raises(ValidationError, match="not a compression"):
        add(db, clock, tmp_path, compress="gzip")
    api = Caller(name="op", role="operator", via="api")
    with pytest.raises(PathRefusedError):
        svc.add(db, api, svc.ScheduleSpec(vm="vm1", repo="/etc", cron="@daily", keep_last=1))
    with pytest.raises(PathRefusedError):
        svc.add(db, api, svc.ScheduleSpec(vm="vm1", repo="sftp://u@example.org/x",
                                          cron="@daily", keep_last=1))
    with pytest.raises(PathRefusedError, match="key file"):
        svc.check_key_file(api, "/etc/shadow")
    ok = add(db, clock, tmp_path, compress="zstd:5", key_file="/etc/kvmops/k.key")
    assert (ok.compress, ok.key_file) == ("zstd:5", "/etc/kvmops/k.key")
    assert ok.next_due is not None


def test_job_request_carries_the_key_file_path_never_a_key(db: Store, clock: FakeClock,
                                                           tmp_path: Path) -> None:
    key = tmp_path / "repo.key"
    key.write_text("secret-words")
    add(db, clock, tmp_path, key_file=str(key), compress="zstd", keep_daily=7)
    row = rows.schedules(db)[0]
    run = rows.insert_run(db, schedule=row, vm="vm1", due_at=T0, trigger="manual",
                          result="queued", now=T0)
    assert run is not None
    request = svc.job_request(svc.Job(schedule=row, run=run, full=False, uri=None))
    assert request["key_file"] == str(key) and "secret-words" not in json.dumps(request)
    assert request["retention"]["keep_daily"] == 7
    assert request["compress"] == "zstd"
    # The database holds no key either.
    assert b"secret-words" not in (tmp_path / "kvmops.db").read_bytes()


def test_the_shipped_systemd_units_verify(tmp_path: Path) -> None:
    """``kvmops backup schedule systemd-units --install DIR`` writes a service + timer
    pair systemd accepts (ExecStart pointed at this environment's kvmops)."""
    import shutil
    import subprocess
    import sys

    from tests.conftest import run_cli

    assert shutil.which("systemd-analyze"), "systemd-analyze (package systemd) is needed"
    result = run_cli("backup", "schedule", "systemd-units", "--install", str(tmp_path))
    assert result.code == 0, result.stderr
    service = tmp_path / "kvmops-backup-schedules.service"
    timer = tmp_path / "kvmops-backup-schedules.timer"
    assert "ExecStart=/usr/local/bin/kvmops backup schedule run-due" in service.read_text()
    assert "OnCalendar=minutely" in timer.read_text()
    kvmops_bin = Path(sys.executable).parent / "kvmops"
    service.write_text(service.read_text().replace("/usr/local/bin/kvmops", str(kvmops_bin)))
    proc = subprocess.run(["systemd-analyze", "verify", str(timer), str(service)],
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0 and not proc.stderr.strip(), proc.stderr
    printed = run_cli("backup", "schedule", "systemd-units")
    assert "# ---- kvmops-backup-schedules.timer" in printed.stdout


def test_metrics_of_a_schedule(db: Store, clock: FakeClock, tmp_path: Path) -> None:
    """The collector's series: the expected interval (what the overdue alert measures
    by), the last run's time and result, the last success (creation before one)."""
    from kvmops.metrics import collector
    from kvmops.metrics.model import Scrape

    fake = FakeBackups()
    sched = scheduler(db, clock, fake, retry_minutes=())
    schedule = add(db, clock, tmp_path, "ok-vm", cron="0 */6 * * *")
    add(db, clock, tmp_path, "bad-vm", cron="@daily", repo=str(tmp_path / "r2"))
    fake.failing.add("bad-vm")
    (before, _) = svc.schedule_samples(db)
    assert (before.interval_s, before.last_run_time, before.last_success) == (6 * 3600, None,
                                                                             None)
    assert before.last_success_time == T0.timestamp()  # its creation
    clock.advance(days=1)
    sched.run_due()
    ok, bad = svc.schedule_samples(db)
    assert (ok.schedule, ok.domain, ok.last_success) == (schedule.id, "ok-vm", True)
    assert ok.last_success_time == ok.last_run_time == clock.now.timestamp()
    assert (bad.domain, bad.interval_s, bad.last_success) == ("bad-vm", 86400, False)
    assert bad.last_success_time == T0.timestamp()
    series = {(s.name, s.labels.get("domain")): s.value
              for family in collector.families(Scrape(schedules=(ok, bad)))
              for s in family.samples}
    assert series[("kvmops_backup_schedule_last_success", "bad-vm")] == 0.0
    assert series[("kvmops_backup_schedule_interval_seconds", "ok-vm")] == 21600.0
    assert series[("kvmops_backup_schedule_last_run_time_seconds", "ok-vm")] == \
        clock.now.timestamp()


def test_a_tag_schedule_runs_each_vm_carrying_the_tag(db: Store, clock: FakeClock,
                                                      tmp_path: Path) -> None:
    """One run per VM with the tag at each slot (the VMs are looked up at each pass)."""
    fake = FakeBackups()
    tagged = {"nightly": ["web1", "web2"]}
    sched = svc.Scheduler(db, clock=clock, execute=fake,
                          resolve=lambda s: tagged.get(s.tag or "", []),
                          cfg=svc.SchedulerSettings(per_repository=5, per_host=5))
    svc.add(db, ROOT, svc.ScheduleSpec(tag="nightly", repo=str(tmp_path / "r"),
                                       cron="@hourly", keep_last=1), clock=clock)
    clock.advance(hours=1)
    assert sorted((r.vm, r.result) for r in sched.run_due()) == [("web1", "ok"),
                                                                 ("web2", "ok")]
    tagged["nightly"] = ["web2", "web3"]
    clock.advance(hours=1)
    assert sorted(r.vm for r in sched.run_due()) == ["web2", "web3"]
    with pytest.raises(ValidationError, match="not a tag"):
        svc.add(db, ROOT, svc.ScheduleSpec(tag="a b", repo=str(tmp_path / "r"),
                                           cron="@daily", keep_last=1), clock=clock)


def test_tags_live_in_kvmops_metadata_element() -> None:
    from kvmops.vm import tags

    xml = ("<domain><name>x</name><metadata><kvmopstags:tags xmlns:kvmopstags="
           f"'{tags.TAGS_NS}'><kvmopstags:tag name='web'/><kvmopstags:tag name='a'/>"
           "<kvmopstags:tag name='bad tag'/></kvmopstags:tags></metadata></domain>")
    assert tags.parse_tags(xml) == ["a", "web"]
    assert tags.parse_tags("<domain><name>x</name></domain>") == []
    assert tags.tags_xml(["web", "a", "web"]) == '<tags><tag name="a"/><tag name="web"/></tags>'


def test_the_server_thread_runs_due_slots_and_stops(db: Store, clock: FakeClock,
                                                    tmp_path: Path) -> None:
    """kvmops serve's scheduler thread: a pass per tick runs what came due; stop() ends
    the loop and waits for the backup in flight."""
    fake = FakeBackups()
    fake.gate = threading.Event()
    thread = svc.SchedulerThread(db, tick=0.05, scheduler=scheduler(db, clock, fake))
    add(db, clock, tmp_path)
    thread.start()
    try:
        clock.advance(hours=1)
        assert fake.started.acquire(timeout=30)  # the next pass started the backup
        (run,) = svc.runs(db)
        assert run.result == "running"
    finally:
        fake.gate.set()
        thread.stop(grace=30)
    assert not thread._thread.is_alive()
    assert [(r.result, r.backup_id) for r in svc.runs(db)] == [("ok", "b1")]


def test_a_schedule_names_a_known_host(db: Store, clock: FakeClock, tmp_path: Path) -> None:
    from kvmops.errors import NotFoundError

    with pytest.raises(NotFoundError, match="nohost"):
        add(db, clock, tmp_path, host="nohost")
    assert add(db, clock, tmp_path).host == "local"
