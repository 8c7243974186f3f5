"""Backup schedules through the real stack: ``kvmops backup schedule`` with a fake clock
(``run-due --now``) backing up real VMs into real repositories through the child-process
worker: a shut-off VM (the offline engine) and the session's running guest (libvirt's
push engine: fulls and incrementals as --full-every asks)."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import SESSION_PREFIX, run_cli
from tests.integration.backup_util import list_backups, restore_hash, write_random
from tests.webhook import webhook_server


@pytest.fixture
def db_env(tmp_path: Path) -> dict[str, str]:
    return {"KVMOPS_DB": f"sqlite:///{tmp_path / 'kvmops.db'}"}


def cli_json(env: dict[str, str], *args: str) -> Any:
    result = run_cli("backup", "schedule", *args, "--json", env=env)
    assert result.code == 0, result.stderr
    return json.loads(result.stdout)


def iso(value: datetime) -> str:
    return value.strftime("%Y-%m-%dT%H:%M:%SZ")


def next_hour() -> datetime:
    """The first full hour after now: schedules added now have their first slot there."""
    now = datetime.now(UTC)
    return now.replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)


@pytest.fixture(scope="module")
def scheduled_vm(vm_factory: Callable[..., str]) -> str:
    return vm_factory()


def test_schedule_fires_catches_up_once_and_applies_retention(
        scheduled_vm: str, repo_dir: Path, db_env: dict[str, str]) -> None:
    vm = scheduled_vm
    added = cli_json(db_env, "add", vm, "--repo", str(repo_dir), "--every", "0 * * * *",
                     "--keep-last", "2", "--full-every", "3")
    t = next_hour()
    assert added["next_due"] == iso(t)
    assert cli_json(db_env, "run-due", "--now", iso(t - timedelta(minutes=1))) == []

    # The first slot fires: a full backup lands in the repository.
    (first,) = cli_json(db_env, "run-due", "--now", iso(t + timedelta(minutes=1)))
    assert (first["due_at"], first["result"], first["kind"]) == (iso(t), "ok", "full")
    points = list_backups(vm, repo_dir)
    assert [p["id"] for p in points] == [first["backup_id"]]
    assert cli_json(db_env, "run-due", "--now", iso(t + timedelta(minutes=2))) == []

    # Down from t+1min to t+4h05: four slots passed, exactly one catch-up run.
    (caught,) = cli_json(db_env, "run-due", "--now", iso(t + timedelta(hours=4, minutes=5)))
    assert (caught["due_at"], caught["result"]) == (iso(t + timedelta(hours=4)), "ok")
    assert len(cli_json(db_env, "runs")) == 2
    assert len(list_backups(vm, repo_dir)) == 2

    # The third backup: retention (keep-last 2) removes the oldest point after it.
    (third,) = cli_json(db_env, "run-due", "--now", iso(t + timedelta(hours=5)))
    assert (third["result"], third["pruned"]) == ("ok", 1)
    kept = list_backups(vm, repo_dir)
    assert [p["id"] for p in kept] == [caught["backup_id"], third["backup_id"]]
    assert first["backup_id"] not in {p["id"] for p in kept}
    assert [p["type"] for p in kept] == [caught["kind"], third["kind"]]  # as recorded
    verify = run_cli("backup", "verify", vm, "--repo", str(repo_dir))
    assert verify.code == 0, verify.stderr

    # run-now: a manual run with the same rules (a shut-off VM's backups are fulls:
    # which backup the schedule asks to be a full is tests/unit/test_backup_schedules.py's).
    (fourth,) = cli_json(db_env, "run-now", str(added["id"]))
    assert (fourth["trigger"], fourth["result"], fourth["kind"]) == ("manual", "ok", "full")
    assert [p["id"] for p in list_backups(vm, repo_dir)] == [third["backup_id"],
                                                             fourth["backup_id"]]
    runs = cli_json(db_env, "runs", str(added["id"]))  # newest slot first: the fake
    assert [r["id"] for r in runs] == [third["id"], caught["id"], first["id"],  # clock
                                       fourth["id"]]  # ran ahead of run-now's real one


@pytest.fixture
def webhook() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """A loopback HTTP server recording the JSON POSTed to it."""
    with webhook_server() as hook:
        yield hook


def test_a_failing_run_is_retried_then_reported(
        repo_dir: Path, db_env: dict[str, str], tmp_path: Path,
        webhook: tuple[str, list[dict[str, Any]]]) -> None:
    url, received = webhook
    env = {**db_env, "KVMOPS_SCHEDULE_WEBHOOK": url, "KVMOPS_SCHEDULE_RETRY_MINUTES": "1 5"}
    missing = f"{SESSION_PREFIX}schedule-missing"
    added = cli_json(env, "add", missing, "--repo", str(repo_dir), "--every", "@hourly",
                     "--keep-daily", "7")
    t = next_hour()
    (run,) = cli_json(env, "run-due", "--now", iso(t))
    assert (run["result"], run["attempt"]) == ("retrying", 1)
    assert run["next_attempt_at"] == iso(t + timedelta(minutes=1))
    assert missing in run["error"] and "not found" in run["error"]
    assert cli_json(env, "run-due", "--now", iso(t + timedelta(seconds=30))) == []
    (run,) = cli_json(env, "run-due", "--now", iso(t + timedelta(minutes=1)))
    assert (run["result"], run["attempt"]) == ("retrying", 2)
    assert received == []
    (run,) = cli_json(env, "run-due", "--now", iso(t + timedelta(minutes=6)))
    assert (run["result"], run["attempt"]) == ("failed", 3)
    # Reported: the webhook got it, the audit log has it, nothing landed in the repo.
    assert [(r["event"], r["schedule"], r["vm"], r["attempts"]) for r in received] == \
        [("backup.schedule.failed", added["id"], missing, 3)]
    assert "not found" in received[0]["error"]
    with sqlite3.connect(tmp_path / "kvmops.db") as conn:
        rows = conn.execute("SELECT action, target, result FROM audit_log WHERE action "
                            "LIKE 'backup.schedule.%' ORDER BY id").fetchall()
    assert rows == [("backup.schedule.add", missing, "ok"),
                    ("backup.schedule.failed", missing, "failed")]
    assert not (repo_dir / missing).exists()
    # run-now of it exits non-zero naming the run's state.
    result = run_cli("backup", "schedule", "run-now", str(added["id"]), env=env)
    assert result.code != 0 and "not found" in result.stderr


def test_a_tag_schedule_covers_the_vms_tagged(scheduled_vm: str, repo_dir: Path,
                                              db_env: dict[str, str]) -> None:
    """``vm tag add`` records the tag in the VM's definition; a ``--tag`` schedule backs
    up each VM carrying it at the next slot."""
    vm = scheduled_vm
    tag = f"sched{SESSION_PREFIX.replace('-', '')}"[:60]
    added = run_cli("vm", "tag", "add", vm, tag, "nightly")
    assert added.code == 0, added.stderr
    listed = run_cli("vm", "tag", "list", vm, "--json")
    assert json.loads(listed.stdout) == {vm: sorted(["nightly", tag])}
    schedule = cli_json(db_env, "add", "--tag", tag, "--repo", str(repo_dir), "--every",
                        "@hourly", "--keep-last", "2")
    assert (schedule["vm"], schedule["tag"]) == (None, tag)
    own = cli_json(db_env, "add", vm, "--repo", str(repo_dir), "--every", "0 3 * * *",
                   "--keep-last", "1")
    # --vm: the VM's own; --covering: its own and its tags' (what the VM page shows)
    assert [s["id"] for s in cli_json(db_env, "list", "--vm", vm)] == [own["id"]]
    assert [s["id"] for s in cli_json(db_env, "list", "--covering", vm)] == \
        [schedule["id"], own["id"]]
    assert run_cli("backup", "schedule", "remove", str(own["id"]), env=db_env).code == 0
    t = next_hour()
    (run,) = cli_json(db_env, "run-due", "--now", iso(t))
    assert (run["vm"], run["result"]) == (vm, "ok")
    assert [p["id"] for p in list_backups(vm, repo_dir)] == [run["backup_id"]]
    removed = run_cli("vm", "tag", "remove", vm, tag)
    assert removed.code == 0, removed.stderr
    assert cli_json(db_env, "run-due", "--now", iso(t + timedelta(hours=1))) == []
    assert cli_json(db_env, "list", "--covering", vm) == []  # the tag is gone
    by_tag = run_cli("vm", "tag", "list", "--tag", "nightly", "--json")
    assert vm in json.loads(by_tag.stdout)


def test_a_schedule_into_a_compressed_encrypted_repository(
        scheduled_vm: str, repo_dir: Path, db_env: dict[str, str], tmp_path: Path) -> None:
    """The schedule stores the key file's path, never the key: its first run makes the
    repository encrypted (and the key file), later runs and its prune open it with it."""
    vm = scheduled_vm
    key = tmp_path / "repo.key"
    repo = repo_dir / "sealed"
    schedule = cli_json(db_env, "add", vm, "--repo", str(repo), "--every", "@hourly",
                        "--keep-last", "1", "--compress", "zstd:3", "--key-file", str(key))
    assert schedule["key_file"] == str(key)
    t = next_hour()
    (first,) = cli_json(db_env, "run-due", "--now", iso(t))
    assert first["result"] == "ok", first
    secret = key.read_bytes()
    assert secret and secret not in (tmp_path / "kvmops.db").read_bytes()
    (second,) = cli_json(db_env, "run-due", "--now", iso(t + timedelta(hours=1)))
    assert (second["result"], second["pruned"]) == ("ok", 1), second
    without = run_cli("backup", "list", vm, "--repo", str(repo), "--json")
    assert without.code != 0 and "key" in without.stderr
    listed = run_cli("backup", "list", vm, "--repo", str(repo), "--key-file", str(key),
                     "--json")
    assert listed.code == 0, listed.stderr
    assert [p["id"] for p in json.loads(listed.stdout)] == [second["backup_id"]]


def test_a_schedule_of_a_running_vm_mixes_fulls_and_incrementals(
        backup_guest: str, repo_dir: Path, db_env: dict[str, str], tmp_path: Path) -> None:
    """The session's running guest (the libvirt engine): --full-every 2 makes the 1st and
    3rd runs fulls and the 2nd an incremental on the 1st, each restoring to the guest's
    disk as it was at its run."""
    vm = backup_guest
    added = cli_json(db_env, "add", vm, "--repo", str(repo_dir), "--every", "0 * * * *",
                     "--keep-last", "5", "--full-every", "2")
    t = next_hour()
    assert added["next_due"] == iso(t)
    runs, digests = [], []
    for step in range(3):
        digests.append(write_random(vm, 5 + 3 * step, 1))
        (run,) = cli_json(db_env, "run-due", "--now", iso(t + timedelta(hours=step,
                                                                        minutes=1)))
        assert run["result"] == "ok", run
        runs.append(run)
    assert [r["kind"] for r in runs] == ["full", "incremental", "full"]
    points = {p["id"]: p for p in list_backups(vm, repo_dir)}
    assert points[runs[1]["backup_id"]]["parent"] == runs[0]["backup_id"]
    for index, (run, digest) in enumerate(zip(runs, digests, strict=True)):
        assert restore_hash(vm, repo_dir, run["backup_id"], tmp_path / f"r{index}") == digest
