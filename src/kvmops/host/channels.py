"""The libvirt side of a VM's QEMU monitor events.

``virConnectDomainQemuMonitorEventRegister`` on a connection of its own that
receives events (see :mod:`kvmops.host.events`), with the VM's life cycle and
the connection's close watched too, so a listener learns when no more events
will come. Commands go through :meth:`kvmops.host.domain.Domain.monitor_command`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import libvirt
import libvirt_qemu

from kvmops.host.errors import translate
from kvmops.host.events import open_event_connection

#: ``on_event(name, seconds, microseconds, details_json)``
MonitorEventCallback = Callable[[str, int, int, str | None], None]


class MonitorSubscription:
    """QEMU monitor events of one VM until :meth:`close`.

    ``on_event`` gets each event; ``on_stopped(already)`` is called when the VM stops
    (``already``: it had stopped before the subscription began), ``on_lost`` when the
    libvirt connection goes away. All three run in libvirt's event loop thread.
    """

    def __init__(self, uri: str, uuid: str, *, on_event: MonitorEventCallback,
                 on_stopped: Callable[[bool], None], on_lost: Callable[[], None],
                 what: str) -> None:
        self._on_event = on_event
        self._on_stopped = on_stopped
        self._on_lost = on_lost
        self._callbacks: list[int] = []
        self._lifecycle_id: int | None = None
        conn = open_event_connection(uri)
        self._conn: Any = conn
        try:
            dom = conn.lookupByUUIDString(uuid)
            self._callbacks.append(libvirt_qemu.qemuMonitorEventRegister(
                conn, dom, None, self._event, None, 0))
            self._lifecycle_id = conn.domainEventRegisterAny(
                dom, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, self._lifecycle, None)
            conn.registerCloseCallback(self._closed, None)
            if not dom.isActive():  # stopped before we were subscribed
                on_stopped(True)
        except libvirt.libvirtError as err:
            self.close()
            raise translate(err, what) from err

    def _event(self, _conn: Any, _dom: Any, event: str, seconds: int, micros: int,
               details: str | None, _opaque: object) -> None:
        self._on_event(event, seconds, micros, details)

    def _lifecycle(self, _conn: Any, _dom: Any, event: int, _detail: int,
                   _opaque: object) -> None:
        if event == libvirt.VIR_DOMAIN_EVENT_STOPPED:
            self._on_stopped(False)

    def _closed(self, _conn: Any, _reason: int, _opaque: object) -> None:
        self._on_lost()

    def close(self) -> None:
        """Deregister the callbacks and close the event connection (idempotent)."""
        conn, self._conn = self._conn, None
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
