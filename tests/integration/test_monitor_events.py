"""QMP events: on a hand-started QEMU (raw sockets) and on a libvirt VM."""

from __future__ import annotations

import json
import queue
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import libvirt
import pytest

from kvmops.devguest.build import GuestImage
from kvmops.errors import StateError
from kvmops.host.connection import Host
from kvmops.images import qemuimg
from kvmops.monitor.channel import open_monitor
from kvmops.testing.rawqemu import RawQemu
from tests.conftest import SESSION_PREFIX, assert_one_line_error, run_cli

DEADLINE = 60.0  # generous upper bound for a failure, never a performance assertion


class Listener:
    """``kvmops events ...`` as a subprocess whose output lines we read as they come."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "kvmops.cli.main", "events", *args],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.stdout: queue.Queue[str] = queue.Queue()
        self.stderr: queue.Queue[str] = queue.Queue()
        for stream, sink in ((self.proc.stdout, self.stdout), (self.proc.stderr, self.stderr)):
            threading.Thread(target=self._pump, args=(stream, sink), daemon=True).start()

    @staticmethod
    def _pump(stream: object, sink: queue.Queue[str]) -> None:
        for line in stream:  # type: ignore[attr-defined]
            sink.put(line)

    def wait_listening(self) -> None:
        line = self.stderr.get(timeout=DEADLINE)
        assert line.startswith("listening for"), line

    def next_line(self) -> str:
        return self.stdout.get(timeout=DEADLINE)

    def finish(self) -> int:
        return self.proc.wait(DEADLINE)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def listeners() -> Iterator[Callable[..., Listener]]:
    started: list[Listener] = []

    def start(*args: str) -> Listener:
        listener = Listener(*args)
        started.append(listener)
        return listener

    yield start
    for listener in started:
        listener.stop()


@pytest.fixture(scope="module")
def raw_qemu(tiny_guest: GuestImage, images_dir: Path) -> Iterator[RawQemu]:
    disk = images_dir / f"{SESSION_PREFIX}raw-events.qcow2"
    qemuimg.create(disk, 16 * 1024**2)
    qemu = RawQemu(tiny_guest.kernel, tiny_guest.initrd, disks=[disk], memory_mib=128,
                   extra_qmp=True)
    try:
        with qemu:
            yield qemu
    finally:
        disk.unlink(missing_ok=True)


# ------------------------------------------------------------------ raw sockets
def test_socket_events_stop_then_resume(raw_qemu: RawQemu,
                                        listeners: Callable[..., Listener]) -> None:
    events_sock = str(raw_qemu.events_socket)
    commands_sock = str(raw_qemu.qmp_socket)

    first = listeners("--socket", events_sock, "--event", "STOP", "--timeout", "30")
    first.wait_listening()
    assert run_cli("qmp", "--socket", commands_sock, '{"execute":"stop"}').code == 0
    assert "  STOP" in first.next_line()
    assert first.finish() == 0  # --event without --follow ends after the first match

    second = listeners("--socket", events_sock, "--event", "RESUME", "--follow", "--json",
                       "--timeout", "60")
    second.wait_listening()
    result = run_cli("qmp", "--socket", commands_sock, '{"execute":"cont"}')
    assert result.code == 0, result.stderr
    event = json.loads(second.next_line())
    assert event["event"] == "RESUME"
    assert "T" in event["timestamp"]
    second.proc.send_signal(signal.SIGINT)  # Ctrl-C ends a --follow cleanly
    assert second.finish() == 0
    assert second.stderr.empty()
    status = run_cli("qmp", "--socket", commands_sock, "query-status", "--raw")
    assert json.loads(status.stdout)["status"] == "running"


def test_socket_timeout_is_one_line_error(raw_qemu: RawQemu) -> None:
    result = run_cli("events", "--socket", str(raw_qemu.events_socket), "--event",
                     "DEVICE_DELETED", "--timeout", "1", "--quiet")
    assert_one_line_error(result, 10, "DEVICE_DELETED", str(raw_qemu.events_socket))


def test_socket_hmp_and_qmp_error(raw_qemu: RawQemu) -> None:
    sock = str(raw_qemu.qmp_socket)
    result = run_cli("qmp", "--socket", sock, "--hmp", "info block")
    assert result.code == 0, result.stderr
    assert "disk0" in result.stdout
    assert_one_line_error(run_cli("qmp", "--socket", sock, "kvmops-nope"), 12,
                          "CommandNotFound", sock)


def test_socket_channel_api_for_jobs(raw_qemu: RawQemu) -> None:
    """The pattern the backup engine uses: command, then wait for its event."""
    with open_monitor(socket=raw_qemu.qmp_socket) as channel:
        nodes = channel.execute("query-named-block-nodes", {"flat": True})
        assert "disk0" in {n["node-name"] for n in nodes}
        channel.execute("block-dirty-bitmap-add", {"node": "disk0", "name": "kvmops-test-bm"})
        try:
            channel.execute("stop")
            assert channel.wait_event(["stop"], DEADLINE).name == "STOP"
            channel.execute("cont")
            assert channel.wait_event(["RESUME"], DEADLINE).name == "RESUME"
        finally:
            channel.execute("block-dirty-bitmap-remove",
                            {"node": "disk0", "name": "kvmops-test-bm"})


# ------------------------------------------------------------------ libvirt
@pytest.fixture(scope="module")
def events_vm(vm_factory: Callable[..., str]) -> str:
    """A VM of our own, started (not waiting for its guest: suspend/resume need no OS)."""
    name = vm_factory(disk="size=16M")
    result = run_cli("vm", "start", name)
    assert result.code == 0, result.stderr
    return name


def test_libvirt_events_cli_sees_suspend(events_vm: str,
                                         listeners: Callable[..., Listener]) -> None:
    listener = listeners(events_vm, "--event", "STOP", "--timeout", "30")
    listener.wait_listening()
    subprocess.run(["virsh", "suspend", events_vm], check=True, capture_output=True)
    try:
        assert "  STOP" in listener.next_line()
        assert listener.finish() == 0
    finally:
        subprocess.run(["virsh", "resume", events_vm], check=True, capture_output=True)


def test_libvirt_channel_api_and_vm_stop(events_vm: str, host: Host) -> None:
    try:
        with open_monitor(events_vm) as channel:
            channel.listen()
            subprocess.run(["virsh", "suspend", events_vm], check=True, capture_output=True)
            assert channel.wait_event(["STOP"], DEADLINE).name == "STOP"
            subprocess.run(["virsh", "resume", events_vm], check=True, capture_output=True)
            assert channel.wait_event(["RESUME"], DEADLINE).name == "RESUME"
            # the VM's end is reported, not waited through
            host.domain(events_vm).destroy()
            with pytest.raises(StateError, match="stopped"):
                channel.wait_event(["BLOCK_JOB_COMPLETED"], DEADLINE)
        assert host.domain(events_vm).state()[0] == libvirt.VIR_DOMAIN_SHUTOFF
    finally:  # running again for the module's other tests, whatever their order
        if not host.domain(events_vm).isActive():
            result = run_cli("vm", "start", events_vm)
            assert result.code == 0, result.stderr
