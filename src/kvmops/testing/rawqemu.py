"""A QEMU started by hand (no libvirt), with a QMP socket and a guest-agent socket.

Shipped as a test seam on purpose: tests and benchmarks of the raw-socket
transports (``--socket``/``--tcp``) need a VM that libvirt does not manage,
exactly like an operator's hand-started ``qemu-system-x86_64 -qmp unix:...``.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from kvmops.errors import OperationTimeoutError, StorageError


@dataclass
class RawQemu:
    kernel: Path
    initrd: Path
    disks: list[Path] = field(default_factory=list)  # qcow2 images, vda, vdb, ...
    memory_mib: int = 256
    cmdline: str = "console=ttyS0"
    accel: str = "tcg"
    workdir: Path | None = None
    process: subprocess.Popen[bytes] | None = None
    # A second QMP monitor socket (``events_socket``): a QEMU monitor socket serves one
    # client at a time, so a test that listens to events while sending commands needs two.
    extra_qmp: bool = False

    def __post_init__(self) -> None:
        self._own_workdir = self.workdir is None
        self.workdir = Path(self.workdir or tempfile.mkdtemp(prefix="kvmops-test-rawqemu-"))

    @property
    def qmp_socket(self) -> Path:
        assert self.workdir is not None
        return self.workdir / "qmp.sock"

    @property
    def events_socket(self) -> Path:
        """The second QMP socket (only with ``extra_qmp=True``)."""
        assert self.workdir is not None
        return self.workdir / "qmp-events.sock"

    def _sockets(self) -> list[Path]:
        sockets = [self.qmp_socket, self.agent_socket]
        return [*sockets, self.events_socket] if self.extra_qmp else sockets

    @property
    def agent_socket(self) -> Path:
        assert self.workdir is not None
        return self.workdir / "qga.sock"

    @property
    def serial_log(self) -> Path:
        assert self.workdir is not None
        return self.workdir / "serial.log"

    def command(self) -> list[str]:
        qemu = shutil.which("qemu-system-x86_64")
        if not qemu:
            raise StorageError("qemu-system-x86_64 not found", hint="run 'make setup'")
        cmd = [
            qemu, "-machine", f"pc,accel={self.accel}", "-m", str(self.memory_mib),
            "-nodefaults", "-display", "none", "-no-user-config",
            "-kernel", str(self.kernel), "-initrd", str(self.initrd), "-append", self.cmdline,
            "-serial", f"file:{self.serial_log}",
            "-qmp", f"unix:{self.qmp_socket},server=on,wait=off",
            "-device", "virtio-serial",
            "-chardev", f"socket,path={self.agent_socket},server=on,wait=off,id=qga0",
            "-device", "virtserialport,chardev=qga0,name=org.qemu.guest_agent.0",
        ]
        if self.extra_qmp:
            cmd += ["-chardev", f"socket,path={self.events_socket},server=on,wait=off,id=qmp1",
                    "-mon", "chardev=qmp1,mode=control"]
        for index, disk in enumerate(self.disks):
            fmt = "raw" if disk.suffix in (".raw", ".ext4", ".img") else "qcow2"
            cmd += ["-blockdev",
                    f"driver=file,filename={disk},node-name=file{index}",
                    "-blockdev", f"driver={fmt},file=file{index},node-name=disk{index}",
                    "-device", f"virtio-blk-pci,drive=disk{index},id=virtio-disk{index}"]
        return cmd

    def start(self, timeout: float = 30.0) -> RawQemu:
        self.process = subprocess.Popen(self.command(), stdout=subprocess.DEVNULL,
                                        stderr=subprocess.PIPE)
        deadline = time.monotonic() + timeout
        while not all(sock.exists() for sock in self._sockets()):
            if self.process.poll() is not None:
                err = self.process.stderr.read().decode() if self.process.stderr else ""
                raise StorageError(f"QEMU exited at start: {err.strip()}")
            if time.monotonic() > deadline:
                self.stop()
                raise OperationTimeoutError("QEMU did not create its sockets in time")
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        if self.process and self.process.stderr:
            self.process.stderr.close()
        if self._own_workdir and self.workdir:
            with contextlib.suppress(OSError):
                shutil.rmtree(self.workdir)

    def __enter__(self) -> RawQemu:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
