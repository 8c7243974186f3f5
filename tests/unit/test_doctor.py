"""The doctor's rules and its host-independent checks, on temporary files."""

from __future__ import annotations

import socket
from pathlib import Path

from kvmops.services import doctor
from kvmops.services.doctor import GIB, Status, memory_status, space_status, summarize


def test_space_rules() -> None:
    assert space_status(512 * 1024**2, 100 * GIB) is Status.FAIL
    assert space_status(3 * GIB, 100 * GIB) is Status.WARN  # under 5 GiB
    assert space_status(8 * GIB, 100 * GIB) is Status.WARN  # under 10 %
    assert space_status(20 * GIB, 100 * GIB) is Status.OK


def test_memory_rules() -> None:
    assert memory_status(10 * GIB, 8 * GIB, 4 * GIB) is Status.WARN  # overcommitted
    assert memory_status(2 * GIB, 8 * GIB, 100 * 1024**2) is Status.WARN  # nearly none left
    assert memory_status(2 * GIB, 8 * GIB, 4 * GIB) is Status.OK
    assert memory_status(0, 8 * GIB, None) is Status.OK


def test_summary_counts() -> None:
    checks = [doctor.Check(name="a", status=Status.OK, detail=""),
              doctor.Check(name="b", status=Status.WARN, detail=""),
              doctor.Check(name="c", status=Status.FAIL, detail="", hint="do x")]
    report = summarize("qemu:///system", checks)
    assert (report.ok, report.failed, report.warnings) == (False, 1, 1)
    assert summarize("u", checks[:2]).ok is True


def test_virtlogd_socket(tmp_path: Path) -> None:
    path = tmp_path / "virtlogd-sock"
    missing = doctor.check_virtlogd(path)
    assert missing.status is Status.FAIL and "virtlogd -d" in (missing.hint or "")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
        server.bind(str(path))
        refused = doctor.check_virtlogd(path)  # bound, not listening
        assert refused.status is Status.FAIL and "does not answer" in refused.detail
        server.listen(1)
        assert doctor.check_virtlogd(path).status is Status.OK


def test_directory_checks(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    under_file = doctor.check_directory("images-dir", blocker / "images", images=True)
    assert under_file.status is Status.FAIL and "not a directory" in under_file.detail
    assert "KVMOPS_IMAGES_DIR" in (under_file.hint or "")
    closed = tmp_path / "closed"
    (closed / "images").mkdir(parents=True)
    closed.chmod(0o700)  # QEMU's user could not reach images below it
    try:
        unreachable = doctor.check_directory("images-dir", closed / "images", images=True)
        assert unreachable.status is Status.FAIL and "chmod o+x" in (unreachable.hint or "")
        # the state directory is kvmops' own: no QEMU access needed
        state = doctor.check_directory("state-dir", closed / "images", images=False)
        assert "search permission" not in state.detail and "chmod" not in (state.hint or "")
    finally:
        closed.chmod(0o755)
    fresh = doctor.check_directory("state-dir", tmp_path / "not-yet", images=False)
    assert "created on first use" in fresh.detail


def test_io_limit_controllers(tmp_path: Path) -> None:
    assert doctor.check_io_limits(tmp_path).status is Status.WARN
    (tmp_path / "cgroup.controllers").write_text("cpu io memory\n")
    assert doctor.check_io_limits(tmp_path).status is Status.OK
