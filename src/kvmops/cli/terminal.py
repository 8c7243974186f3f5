"""``kvmops vm console``: the terminal side of a serial console session (raw mode,
escape character, restoring the terminal whatever happens)."""

from __future__ import annotations

import contextlib
import os
import select
import sys
import termios
import threading
import tty
from collections.abc import Iterator

from kvmops.services.caller import Caller
from kvmops.services.consoles import open_serial

ESCAPE = b"\x1d"  # Ctrl-], as in virsh console and telnet


@contextlib.contextmanager
def raw_terminal(fd: int) -> Iterator[None]:
    if not os.isatty(fd):
        yield
        return
    saved = termios.tcgetattr(fd)
    try:
        tty.setraw(fd, termios.TCSANOW)  # not TCSAFLUSH: keep what was typed ahead
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def attach(uri: str | None, vm: str, *, force: bool = False) -> str | None:
    """Relay stdin/stdout to the VM's serial console until Ctrl-], end of input or the
    console closing; returns why the console closed (None when the user left)."""
    out = sys.stdout.fileno()
    closed = threading.Event()
    why: list[str | None] = []

    def on_data(data: bytes) -> None:
        os.write(out, data)

    def on_closed(reason: str | None) -> None:
        why.append(reason or f"the console of VM '{vm}' closed (the VM stopped, or another "
                             "session took it over)")
        closed.set()

    console = open_serial(Caller.local(), uri, vm, on_data, on_closed, force=force)
    stdin = sys.stdin.fileno()
    try:
        with raw_terminal(stdin):
            # Said once the terminal is raw: keys typed after it reach the guest as typed.
            sys.stderr.write(f"Connected to VM '{vm}' (serial console). Escape character "
                             "is ^]\r\n")
            sys.stderr.flush()
            while not closed.is_set():
                ready, _w, _x = select.select([stdin], [], [], 0.2)
                if not ready:
                    continue
                data = os.read(stdin, 4096)
                if not data:
                    break  # end of input
                if ESCAPE in data:
                    before = data.split(ESCAPE, 1)[0]
                    if before:
                        console.send(before)
                    break
                console.send(data)
    finally:
        console.close()
    sys.stderr.write("\r\n")
    return why[0] if why else None
