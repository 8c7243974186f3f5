"""The same guest operations against a hand-started QEMU, through ``--socket``."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from kvmops.agent import guest
from kvmops.agent.channel import SocketAgentChannel
from kvmops.devguest.build import GuestImage
from kvmops.errors import AgentCommandDisabledError, KvmopsError
from kvmops.testing.rawqemu import RawQemu
from tests.conftest import assert_one_line_error, run_cli
from tests.integration.api_server import free_port

BLOCKED_PORT = "org.kvmops.test.blocked"
TCP_PORT = "org.kvmops.test.tcp"


@dataclass
class RawQemuTwoPorts(RawQemu):
    """RawQemu plus a second agent port, for a qemu-ga started with --block-rpcs, and
    TCP listeners: a third agent port and a second QMP monitor, for ``--tcp``."""

    tcp_agent_port: int = field(default_factory=free_port)
    tcp_qmp_port: int = field(default_factory=free_port)

    @property
    def blocked_socket(self) -> Path:
        assert self.workdir is not None
        return self.workdir / "qga-blocked.sock"

    def command(self) -> list[str]:
        return [*super().command(),
                "-chardev", f"socket,path={self.blocked_socket},server=on,wait=off,id=qgab",
                "-device", f"virtserialport,chardev=qgab,name={BLOCKED_PORT}",
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


def test_shutdown_through_the_agent(raw: RawQemuTwoPorts) -> None:
    """Last in this module: guest-shutdown sends no reply; QEMU then exits on its own."""
    result = run_cli("guest", "shutdown", "--socket", str(raw.agent_socket))
    assert result.code == 0, result.stderr
    assert raw.process is not None
    assert raw.process.wait(timeout=120) == 0
