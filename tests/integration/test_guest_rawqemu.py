"""The same guest operations against a hand-started QEMU, through ``--socket``."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from kvmops.agent import guest
from kvmops.agent.channel import SocketAgentChannel
from kvmops.devguest.build import GuestImage
from kvmops.errors import AgentCommandDisabledError, AgentTimeoutError, KvmopsError
from kvmops.testing.rawqemu import RawQemu
from tests.conftest import assert_one_line_error, run_cli
from tests.integration.api_server import free_port

BLOCKED_PORT = "org.kvmops.test.blocked"
NO_SSH_PORT = "org.kvmops.test.nossh"
TCP_PORT = "org.kvmops.test.tcp"
SSH_COMMANDS = ("guest-ssh-add-authorized-keys", "guest-ssh-remove-authorized-keys",
                "guest-ssh-get-authorized-keys")


@dataclass
class RawQemuTwoPorts(RawQemu):
    """RawQemu plus agent ports for qemu-gas started with --block-rpcs (one without
    guest-exec, one without the SSH key commands), and TCP listeners: one more agent
    port and a second QMP monitor, for ``--tcp``."""

    tcp_agent_port: int = field(default_factory=free_port)
    tcp_qmp_port: int = field(default_factory=free_port)

    @property
    def blocked_socket(self) -> Path:
        assert self.workdir is not None
        return self.workdir / "qga-blocked.sock"

    @property
    def no_ssh_socket(self) -> Path:
        assert self.workdir is not None
        return self.workdir / "qga-nossh.sock"

    def command(self) -> list[str]:
        return [*super().command(),
                "-chardev", f"socket,path={self.blocked_socket},server=on,wait=off,id=qgab",
                "-device", f"virtserialport,chardev=qgab,name={BLOCKED_PORT}",
                "-chardev", f"socket,path={self.no_ssh_socket},server=on,wait=off,id=qgan",
                "-device", f"virtserialport,chardev=qgan,name={NO_SSH_PORT}",
                "-chardev", f"socket,host=127.0.0.1,port={self.tcp_agent_port},"
                            "server=on,wait=off,id=qgatcp",
                "-device", f"virtserialport,chardev=qgatcp,name={TCP_PORT}",
                "-qmp", f"tcp:127.0.0.1:{self.tcp_qmp_port},server=on,wait=off"]


def start_second_agent(raw: RawQemu, port_name: str, *options: str) -> None:
    """Start one more qemu-ga in the guest on the virtio port called ``port_name``."""
    script = (
        f'for p in /sys/class/virtio-ports/*; do '
        f'[ "$(cat $p/name)" = {port_name} ] && dev=/dev/${{p##*/}}; done; '
        f'mkdir -p /run/{port_name} && '
        f'qemu-ga -d -m virtio-serial -p "$dev" {" ".join(options)} '
        f'-t /run/{port_name} -f /run/{port_name}/pid')
    with SocketAgentChannel(path=str(raw.agent_socket)) as channel:
        started = guest.exec(channel, ["sh", "-c", script])
        assert started.exit_code == 0, started


def wait_for_agent(path: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with SocketAgentChannel(path=str(path), sync_timeout=2) as channel:
                guest.ping(channel)
                return
        except KvmopsError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


@pytest.fixture(scope="module")
def raw(tiny_guest: GuestImage, tmp_path_factory: pytest.TempPathFactory
        ) -> Iterator[RawQemuTwoPorts]:
    work = tmp_path_factory.mktemp("kvmops-test-raw")
    vda = work / "vda.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(vda), "64M"], check=True)
    data = work / "data.raw"
    shutil.copyfile(tiny_guest.data_disk, data)
    qemu = RawQemuTwoPorts(tiny_guest.kernel, tiny_guest.initrd, disks=[vda, data])
    with qemu:
        wait_for_agent(qemu.agent_socket)
        yield qemu
        # guest-shutdown sends no reply; QEMU then exits on its own (checked here, at the
        # end, so that no test has to run last).
        result = run_cli("guest", "shutdown", "--socket", str(qemu.agent_socket))
        assert result.code == 0, result.stderr
        assert qemu.process is not None
        assert qemu.process.wait(timeout=120) == 0


def test_ping_exec_push_pull(raw: RawQemuTwoPorts, tmp_path: Path) -> None:
    sock = str(raw.agent_socket)
    assert run_cli("guest", "ping", "--socket", sock).code == 0
    result = run_cli("guest", "exec", "--socket", sock, "--",
                     "sh", "-c", "echo out; echo err >&2; exit 4")
    assert (result.code, result.stdout, result.stderr) == (4, "out\n", "err\n")
    local = tmp_path / "blob.bin"
    local.write_bytes(os.urandom(3 * 2**20 + 17))
    result = run_cli("guest", "push", "--socket", sock, str(local), "/tmp/blob.bin")
    assert result.code == 0, result.stderr
    back = tmp_path / "back.bin"
    result = run_cli("guest", "pull", "--socket", sock, "/tmp/blob.bin", str(back))
    assert result.code == 0, result.stderr
    assert back.read_bytes() == local.read_bytes()
    result = run_cli("guest", "pull", "--socket", sock, "/nonexistent", str(tmp_path / "n"))
    assert_one_line_error(result, 18, "/nonexistent", "No such file")


def test_freeze_thaw(raw: RawQemuTwoPorts) -> None:
    sock = str(raw.agent_socket)
    with SocketAgentChannel(path=sock) as channel:
        assert any(fs.mountpoint == "/data" for fs in guest.fsinfo(channel))
        try:
            assert guest.fsfreeze(channel) == 1
            assert guest.fsstatus(channel) == "frozen"
        finally:
            guest.fsthaw(channel)
        assert guest.fsstatus(channel) == "thawed"
    assert run_cli("guest", "fsstatus", "--socket", sock).stdout.strip() == "thawed"


def test_command_disabled_by_block_rpcs(raw: RawQemuTwoPorts) -> None:
    """A second qemu-ga in the guest, started with --block-rpcs, on the second port."""
    start_second_agent(raw, BLOCKED_PORT, "-b", "guest-exec,guest-file-open")
    wait_for_agent(raw.blocked_socket, timeout=30)
    with SocketAgentChannel(path=str(raw.blocked_socket)) as blocked:
        assert "guest-exec" in guest.info(blocked).disabled
        with pytest.raises(AgentCommandDisabledError):
            guest.exec(blocked, ["true"])
    result = run_cli("guest", "exec", "--socket", str(raw.blocked_socket), "--", "true")
    assert_one_line_error(result, 17, "guest-exec", "--block-rpcs")


def test_tcp_transports(raw: RawQemuTwoPorts) -> None:
    """``--tcp HOST:PORT``: an agent and a QMP monitor listening on TCP."""
    start_second_agent(raw, TCP_PORT)
    address = f"127.0.0.1:{raw.tcp_agent_port}"
    deadline = time.monotonic() + 30
    while (ping := run_cli("guest", "ping", "--tcp", address)).code != 0:
        assert time.monotonic() < deadline, ping.stderr
        time.sleep(0.5)
    result = run_cli("guest", "exec", "--tcp", address, "--", "sh", "-c", "echo via-tcp")
    assert (result.code, result.stdout) == (0, "via-tcp\n"), result.stderr
    result = run_cli("qmp", "--tcp", f"127.0.0.1:{raw.tcp_qmp_port}", "query-status", "--raw")
    assert result.code == 0, result.stderr
    assert json.loads(result.stdout)["status"] == "running"


KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKvmopsRawFallbackKeyOnlyForTests fallback@test"
OTHER = "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQkvmopsRawOther other@test"


def _sh(channel: SocketAgentChannel, script: str) -> str:
    result = guest.exec(channel, ["sh", "-c", script])
    assert result.exit_code == 0, result
    return result.stdout.decode()


def test_ssh_keys_fall_back_to_the_file_without_native_commands(raw: RawQemuTwoPorts
                                                                ) -> None:
    """A qemu-ga without the guest-ssh-* commands: keys are read and written in
    ~/.ssh/authorized_keys through file commands, with the modes sshd demands, and the
    native commands of the other agent see the same keys."""
    start_second_agent(raw, NO_SSH_PORT, "-b", ",".join(SSH_COMMANDS))
    wait_for_agent(raw.no_ssh_socket, timeout=30)
    with SocketAgentChannel(path=str(raw.no_ssh_socket)) as fallback, \
            SocketAgentChannel(path=str(raw.agent_socket)) as native:
        assert set(SSH_COMMANDS) <= set(guest.info(fallback).disabled)
        assert set(SSH_COMMANDS) <= set(guest.info(native).supported)
        _sh(native, "rm -rf /home/tester/.ssh")
        assert guest.ssh_key_list(fallback, "tester") == []
        assert guest.ssh_key_add(fallback, "tester", [OTHER]) == [OTHER]
        assert guest.ssh_key_add(fallback, "tester", [KEY, OTHER]) == [OTHER, KEY]
        assert _sh(native, "cat /home/tester/.ssh/authorized_keys") == f"{OTHER}\n{KEY}\n"
        assert _sh(native, "stat -c '%a %U' /home/tester/.ssh "
                           "/home/tester/.ssh/authorized_keys").splitlines() == [
            "700 tester", "600 tester"]
        assert sorted(guest.ssh_key_list(native, "tester")) == sorted([OTHER, KEY])
        assert guest.ssh_key_remove(fallback, "tester", [KEY]) == [OTHER]
        assert guest.ssh_key_list(native, "tester") == [OTHER]
        # And back: a key added natively is seen and removed through the file.
        guest.ssh_key_add(native, "tester", [KEY])
        assert guest.ssh_key_list(fallback, "tester") == [OTHER, KEY]
    result = run_cli("guest", "ssh-key", "remove", "--socket", str(raw.no_ssh_socket),
                     "--user", "tester", OTHER, KEY)
    assert result.code == 0, result.stderr
    with SocketAgentChannel(path=str(raw.agent_socket)) as native:
        assert _sh(native, "cat /home/tester/.ssh/authorized_keys") == ""


def test_resync_after_a_late_reply_and_an_abandoned_client(raw: RawQemuTwoPorts) -> None:
    """The guest-sync-delimited handshake for real: a reply that arrives after its
    command timed out, and the half request and unread reply of a client that went away,
    are never taken for the answer to a later command."""
    # The late reply drains before the next sync reply: give the handshake time for it.
    with SocketAgentChannel(path=str(raw.agent_socket), sync_timeout=60) as channel:
        handle = channel.execute("guest-file-open", {"path": "/dev/urandom", "mode": "r"})
        try:
            with pytest.raises(AgentTimeoutError):  # megabytes of base64 come too late
                channel.execute("guest-file-read", {"handle": handle, "count": 2 << 20},
                                timeout=0.01)
            assert channel.execute("guest-ping") == {}
            assert _sh(channel, "echo after-the-late-reply") == "after-the-late-reply\n"
        finally:
            channel.execute("guest-file-close", {"handle": handle})
    # A client that sends a full request and half of another, then leaves unread.
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(str(raw.agent_socket))
        sock.sendall(b'{"execute": "guest-info"}\n{"execute": "guest-get-')
    with SocketAgentChannel(path=str(raw.agent_socket)) as channel:
        assert channel.execute("guest-ping") == {}
        assert _sh(channel, "echo fresh") == "fresh\n"
        assert guest.hostname(channel) == _sh(channel, "hostname").strip()
