"""The same guest operations against a hand-started QEMU, through ``--socket``."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from kvmops.agent import guest
from kvmops.agent.channel import SocketAgentChannel
from kvmops.devguest.build import GuestImage
from kvmops.errors import AgentCommandDisabledError, KvmopsError
from kvmops.testing.rawqemu import RawQemu
from tests.conftest import assert_one_line_error, run_cli

BLOCKED_PORT = "org.kvmops.test.blocked"


@dataclass
class RawQemuTwoPorts(RawQemu):
    """RawQemu plus a second agent port, for a qemu-ga started with --block-rpcs."""

    @property
    def blocked_socket(self) -> Path:
        assert self.workdir is not None
        return self.workdir / "qga-blocked.sock"

    def command(self) -> list[str]:
        return [*super().command(),
                "-chardev", f"socket,path={self.blocked_socket},server=on,wait=off,id=qgab",
                "-device", f"virtserialport,chardev=qgab,name={BLOCKED_PORT}"]


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
    script = (
        f'for p in /sys/class/virtio-ports/*; do '
        f'[ "$(cat $p/name)" = {BLOCKED_PORT} ] && dev=/dev/${{p##*/}}; done; '
        f'mkdir -p /run/qga-blocked && '
        f'qemu-ga -d -m virtio-serial -p "$dev" -b guest-exec,guest-file-open '
        f'-t /run/qga-blocked -f /run/qga-blocked/pid')
    with SocketAgentChannel(path=str(raw.agent_socket)) as channel:
        started = guest.exec(channel, ["sh", "-c", script])
        assert started.exit_code == 0, started
    wait_for_agent(raw.blocked_socket, timeout=30)
    with SocketAgentChannel(path=str(raw.blocked_socket)) as blocked:
        assert "guest-exec" in guest.info(blocked).disabled
        with pytest.raises(AgentCommandDisabledError):
            guest.exec(blocked, ["true"])
    result = run_cli("guest", "exec", "--socket", str(raw.blocked_socket), "--", "true")
    assert_one_line_error(result, 17, "guest-exec", "--block-rpcs")


def test_shutdown_through_the_agent(raw: RawQemuTwoPorts) -> None:
    """Last in this module: guest-shutdown sends no reply; QEMU then exits on its own."""
    result = run_cli("guest", "shutdown", "--socket", str(raw.agent_socket))
    assert result.code == 0, result.stderr
    assert raw.process is not None
    assert raw.process.wait(timeout=120) == 0
