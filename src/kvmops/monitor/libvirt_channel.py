"""The QEMU monitor of a libvirt VM: ``virDomainQemuMonitorCommand`` and monitor events.

libvirt owns the QMP socket of the QEMUs it runs; commands go through it (the
VM is then marked tainted "custom-monitor" in its log, as with ``virsh
qemu-monitor-command``). Events come from a
:class:`~kvmops.host.channels.MonitorSubscription` (libvirt's QEMU monitor events
on a connection of its own). The libvirt calls themselves live in
:mod:`kvmops.host`.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from kvmops.errors import ChannelError, KvmopsError, StateError
from kvmops.host.channels import MonitorSubscription
from kvmops.host.connection import Host
from kvmops.host.domain import Domain
from kvmops.host.events import EventQueue
from kvmops.monitor.channel import MonitorChannel, MonitorEvent, qmp_error


@dataclass(frozen=True)
class _Gone:
    """Queued instead of an event when the VM stopped or libvirt went away."""

    error: KvmopsError


_Item = MonitorEvent | _Gone


class LibvirtMonitorChannel(MonitorChannel):
    """QMP to a running libvirt domain.

    ``host``, when given, is owned by the channel and closed with it.
    """

    def __init__(self, domain: Domain, *, host: Host | None = None) -> None:
        self.domain = Domain.of(domain)
        self.name: str = self.domain.name
        self.target = f"VM '{self.name}'"
        self._host = host
        self._uri: str = self.domain.uri()
        self._queue: EventQueue[_Item] | None = None
        self._subscription: MonitorSubscription | None = None

    # -------------------------------------------------------------- commands
    def _not_running(self) -> StateError:
        return StateError(f"VM '{self.name}' is not running: its QEMU monitor is not available",
                          actual="shut off", required="running",
                          hint=f"start it with 'kvmops vm start {self.name}'")

    def _explain(self, err: KvmopsError) -> KvmopsError:
        """A failed command of a VM that is no longer running says so."""
        with contextlib.suppress(KvmopsError):
            if not self.domain.is_active():
                return self._not_running()
        return err

    def _send(self, text: str, *, hmp: bool, what: str) -> str:
        try:
            return self.domain.monitor_command(text, hmp=hmp, what=f"{what} on VM '{self.name}'")
        except KvmopsError as err:
            raise self._explain(err) from err

    def execute(self, command: str, arguments: Mapping[str, Any] | None = None) -> Any:
        request: dict[str, Any] = {"execute": command}
        if arguments:
            request["arguments"] = dict(arguments)
        reply_text = self._send(json.dumps(request), hmp=False, what=f"QMP command '{command}'")
        try:
            reply = json.loads(reply_text)
        except ValueError as err:
            raise ChannelError(f"QMP command '{command}' on VM '{self.name}': "
                               f"libvirt returned a reply that is not JSON") from err
        if isinstance(reply, dict) and "error" in reply:
            error = reply.get("error") or {}
            raise qmp_error(self.target, command, arguments, error.get("class"),
                            str(error.get("desc", "unknown error")))
        return reply.get("return") if isinstance(reply, dict) else reply

    def _hmp(self, command_line: str) -> str:
        return self._send(command_line, hmp=True, what=f"HMP command '{command_line}'")

    # -------------------------------------------------------------- events
    def listen(self) -> None:
        if self._queue is not None:
            return
        events: EventQueue[_Item] = EventQueue()
        self._queue = events

        def on_event(event: str, seconds: int, micros: int, details: str | None) -> None:
            try:
                events.put(MonitorEvent.from_parts(event, seconds, micros, details))
            except ValueError:  # undecodable details: keep the event, drop its data
                events.put(MonitorEvent.from_parts(event, seconds, micros, None))

        def on_stopped(already: bool) -> None:
            events.put(_Gone(self._not_running() if already else StateError(
                f"VM '{self.name}' stopped: no more monitor events", actual="shut off")))

        def on_lost() -> None:
            events.put(_Gone(ChannelError(
                f"lost the libvirt connection while listening to VM '{self.name}'",
                hint="is libvirtd still running?")))

        try:
            self._subscription = MonitorSubscription(
                self._uri, self.domain.uuid(), on_event=on_event, on_stopped=on_stopped,
                on_lost=on_lost, what=f"subscribing to QEMU monitor events on VM '{self.name}'")
        except KvmopsError as err:
            self._queue = None
            raise self._explain(err) from err

    def _next_event(self, timeout: float | None) -> MonitorEvent | None:
        assert self._queue is not None
        item = self._queue.get(timeout)
        if isinstance(item, _Gone):
            raise item.error
        return item

    def close_events(self) -> None:
        """Stop listening (deregister callbacks, close the event connection)."""
        subscription, self._subscription = self._subscription, None
        self._queue = None
        if subscription is not None:
            subscription.close()

    def close(self) -> None:
        self.close_events()
        if self._host is not None:
            self._host.close()
            self._host = None
