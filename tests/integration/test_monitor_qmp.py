"""``kvmops qmp`` on a libvirt VM (the shared running guest) and its refusals."""

from __future__ import annotations

import json

from tests.conftest import assert_one_line_error, run_cli


def test_query_status_prints_return_value(running_vm: str) -> None:
    result = run_cli("qmp", running_vm, '{"execute":"query-status"}')
    assert result.code == 0, result.stderr
    reply = json.loads(result.stdout)
    assert reply["status"] == "running"
    assert "\n  " in result.stdout  # pretty by default


def test_raw_output_is_one_compact_line(running_vm: str) -> None:
    result = run_cli("qmp", running_vm, '{"execute":"query-status"}', "--raw")
    assert result.code == 0, result.stderr
    assert result.stdout.count("\n") == 1
    assert json.loads(result.stdout)["running"] is True


def test_hmp_info_block_mentions_vda(running_vm: str) -> None:
    result = run_cli("qmp", running_vm, "--hmp", "info block")
    assert result.code == 0, result.stderr
    assert "vda" in result.stdout
    assert "virtio-disk0" in result.stdout


def test_an_unknown_hmp_command_fails_in_one_line(running_vm: str) -> None:
    assert_one_line_error(run_cli("qmp", running_vm, "--hmp", "nosuchcmd"), 12,
                          "nosuchcmd", "unknown command")


def test_list_contains_query_status(running_vm: str) -> None:
    result = run_cli("qmp", running_vm, "--list")
    assert result.code == 0, result.stderr
    assert "query-status" in result.stdout.split()


def test_invalid_json_is_a_validation_error(running_vm: str) -> None:
    assert_one_line_error(run_cli("qmp", running_vm, '{"execute": "query-status"'), 2,
                          "invalid QMP command JSON")


def test_unknown_command_is_a_qmp_error_with_class(running_vm: str) -> None:
    result = run_cli("qmp", running_vm, '{"execute":"kvmops-no-such-command"}')
    assert_one_line_error(result, 12, "CommandNotFound", "kvmops-no-such-command", running_vm)


def test_bad_arguments_are_a_qmp_error(running_vm: str) -> None:
    result = run_cli("qmp", running_vm,
                     '{"execute":"query-named-block-nodes","arguments":{"bogus":1}}')
    assert_one_line_error(result, 12, "GenericError", "bogus")


def test_vm_not_running_is_a_state_error(fresh_vm: str) -> None:
    assert_one_line_error(run_cli("qmp", fresh_vm, "query-status"), 5, fresh_vm, "not running")


def test_unknown_vm_is_not_found() -> None:
    assert_one_line_error(run_cli("qmp", "kvmops-test-no-such-vm", "query-status"), 3,
                          "kvmops-test-no-such-vm")


def test_missing_socket_names_the_socket() -> None:
    path = "/tmp/kvmops-test-no-such-dir/qmp.sock"
    assert_one_line_error(run_cli("qmp", "--socket", path, "query-status"), 11, path,
                          "does not exist")


def test_refused_tcp_monitor() -> None:
    # port 9 (discard) is closed on this host: nothing listens there
    assert_one_line_error(run_cli("qmp", "--tcp", "127.0.0.1:9", "query-status"), 11,
                          "127.0.0.1:9", "refused")


def test_vm_and_socket_together_is_a_usage_error(running_vm: str) -> None:
    result = run_cli("qmp", running_vm, "--socket", "/tmp/x.sock", "query-status")
    assert_one_line_error(result, 2, "wrong arguments")
