"""``--host NAME`` on the command line: one resolution (kvmops.cli.quick.host_uri, through
kvmops.cli.common.on_host on the Typer path), the conflicts it refuses, an unknown host,
the quick paths' parsing, every command with ``--connect`` also taking ``--host``, and
``vm list --host all`` with a host that does not answer (libvirt's test driver as the
local host; the real second host is tests/integration/test_host_option.py)."""

from __future__ import annotations

import json
from pathlib import Path

import click
import pytest

from kvmops.cli import main, quick
from kvmops.errors import NotFoundError, ValidationError
from kvmops.services import hosts
from kvmops.services.caller import Caller
from tests.conftest import assert_one_line_error, run_cli

DOWN = "qemu+tcp://127.0.0.1:1/system"  # nothing listens on port 1: refused at once
#: Commands with --connect that act on this machine only (no --host, on purpose).
LOCAL_ONLY = {"host info", "sriov reconcile", "net unbridge", "serve"}
#: Commands whose --host means something else (pool create: the storage server).
ON_HOST = {"pool create"}


@pytest.fixture
def state(tmp_path: Path) -> dict[str, str]:
    """An environment with a database of its own and libvirt's test driver as local."""
    return {"KVMOPS_DB": f"sqlite:///{tmp_path / 'state.db'}", "KVMOPS_URI": "test:///default",
            "KVMOPS_STATE_DIR": str(tmp_path)}


def test_resolution_rules(monkeypatch: pytest.MonkeyPatch) -> None:
    asked: list[str | None] = []
    monkeypatch.setattr(hosts, "uri_of",
                        lambda caller, name: asked.append(name) or "qemu+tcp://h/system")
    assert quick.host_uri("test:///x", None, connect_given=True) == "test:///x"
    assert quick.host_uri(None, None, connect_given=False) is None
    assert quick.host_uri("test:///env", "h2", connect_given=False) == "qemu+tcp://h/system"
    assert asked == ["h2"]
    with pytest.raises(ValidationError, match="--host and --connect"):
        quick.host_uri("test:///x", "h2", connect_given=True)
    with pytest.raises(ValidationError, match="--socket"):
        quick.host_uri(None, "h2", connect_given=False, local_only="--socket")
    with pytest.raises(ValidationError, match="vm list"):
        quick.host_uri(None, "all", connect_given=False)
    assert quick.host_uri(None, "all", connect_given=False, all_ok=True) is None
    assert asked == ["h2"]


def test_unknown_host_is_not_found_naming_host_list(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'state.db'}"
    with pytest.raises(NotFoundError) as err:
        hosts.uri_of(Caller.local(), "nope", db)
    assert "kvmops host list" in str(err.value)
    hosts.add_host(Caller.local(), "h2", DOWN, db, check=False)
    assert hosts.uri_of(Caller.local(), "h2", db) == DOWN
    for reserved in ("all", "auto"):
        with pytest.raises(ValidationError, match="reserved"):
            hosts.add_host(Caller.local(), reserved, DOWN, db, check=False)


@pytest.mark.parametrize("args", [
    ["vm", "info", "x", "--host", "nope"],  # quick path
    ["vm", "list", "--host=nope", "--json"],  # quick path
    ["guest", "exec", "x", "--host", "nope", "--", "true"],  # quick path
    ["vm", "start", "x", "--host", "nope"],  # Typer
    ["snapshot", "list", "x", "--host", "nope"],
    ["net", "list", "--host", "nope"],
    ["pool", "create", "p", "--type", "dir", "--target", "/tmp/p", "--on-host", "nope"],
])
def test_unknown_host_is_one_line(args: list[str], state: dict[str, str]) -> None:
    assert_one_line_error(run_cli(*args, env=state), 3, "host 'nope' not found",
                          "kvmops host list")


@pytest.mark.parametrize("args", [
    ["vm", "info", "test", "--host", "local", "-c", "test:///default"],  # quick path
    ["vm", "list", "--connect=test:///default", "--host", "all"],
    ["guest", "exec", "test", "-c", "test:///default", "--host", "local", "--", "true"],
    ["vm", "dumpxml", "test", "--host", "local", "--connect", "test:///default"],  # Typer
    ["pool", "list", "--host", "local", "-c", "test:///default"],
    ["pool", "create", "p", "--type", "dir", "--target", "/tmp/p", "--on-host", "local",
     "-c", "test:///default"],
])
def test_host_with_connect_is_a_usage_error(args: list[str], state: dict[str, str]) -> None:
    option = "--on-host" if "--on-host" in args else "--host"
    assert_one_line_error(run_cli(*args, env=state), 2, f"{option} and --connect")


