"""The QEMU monitor of a libvirt VM: ``virDomainQemuMonitorCommand`` and monitor events.

libvirt owns the QMP socket of the QEMUs it runs; commands go through it (the
VM is then marked tainted "custom-monitor" in its log, as with ``virsh
qemu-monitor-command``). Events come from ``virConnectDomainQemuMonitorEventRegister``
on a separate connection that receives events (see :mod:`kvmops.host.events`).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import libvirt
import libvirt_qemu

from kvmops.errors import ChannelError, KvmopsError, StateError
from kvmops.host.connection import Host, translate
from kvmops.host.events import EventQueue, open_event_connection
from kvmops.monitor.channel import MonitorChannel, MonitorEvent, qmp_error


@dataclass(frozen=True)
class _Gone:
    """Queued instead of an event when the VM stopped or libvirt went away."""

    error: KvmopsError


_Item = MonitorEvent | _Gone


def _on_monitor_event(_conn: libvirt.virConnect, _dom: libvirt.virDomain, event: str,
                      seconds: int, micros: int, details: str | None,
                      opaque: EventQueue[_Item]) -> None:
    try:
        opaque.put(MonitorEvent.from_parts(event, seconds, micros, details))
    except ValueError:  # undecodable details: keep the event, drop its data
        opaque.put(MonitorEvent.from_parts(event, seconds, micros, None))


class LibvirtMonitorChannel(MonitorChannel):
    """QMP to a running libvirt domain.

    ``host``, when given, is owned by the channel and closed with it.
    """

    def __init__(self, domain: libvirt.virDomain, *, host: Host | None = None) -> None:
        self.domain = domain
        self.name: str = domain.name()
        self.target = f"VM '{self.name}'"
        self._host = host
        self._uri: str = domain.connect().getURI()
        self._queue: EventQueue[_Item] | None = None
        self._conn: libvirt.virConnect | None = None
        self._callbacks: list[int] = []
        self._lifecycle_id: int | None = None

    # -------------------------------------------------------------- commands
    def _not_running(self) -> StateError:
        return StateError(f"VM '{self.name}' is not running: its QEMU monitor is not available",
                          actual="shut off", required="running",
                          hint=f"start it with 'kvmops vm start {self.name}'")

    def _translate(self, err: libvirt.libvirtError, what: str) -> KvmopsError:
        with contextlib.suppress(libvirt.libvirtError):
            if not self.domain.isActive():
                return self._not_running()
        return translate(err, f"{what} on VM '{self.name}'")

    def execute(self, command: str, arguments: Mapping[str, Any] | None = None) -> Any:
        request: dict[str, Any] = {"execute": command}
        if arguments:
            request["arguments"] = dict(arguments)
        try:
            reply_text = libvirt_qemu.qemuMonitorCommand(
                self.domain, json.dumps(request),
                libvirt_qemu.VIR_DOMAIN_QEMU_MONITOR_COMMAND_DEFAULT)
        except libvirt.libvirtError as err:
            raise self._translate(err, f"QMP command '{command}'") from err
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
        try:
            return str(libvirt_qemu.qemuMonitorCommand(
                self.domain, command_line, libvirt_qemu.VIR_DOMAIN_QEMU_MONITOR_COMMAND_HMP))
        except libvirt.libvirtError as err:
            raise self._translate(err, f"HMP command '{command_line}'") from err

    # -------------------------------------------------------------- events
    def listen(self) -> None:
        if self._queue is not None:
            return
        events: EventQueue[_Item] = EventQueue()
        conn = open_event_connection(self._uri)
        self._conn = conn
        self._queue = events
        try:
            dom = conn.lookupByUUIDString(self.domain.UUIDString())
            self._callbacks.append(libvirt_qemu.qemuMonitorEventRegister(
                conn, dom, None, _on_monitor_event, events, 0))
            self._lifecycle_id = conn.domainEventRegisterAny(
                dom, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, self._on_lifecycle, events)
            conn.registerCloseCallback(self._on_close, events)
            if not dom.isActive():  # stopped before we were subscribed
                events.put(_Gone(self._not_running()))
        except libvirt.libvirtError as err:
            self.close_events()
            raise self._translate(err, "subscribing to QEMU monitor events") from err

    def _on_lifecycle(self, _conn: libvirt.virConnect, _dom: libvirt.virDomain, event: int,
                      _detail: int, opaque: EventQueue[_Item]) -> None:
        if event == libvirt.VIR_DOMAIN_EVENT_STOPPED:
            opaque.put(_Gone(StateError(f"VM '{self.name}' stopped: no more monitor events",
                                        actual="shut off")))

    def _on_close(self, _conn: libvirt.virConnect, _reason: int,
                  opaque: EventQueue[_Item]) -> None:
        opaque.put(_Gone(ChannelError(
            f"lost the libvirt connection while listening to VM '{self.name}'",
            hint="is libvirtd still running?")))

    def _next_event(self, timeout: float | None) -> MonitorEvent | None:
        assert self._queue is not None
        item = self._queue.get(timeout)
        if isinstance(item, _Gone):
            raise item.error
        return item

    def close_events(self) -> None:
        """Stop listening (deregister callbacks, close the event connection)."""
        conn, self._conn = self._conn, None
        self._queue = None
        if conn is None:
            return
        for callback_id in self._callbacks:
            with contextlib.suppress(libvirt.libvirtError):
                libvirt_qemu.qemuMonitorEventDeregister(conn, callback_id)
        self._callbacks.clear()
        if self._lifecycle_id is not None:
            with contextlib.suppress(libvirt.libvirtError):
                conn.domainEventDeregisterAny(self._lifecycle_id)
            self._lifecycle_id = None
        with contextlib.suppress(libvirt.libvirtError):
            conn.unregisterCloseCallback()
        with contextlib.suppress(libvirt.libvirtError):
            conn.close()

    def close(self) -> None:
        self.close_events()
        if self._host is not None:
            self._host.close()
            self._host = None
