"""``kvmops vm console``: a terminal on the tiny guest's serial console (ttyS0)."""

from __future__ import annotations

import os
import pty
import select
import subprocess
import sys
import time

from tests.conftest import assert_one_line_error, run_cli


class Pty:
    """``kvmops`` on a pseudo-terminal, as a user's terminal would run it."""

    def __init__(self, *args: str) -> None:
        self.master, slave = pty.openpty()
        self.proc = subprocess.Popen([sys.executable, "-m", "kvmops.cli.main", *args],
                                     stdin=slave, stdout=slave, stderr=slave, close_fds=True)
        os.close(slave)
        self.seen = b""

    def expect(self, text: bytes, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.seen:
            left = deadline - time.monotonic()
            assert left > 0, (text, self.seen[-2000:])
            ready, _w, _x = select.select([self.master], [], [], min(left, 1))
            if ready:
                try:
                    self.seen += os.read(self.master, 4096)
                except OSError:  # the other end closed
                    assert text in self.seen, (text, self.seen[-2000:])
                    return

    def send(self, data: bytes) -> None:
        os.write(self.master, data)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(30)
        os.close(self.master)


def test_console_round_trips_a_command(running_vm: str) -> None:
    term = Pty("vm", "console", running_vm)
    try:
        term.expect(b"Escape character is ^]")
        term.send(b"\r")
        term.expect(b"kvmops-tiny:")
        term.send(b"echo kvm$((40+2))ops\r")
        term.expect(b"kvm42ops")  # computed by the guest's shell, not an echo of the input
        term.send(b"\x1d")  # Ctrl-]
        assert term.proc.wait(30) == 0
    finally:
        term.close()


def test_console_of_a_shut_off_vm_is_one_line(fresh_vm: str) -> None:
    assert_one_line_error(run_cli("vm", "console", fresh_vm), 5, fresh_vm, "not running")