@pytest.mark.parametrize(("args", "option"), [
    (["guest", "ping", "--socket", "/run/nothing.sock", "--host", "local"], "--socket"),
    (["qmp", "--tcp", "127.0.0.1:1", "--host", "local", '{"execute": "query-status"}'],
     "--tcp"),
    (["backup", "create", "x", "--repo", "/var/lib/kvmops/backups/r", "--socket", "/run/q",
      "--host", "local"], "--socket"),
    (["net", "create", "n", "--mode", "bridge", "--uplink", "eth9", "--host", "local"],
     "--uplink"),
    (["vm", "info", "test", "--host", "all"], "vm list"),
])
def test_host_with_a_local_socket_is_a_usage_error(args: list[str], option: str,
                                                    state: dict[str, str]) -> None:
    assert_one_line_error(run_cli(*args, env=state), 2, option)


def test_kvmops_uri_is_a_default_that_host_overrides(state: dict[str, str]) -> None:
    """KVMOPS_URI set (as in every test and many shells) and --host local: no conflict."""
    quick_info = run_cli("vm", "info", "test", "--host", "local", "--json", env=state)
    assert quick_info.code == 0, quick_info.stderr
    assert json.loads(quick_info.stdout)["name"] == "test"
    typer_xml = run_cli("vm", "dumpxml", "test", "--host", "local", env=state)
    assert typer_xml.code == 0, typer_xml.stderr
    assert "<name>test</name>" in typer_xml.stdout


def test_quick_forms_take_host(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[object, ...]] = []
    monkeypatch.setattr(quick, "vm_list", lambda *a: calls.append(("list", *a)))
    monkeypatch.setattr(quick, "vm_info", lambda *a: calls.append(("info", *a)))
    monkeypatch.setattr(quick, "guest_exec",
                        lambda args, **kw: calls.append(("exec", args, kw["uri"])) or 0)
    monkeypatch.setattr(hosts, "uri_of", lambda caller, name: f"qemu+tcp://{name}/system")
    monkeypatch.setenv("KVMOPS_URI", "test:///env")
    for args in (["vm", "list", "--host", "h2", "--json"], ["vm", "list", "--host=all"],
                 ["vm", "info", "web1", "--host", "h2"],
                 ["guest", "exec", "--host", "h2", "web1", "--", "cat", "--host"]):
        command = quick.quick_command(args)
        assert command is not None, args
        assert command() == 0
    assert calls == [
        ("list", True, "qemu+tcp://h2/system", "h2"), ("list", False, None, "all"),
        ("info", "web1", False, "qemu+tcp://h2/system"),
        ("exec", ["web1", "cat", "--host"], "qemu+tcp://h2/system"),
    ]
    assert quick.quick_command(["vm", "list", "--host"]) is None  # value missing: Typer says


def _commands(group: click.Command, path: str) -> list[tuple[str, click.Command]]:
    if isinstance(group, click.Group):
        found = []
        for name, sub in group.commands.items():
            found += _commands(sub, f"{path} {name}".strip())
        return found
    return [(path, group)]


def test_every_command_with_connect_takes_host() -> None:
    checked = []
    for name in main.COMMANDS:
        command = main.load_command(name)
        for path, cmd in _commands(command, name):
            opts = {o for p in cmd.params for o in getattr(p, "opts", ())}
            if "--connect" not in opts or path in LOCAL_ONLY:
                continue
            wanted = "--on-host" if path in ON_HOST else "--host"
            assert wanted in opts, f"kvmops {path} has --connect but no {wanted}"
            help_text = next(p.help for p in cmd.params
                             if wanted in getattr(p, "opts", ()))
            assert help_text and "kvmops host list" in help_text, path
            checked.append(path)
    for expected in ("vm create", "vm start", "vm info", "vm list", "vm disk attach",
                     "vm nic add", "vm setmem", "snapshot list", "backup create",
                     "guest exec", "qmp", "events", "net list", "pool list", "volume upload"):
        assert expected in checked, (expected, checked)


def test_vm_list_all_lists_the_answering_hosts_and_names_the_other(
        state: dict[str, str]) -> None:
    added = run_cli("host", "add", "down", DOWN, "--no-check", env=state)
    assert added.code == 0, added.stderr
    listed = run_cli("vm", "list", "--host", "all", "--json", env=state)
    assert listed.code == 0, listed.stderr
    vms = json.loads(listed.stdout)
    assert [(vm["host"], vm["name"]) for vm in vms] == [("local", "test")]
    warnings = [ln for ln in listed.stderr.splitlines() if ln.strip()]
    assert len(warnings) == 1 and "'down'" in warnings[0] and "unreachable" in warnings[0]
    table = run_cli("vm", "list", "--host", "all", env=state)
    assert table.code == 0, table.stderr
    header, _, row = table.stdout.splitlines()[:3]
    assert header.split()[:2] == ["Host", "Name"] and row.split()[:3] == ["local", "test",
                                                                         "running"]
    one = json.loads(run_cli("vm", "list", "--host", "local", "--json", env=state).stdout)
    assert [(vm["host"], vm["name"]) for vm in one] == [("local", "test")]
    plain = json.loads(run_cli("vm", "list", "--json", env=state).stdout)
    assert plain[0]["host"] is None and set(plain[0]) == set(one[0])
