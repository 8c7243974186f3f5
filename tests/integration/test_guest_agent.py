"""``kvmops guest`` against the shared booted tiny guest, through libvirt."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from kvmops.agent import guest
from kvmops.agent.channel import AgentChannel, open_agent
from tests.conftest import SESSION_PREFIX, assert_one_line_error, run_cli


@pytest.fixture(scope="module")
def channel(running_vm: str) -> Iterator[AgentChannel]:
    with open_agent(running_vm) as ch:
        yield ch


def sh(channel: AgentChannel, script: str) -> str:
    result = guest.exec(channel, ["sh", "-c", script])
    assert result.exit_code == 0, result
    return result.stdout.decode()


@pytest.fixture
def guest_dir(channel: AgentChannel) -> Iterator[str]:
    path = f"/tmp/{SESSION_PREFIX}{os.urandom(3).hex()}"
    sh(channel, f"mkdir -p {path}")
    yield path
    sh(channel, f"rm -rf {path}")


def test_queries(running_vm: str) -> None:
    assert run_cli("guest", "ping", running_vm).code == 0
    result = run_cli("guest", "info", running_vm, "--json")
    assert result.code == 0, result.stderr
    assert "guest-exec" in json.loads(result.stdout)["supported"]
    assert run_cli("guest", "hostname", running_vm).stdout.strip() == "kvmops-tiny"
    answers = {}
    for command in ("osinfo", "ip", "users", "fsinfo", "vcpus", "time"):
        result = run_cli("guest", command, running_vm, "--json")
        assert result.code == 0, (command, result.stderr)
        answers[command] = json.loads(result.stdout)
    # Each answer matches what the guest itself says (read through guest exec).
    facts = run_cli("guest", "exec", running_vm, "--", "/bin/sh", "-c",
                    "uname -r; uname -m; ls /sys/class/net | tr '\\n' ' '; echo; nproc")
    assert facts.code == 0, facts.stderr
    release, machine, nets, cpus = facts.stdout.splitlines()
    osinfo = answers["osinfo"]
    assert (osinfo["kernel_release"], osinfo["machine"], osinfo["id"]) == (
        release, machine, "kvmops-tiny")
    assert sorted(i["name"] for i in answers["ip"]) == sorted(nets.split())
    assert answers["users"] == []  # nobody is logged in to the tiny guest
    assert answers["fsinfo"] == []  # it mounts nothing from a disk
    assert [(v["logical_id"], v["online"]) for v in answers["vcpus"]] == [(0, True)]
    assert int(cpus) == 1
    assert abs(answers["time"]["ns"] / 1e9 - time.time()) < 60
    synced = run_cli("guest", "time", running_vm, "--sync", "--json")
    assert synced.code == 0, synced.stderr
    assert abs(json.loads(synced.stdout)["offset_seconds"]) < 60


def test_exec_passes_stdout_stderr_and_exit_code(running_vm: str, tmp_path: Path) -> None:
    result = run_cli("guest", "exec", running_vm, "--",
                     "sh", "-c", "echo out; echo err >&2; exit 3")
    assert (result.code, result.stdout, result.stderr) == (3, "out\n", "err\n")
    data = tmp_path / "in.txt"
    data.write_text("line one\nline two\n")
    result = run_cli("guest", "exec", running_vm, "--stdin", str(data), "--", "wc", "-l")
    assert (result.code, result.stdout.strip()) == (0, "2")
    result = run_cli("guest", "exec", running_vm, "--stdin", "-", "--", "cat", input="piped")
    assert (result.code, result.stdout) == (0, "piped")


def test_push_pull_multi_chunk_round_trip(running_vm: str, guest_dir: str, tmp_path: Path,
                                          channel: AgentChannel) -> None:
    size = 2**20 + 4097  # 17 chunks of 64 KiB, the last one partial
    local = tmp_path / "random.bin"
    local.write_bytes(os.urandom(size))
    result = run_cli("guest", "push", running_vm, str(local), f"{guest_dir}/r.bin",
                     "--mode", "0600", "--owner", "tester")
    assert result.code == 0, result.stderr
    assert "sha256:" in result.stdout
    assert sh(channel, f"stat -c '%a %U %s' {guest_dir}/r.bin").split() == [
        "600", "tester", str(size)]
    back = tmp_path / "back.bin"
    result = run_cli("guest", "pull", running_vm, f"{guest_dir}/r.bin", str(back))
    assert result.code == 0, result.stderr
    assert back.read_bytes() == local.read_bytes()
    assert not list(tmp_path.glob(".*.part"))
    # A directory destination keeps the source name.
    result = run_cli("guest", "push", running_vm, str(local), guest_dir + "/")
    assert result.code == 0, result.stderr
    assert sh(channel, f"ls -a {guest_dir}").split() == [".", "..", "r.bin", "random.bin"]


def test_push_aborted_by_the_caller_leaves_nothing(channel: AgentChannel, guest_dir: str,
                                                   tmp_path: Path) -> None:
    """The test seam is the progress callback: raising from it aborts the transfer."""
    local = tmp_path / "abort.bin"
    local.write_bytes(os.urandom(2 * 2**20))

    class Abort(Exception):
        pass

    def progress(done: int, _total: int | None) -> None:
        if done >= 256 * 1024:
            raise Abort

    with pytest.raises(Abort):
        guest.push(channel, local, f"{guest_dir}/abort.bin", progress=progress)
    assert sh(channel, f"ls -A {guest_dir}") == ""


def test_killed_push_leaves_no_destination_and_next_push_cleans(
        running_vm: str, channel: AgentChannel, guest_dir: str, tmp_path: Path) -> None:
    local = tmp_path / "big.bin"
    local.write_bytes(os.urandom(24 * 2**20))
    remote = f"{guest_dir}/big.bin"
    proc = subprocess.Popen([sys.executable, "-m", "kvmops.cli.main", "guest", "push",
                             running_vm, str(local), remote],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            sizes = sh(channel, f"for f in {guest_dir}/.big.bin.kvmops-*.part; do "
                                f"[ -f \"$f\" ] && stat -c %s \"$f\"; done; true").split()
            if sizes and int(sizes[0]) > 0:
                break
            time.sleep(0.2)
        assert proc.poll() is None, "the push finished before it could be interrupted"
    finally:
        proc.kill()
        proc.wait()
    listing = sh(channel, f"ls -A {guest_dir}").split()
    assert "big.bin" not in listing
    assert all(name.startswith(".big.bin.kvmops-") for name in listing)  # the killed temp
    small = tmp_path / "small.txt"
    small.write_text("second push\n")
    result = run_cli("guest", "push", running_vm, str(small), remote)
    assert result.code == 0, result.stderr
    assert sh(channel, f"ls -A {guest_dir}").split() == ["big.bin"]
    assert sh(channel, f"cat {remote}") == "second push\n"


def test_ssh_key_add_twice_keeps_one_copy(running_vm: str, channel: AgentChannel) -> None:
    key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKvmopsTestKeyOnlyForTests kvmops-test"
    other = "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQkvmopsOther other@test"
    try:
        for k in (other, key, key):
            result = run_cli("guest", "ssh-key", "add", running_vm, "--user", "tester", k)
            assert result.code == 0, result.stderr
        listed = run_cli("guest", "ssh-key", "list", running_vm, "--user", "tester", "--json")
        assert json.loads(listed.stdout).count(key) == 1
        assert sh(channel, "stat -c '%a %U' /home/tester/.ssh "
                           "/home/tester/.ssh/authorized_keys").splitlines() == [
            "700 tester", "600 tester"]
        result = run_cli("guest", "ssh-key", "remove", running_vm, "--user", "tester", key)
        assert result.code == 0, result.stderr
        assert guest.ssh_key_list(channel, "tester") == [other]
    finally:
        sh(channel, "rm -rf /home/tester/.ssh")


def test_password_changes_shadow(running_vm: str, channel: AgentChannel) -> None:
    def shadow() -> str:
        return sh(channel, "grep '^tester:' /etc/shadow").split(":")[1]

    before = shadow()
    result = run_cli("guest", "password", running_vm, "--user", "tester", "--password-stdin",
                     input="n3w-Passw0rd\n")
    assert result.code == 0, result.stderr
    changed = shadow()
    assert changed not in (before, "n3w-Passw0rd")
    assert changed.startswith("$")
    crypted = "$6$kvmopstest$Yh1Z2aTQ9m0wQ0l5lFq6mX3kSx1Q9P8oCk0eBzY7cUuWgA1v2r3s4t5u6v7w8x9y0"
    result = run_cli("guest", "password", running_vm, "--user", "tester", "--crypted",
                     "--password-stdin", input=crypted + "\n")
    assert result.code == 0, result.stderr
    assert shadow() == crypted


def test_guest_side_failures(running_vm: str, tmp_path: Path) -> None:
    result = run_cli("guest", "pull", running_vm, "/nonexistent/file", str(tmp_path / "x"))
    assert_one_line_error(result, 18, "/nonexistent/file", running_vm, "No such file")
    assert not list(tmp_path.iterdir())
    local = tmp_path / "f.txt"
    local.write_text("x")
    result = run_cli("guest", "push", running_vm, str(local), "/proc/kvmops-test")
    assert_one_line_error(result, 18, "/proc/kvmops-test", running_vm)
    result = run_cli("guest", "exec", running_vm, "--timeout", "1", "--", "sleep", "30")
    assert_one_line_error(result, 10, "pid", "may still be running")
    result = run_cli("guest", "exec", running_vm, "--", "kvmops-no-such-command")
    assert_one_line_error(result, 18, "kvmops-no-such-command")
