"""The run skeleton every backup engine shares: publish, clean-up, the one cancel error,
signals, events, the per-VM lock."""

from __future__ import annotations

import os
import re
import signal
import threading
from pathlib import Path

import pytest

from kvmops.backup import jobs
from kvmops.backup.keys import Keyring
from kvmops.backup.model import BackupType, Consistency, Manifest
from kvmops.backup.repository import Repository
from kvmops.backup.run import BackupRun, Cleanup, backup_time, exclusive
from kvmops.errors import BackupError, CancelledError, HostUnavailableError, StateError

VM = "web"


@pytest.fixture(autouse=True)
def state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("KVMOPS_STATE_DIR", str(tmp_path / "state"))
    return tmp_path / "state"


@pytest.fixture
def repo(tmp_path: Path) -> Repository:
    return Repository(tmp_path / "repo", Keyring(tmp_path / "keys"))


class Recorder:
    """An engine's clean-up hook: counts its calls and what the signals were meanwhile."""

    def __init__(self, run: BackupRun, extra: str = "", left: list[str] | None = None) -> None:
        self.run, self.extra, self.left = run, extra, left or []
        self.calls = 0
        self.sigterm_during: object = None

    def __call__(self) -> Cleanup:
        self.calls += 1
        self.sigterm_during = signal.getsignal(signal.SIGTERM)
        return Cleanup(self.run.removed(self.extra), list(self.left))


def events(backup_id: str) -> list[str]:
    return [e["event"] for e in jobs.read_events(VM) if e.get("backup_id") == backup_id]


def leftovers(repo: Repository) -> list[Path]:
    return list(repo.backups_dir(VM).iterdir())


def test_a_completed_run_publishes_and_says_so(repo: Repository) -> None:
    seen: list[tuple[int, int]] = []
    run = BackupRun(repo, VM, progress=lambda done, total: seen.append((done, total)))
    hook = Recorder(run)
    with run.running(BackupType.FULL, hook, transport="test") as partial:
        (partial / "vda.qcow2").write_bytes(b"x")
        run.report(1, 1)
        manifest = run.publish(run.manifest(
            type=BackupType.FULL, parent=None, checkpoint=None,
            consistency=Consistency.CRASH, disks=[]))
    assert hook.calls == 0 and seen == [(1, 1)]
    assert leftovers(repo) == [repo.backups_dir(VM) / run.backup_id]
    loaded = repo.load(VM, run.backup_id)
    assert isinstance(loaded, Manifest) and loaded.id == manifest.id
    assert manifest.time == backup_time(run.backup_id) and manifest.tool_version
    assert events(run.backup_id) == ["started", "completed"]
    started = next(e for e in jobs.read_events(VM) if e["event"] == "started")
    assert started["type"] == "full" and started["transport"] == "test"


def test_ctrl_c_is_the_one_cancel_error_saying_what_was_cleaned_up(repo: Repository
                                                                   ) -> None:
    run = BackupRun(repo, VM)
    hook = Recorder(run, " and checkpoint kvmops-x deleted")
    with pytest.raises(CancelledError) as caught, \
            run.running(BackupType.INCREMENTAL, hook) as partial:
        (partial / "vda.qcow2").write_bytes(b"x")
        raise KeyboardInterrupt
    assert str(caught.value).startswith(
        f"backup of VM '{VM}' cancelled (Ctrl-C): nothing was published; the unfinished "
        f"backup {run.backup_id} was removed and checkpoint kvmops-x deleted; the next backup")
    assert caught.value.exit_code == 130
    assert hook.calls == 1 and leftovers(repo) == []
    assert events(run.backup_id) == ["started", "cancelled"]


def test_sigterm_takes_the_clean_up_path_with_signals_held_off(repo: Repository) -> None:
    before = signal.getsignal(signal.SIGTERM)
    run = BackupRun(repo, VM)
    hook = Recorder(run)
    with pytest.raises(CancelledError, match=r"cancelled \(backup interrupted by signal "
                                             r"SIGTERM\): nothing was published"), \
            run.running(BackupType.FULL, hook):
        os.kill(os.getpid(), signal.SIGTERM)  # the handler runs before the next line
        pytest.fail("SIGTERM did not interrupt the run")
    assert hook.sigterm_during == signal.SIG_IGN  # the clean-up runs to its end
    assert signal.getsignal(signal.SIGTERM) == before
    assert leftovers(repo) == []


