"""Clear one-line failures of ``kvmops guest`` when the agent cannot be reached."""

from __future__ import annotations

import socket
from collections.abc import Callable
from pathlib import Path

from tests.conftest import SESSION_PREFIX, assert_one_line_error, run_cli


def test_agent_not_configured(vm_factory: Callable[..., str]) -> None:
    name = vm_factory("--no-agent")
    assert_one_line_error(run_cli("guest", "ping", name), 14, name, "no guest agent channel")


def test_vm_not_running(fresh_vm: str) -> None:
    result = run_cli("guest", "exec", fresh_vm, "--", "true")
    assert_one_line_error(result, 5, fresh_vm, "not running")


def test_vm_not_found() -> None:
    result = run_cli("guest", "ping", f"{SESSION_PREFIX}does-not-exist")
    assert_one_line_error(result, 3, "does-not-exist", "not found")


def test_paused_vm_agent_is_silent(fresh_vm: str) -> None:
    result = run_cli("vm", "start", fresh_vm, "--paused")
    assert result.code == 0, result.stderr
    result = run_cli("guest", "ping", fresh_vm)
    assert_one_line_error(result, 15, fresh_vm, "paused")


def test_socket_nobody_listens(tmp_path: Path) -> None:
    path = tmp_path / "kvmops-test-qga.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.close()
    assert_one_line_error(run_cli("guest", "ping", "--socket", str(path)), 15, str(path))
    assert_one_line_error(run_cli("guest", "ping", "--tcp", "127.0.0.1:1"), 15, "127.0.0.1:1")


def test_target_must_be_one() -> None:
    result = run_cli("guest", "ping", "some-vm", "--socket", "/x")
    assert_one_line_error(result, 2, "exactly one")
