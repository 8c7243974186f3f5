"""QEMU monitor use cases: one QMP or HMP command, the command list, the event stream
-- of a libvirt VM's QEMU or a hand-started one (unix socket, TCP). Commands that can
change the VM are audited when the command line sends them (queries are not)."""

from __future__ import annotations

from collections.abc import Collection, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from kvmops.monitor.channel import (
    MonitorChannel,
    MonitorEvent,
    normalize_event_names,
    parse_command,
)
from kvmops.monitor.channel import open_monitor as open_channel
from kvmops.services.audit import run_audited
from kvmops.services.caller import Caller

__all__ = ["Monitor", "MonitorEvent", "normalize_event_names", "open_monitor",
           "parse_command"]


def _reads_only(command: str, *, hmp: bool) -> bool:
    word = command.strip().split(None, 1)[0] if command.strip() else ""
    return word == "info" if hmp else word.startswith("query-")


class Monitor:
    """One open monitor, for one caller."""

    def __init__(self, caller: Caller, channel: MonitorChannel, vm: str | None = None
                 ) -> None:
        self.caller = caller
        self.channel = channel
        self.audit_target = vm or str(channel.target)  # the VM's name when it has one

    @property
    def target(self) -> str:
        return str(self.channel.target)

    def execute(self, command: str, arguments: Mapping[str, Any] | None = None) -> Any:
        if _reads_only(command, hmp=False):
            return self.channel.execute(command, arguments)
        return run_audited(self.caller, "qmp", self.audit_target,
                           lambda: self.channel.execute(command, arguments))

    def hmp(self, command_line: str) -> str:
        if _reads_only(command_line, hmp=True):
            return self.channel.hmp(command_line)
        output: str = run_audited(self.caller, "qmp.hmp", self.audit_target,
                                  lambda: self.channel.hmp(command_line))
        return output

    def command_names(self) -> list[str]:
        return self.channel.command_names()

    def listen(self) -> None:
        self.channel.listen()

    def events(self, names: Collection[str] | None = None, timeout: float | None = None
               ) -> Iterator[MonitorEvent]:
        yield from self.channel.events(names, timeout)


@contextmanager
def open_monitor(caller: Caller, vm: str | None = None, *, socket: Path | str | None = None,
                 tcp: str | None = None, uri: str | None = None) -> Iterator[Monitor]:
    """The monitor of a libvirt VM (by name), a QMP unix socket or a TCP monitor."""
    with open_channel(vm, socket=socket, tcp=tcp, uri=uri) as channel:
        yield Monitor(caller, channel, vm)
