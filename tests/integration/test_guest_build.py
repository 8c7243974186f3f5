"""Build the tiny guest and boot it with plain QEMU under TCG; talk to its agent."""

from __future__ import annotations

import base64
import json
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from kvmops.config import settings
from kvmops.devguest.build import GuestImage, build_guest

pytestmark = pytest.mark.integration

QEMU = "qemu-system-x86_64"
BOOT_DEADLINE_S = 180.0  # as the other tests: an upper bound for failures under load


@pytest.fixture(scope="module")
def guest_image() -> GuestImage:
    """The shared guest (same dir as every other test, so it is built once)."""
    return build_guest(settings().cache_dir / "guest")


class Agent:
    """A bare qemu-ga client over QEMU's chardev socket, for this test only."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock: socket.socket | None = None
        self.buf = b""

    def _connect(self) -> socket.socket:
        if self.sock is None:
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.sock.connect(str(self.path))
            self.buf = b""
        return self.sock

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def _send(self, obj: dict[str, Any]) -> None:
        self._connect().sendall(json.dumps(obj).encode() + b"\n")

    def _read(self, deadline: float) -> dict[str, Any]:
        sock = self._connect()
        while b"\n" not in self.buf:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("no answer from the guest agent")
            sock.settimeout(remaining)
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError("agent socket closed")
            self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\n")
        reply: dict[str, Any] = json.loads(line.lstrip(b"\xff"))
        return reply

    def sync(self, deadline: float) -> int:
        """guest-sync until the agent answers with our id (stale answers skipped)."""
        ident = 123
        while True:
            try:
                self._send({"execute": "guest-sync", "arguments": {"id": ident}})
                attempt_end = min(deadline, time.monotonic() + 1.0)
                while True:
                    reply = self._read(attempt_end)
                    if reply.get("return") == ident:
                        return ident
            except (OSError, TimeoutError, ValueError):
                self.close()  # a timed-out socket is unusable; reconnect
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
                ident += 1

    def cmd(self, execute: str, timeout: float = 10.0, **arguments: Any) -> Any:
        msg: dict[str, Any] = {"execute": execute}
        if arguments:
            msg["arguments"] = arguments
        self._send(msg)
        reply = self._read(time.monotonic() + timeout)
        assert "error" not in reply, reply
        return reply["return"]

    def run(self, script: str, timeout: float = 20.0) -> tuple[int, str]:
        pid = self.cmd("guest-exec", path="/bin/sh", arg=["-c", script],
                       **{"capture-output": True})["pid"]
        deadline = time.monotonic() + timeout
        while True:
            status = self.cmd("guest-exec-status", pid=pid)
            if status["exited"]:
                out = base64.b64decode(status.get("out-data", "")).decode()
                return int(status.get("exitcode", -1)), out
            assert time.monotonic() < deadline, f"guest command did not finish: {script}"
            time.sleep(0.2)


@dataclass
class Booted:
    proc: subprocess.Popen[bytes]
    agent: Agent
    console: Path


@pytest.fixture
def booted(guest_image: GuestImage, tmp_path: Path) -> Iterator[Booted]:
    assert shutil.which(QEMU), f"{QEMU} is part of the test host (setup-host.sh)"
    scratch = tmp_path / "scratch.qcow2"
    data = tmp_path / "data.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(scratch), "64M"], check=True)
    # An overlay: parallel VMs must not share one writable data.ext4.
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(guest_image.data_disk),
                    "-F", "raw", str(data)], check=True)
    sock = tmp_path / "qga.sock"
    console = tmp_path / "console.log"
    argv = [
        QEMU, "-machine", "pc,accel=tcg", "-m", "256", "-nodefaults", "-display", "none",
        "-no-reboot",
        "-kernel", str(guest_image.kernel), "-initrd", str(guest_image.initrd),
        "-append", "console=ttyS0", "-serial", f"file:{console}",
        "-device", "virtio-serial",
        "-chardev", f"socket,path={sock},server=on,wait=off,id=qga0",
        "-device", "virtserialport,chardev=qga0,name=org.qemu.guest_agent.0",
        "-drive", f"file={scratch},if=virtio,format=qcow2",
        "-drive", f"file={data},if=virtio,format=qcow2",
    ]
    errlog = tmp_path / "qemu.err"
    with open(errlog, "wb") as err:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=err)
    agent = Agent(sock)
    try:
        deadline = time.monotonic() + 10
        while not sock.exists():
            assert proc.poll() is None, errlog.read_text()
            assert time.monotonic() < deadline, "QEMU made no agent socket"
            time.sleep(0.1)
        yield Booted(proc, agent, console)
    finally:
        agent.close()
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)


def test_build_is_cached(guest_image: GuestImage) -> None:
    for path in (guest_image.kernel, guest_image.initrd, guest_image.data_disk,
                 guest_image.tools):
        assert path.stat().st_size > 0
        assert path.stat().st_mode & 0o777 == 0o644
    assert guest_image.kernel.parent.stat().st_mode & 0o777 == 0o755
    before = guest_image.initrd.stat().st_mtime_ns
    again = build_guest(guest_image.kernel.parent)
    assert again == guest_image
    assert guest_image.initrd.stat().st_mtime_ns == before


def test_guest_boots_and_agent_answers(booted: Booted) -> None:
    agent = booted.agent
    try:
        agent.sync(time.monotonic() + BOOT_DEADLINE_S)
    except (OSError, TimeoutError):
        pytest.fail("agent never answered; console:\n" + booted.console.read_text())
    assert agent.cmd("guest-ping") == {}
    assert agent.cmd("guest-get-osinfo")["id"] == "kvmops-tiny"
    assert agent.cmd("guest-get-host-name")["host-name"] == "kvmops-tiny"

    code, out = agent.run("id tester; ls -ld /home/tester")
    assert code == 0, out
    assert "uid=1000(tester) gid=1000(tester)" in out
    assert "tester" in out.splitlines()[1]

    code, out = agent.run("cat /proc/mounts; ls /data; ls -l /dev/vda")
    assert code == 0, out
    mounts = [line.split() for line in out.splitlines() if line.startswith("/dev/")]
    data = [m for m in mounts if m[1] == "/data"]
    assert data and data[0][0] == "/dev/vdb" and data[0][2] == "ext4", out
    assert not [m for m in mounts if m[0].startswith("/dev/vda")], out
    assert "kvmops-data.txt" in out
    assert "/dev/vda" in out  # the disk exists, untouched

    console = booted.console.read_text()
    for marker in ("kvmops-guest: modules loaded", "kvmops-guest: starting qemu-ga"):
        assert marker in console

    # guest-shutdown has no reply on success; QEMU exits once the guest powers off.
    agent._send({"execute": "guest-shutdown"})
    deadline = time.monotonic() + 30
    while booted.proc.poll() is None:
        assert time.monotonic() < deadline, "guest did not power off after guest-shutdown"
        time.sleep(0.2)
    assert "kvmops-guest: shutdown (poweroff)" in booted.console.read_text()