def test_sigterm_turned_into_another_error_on_the_way_up_is_still_a_cancel(
        repo: Repository) -> None:
    """Library code (a QMP call) may catch the interruption and raise its own error: the
    run was still cancelled by the signal, and says so."""
    from kvmops.backup.run import Interrupted

    run = BackupRun(repo, VM)
    hook = Recorder(run)
    with pytest.raises(CancelledError, match=r"cancelled \(backup interrupted by signal "
                                             r"SIGTERM\)"), \
            run.running(BackupType.FULL, hook):
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            pytest.fail("SIGTERM did not interrupt the run")
        except Interrupted as err:
            raise BackupError("the QMP connection was closed") from err
    assert hook.calls == 1 and leftovers(repo) == []
    assert events(run.backup_id) == ["started", "cancelled"]


def test_a_failure_is_raised_as_it_is_after_the_clean_up(repo: Repository) -> None:
    run = BackupRun(repo, VM)
    hook = Recorder(run)
    with pytest.raises(BackupError, match="backup job of VM 'web' failed: disk full"), \
            run.running(BackupType.FULL, hook):
        raise BackupError("backup job of VM 'web' failed: disk full")
    assert hook.calls == 1 and leftovers(repo) == []
    assert events(run.backup_id) == ["started", "failed"]


def test_what_libvirtd_could_not_clean_up_is_named(repo: Repository) -> None:
    run = BackupRun(repo, VM)
    hook = Recorder(run, left=["checkpoint kvmops-x"])
    with pytest.raises(HostUnavailableError) as caught, run.running(BackupType.FULL, hook):
        raise KeyboardInterrupt  # even a cancel: what is left matters more
    text = str(caught.value)
    assert text.startswith(f"lost the connection to libvirtd while backing up VM '{VM}': "
                           f"nothing was published and the unfinished backup {run.backup_id} "
                           "was removed; checkpoint kvmops-x is left for the next backup")
    assert f"the next 'kvmops backup create {VM}' cleans up first" in text


def test_outside_the_main_thread_no_handler_is_touched(repo: Repository) -> None:
    before = signal.getsignal(signal.SIGTERM)
    seen: list[object] = []

    def work() -> None:
        run = BackupRun(repo, VM)
        with run.running(BackupType.FULL, Recorder(run)):
            seen.append(signal.getsignal(signal.SIGTERM))
            run.publish(run.manifest(type=BackupType.FULL, parent=None, checkpoint=None,
                                     consistency=Consistency.CRASH, disks=[]))

    thread = threading.Thread(target=work)
    thread.start()
    thread.join()
    assert seen == [before]


def test_one_backup_of_a_vm_at_a_time_whatever_the_repository(tmp_path: Path,
                                                              repo: Repository) -> None:
    other = Repository(tmp_path / "other", Keyring(tmp_path / "keys"))
    with exclusive(repo, VM):
        refused = re.escape(f"a backup of VM '{VM}' is already running (pid {os.getpid()}, "
                            f"into {repo.root})")
        with pytest.raises(StateError, match=refused), exclusive(other, VM, "qmp"):
            pytest.fail("a second backup of the VM ran")
    with exclusive(other, VM):  # released
        pass


def test_a_failing_clean_up_still_discards_the_partial_backup(repo: Repository) -> None:
    run = BackupRun(repo, VM)

    def broken() -> Cleanup:
        raise HostUnavailableError("deleting checkpoint kvmops-x: lost the connection")

    with pytest.raises(HostUnavailableError, match="deleting checkpoint"), \
            run.running(BackupType.FULL, broken) as partial:
        (partial / "vda.qcow2").write_bytes(b"x")
        raise BackupError("backup job of VM 'web' failed: disk full")
    assert leftovers(repo) == []
    assert events(run.backup_id) == ["started", "failed"]
