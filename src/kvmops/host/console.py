"""A VM's serial console through libvirt (``virDomainOpenConsole``), like ``virsh console``.

The stream is non-blocking and driven by libvirt's event loop (see
:mod:`kvmops.host.events`): what the guest prints reaches ``on_data`` from the loop
thread; :meth:`SerialConsole.send` may be called from any thread. When the stream ends
(the VM stops, another session takes the console over, libvirtd goes away)
``on_closed`` is told why, once.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable

import libvirt

from kvmops.errors import HypervisorError, KvmopsError, StateError
from kvmops.host.connection import translate
from kvmops.host.events import open_event_connection

CHUNK = 64 * 1024
_READABLE = libvirt.VIR_STREAM_EVENT_READABLE
_ENDED = libvirt.VIR_STREAM_EVENT_ERROR | libvirt.VIR_STREAM_EVENT_HANGUP


class SerialConsole:
    def __init__(self, uri: str | None, vm: str, on_data: Callable[[bytes], None],
                 on_closed: Callable[[str | None], None]) -> None:
        self.uri = uri
        self.vm = vm
        self.on_data = on_data
        self.on_closed = on_closed
        self._conn: libvirt.virConnect | None = None
        self._stream: libvirt.virStream | None = None
        self._lock = threading.Lock()
        self._ended = False

    def open(self, *, force: bool = False) -> None:
        """Attach to the VM's first console; ``force`` takes it over from another session."""
        conn = open_event_connection(self.uri)
        try:
            domain = conn.lookupByName(self.vm)
            if not domain.isActive():
                raise StateError(f"VM '{self.vm}' is not running: its console is not there",
                                 actual="shut off", required="running",
                                 hint=f"start it with 'kvmops vm start {self.vm}'")
            stream = conn.newStream(libvirt.VIR_STREAM_NONBLOCK)
            flags = libvirt.VIR_DOMAIN_CONSOLE_FORCE if force else 0
            domain.openConsole(None, stream, flags)
            stream.eventAddCallback(_READABLE | _ENDED, self._event, None)
        except libvirt.libvirtError as err:
            with contextlib.suppress(libvirt.libvirtError):
                conn.close()
            error = translate(err, f"opening the console of VM '{self.vm}'")
            if not force and not error.hint:
                error.hint = "if another session holds it, take it over with --force"
            raise error from err
        except KvmopsError:
            with contextlib.suppress(libvirt.libvirtError):
                conn.close()
            raise
        self._conn, self._stream = conn, stream

    def _event(self, stream: libvirt.virStream, events: int, _opaque: object) -> None:
        if events & _READABLE:
            while True:
                try:
                    data = stream.recv(CHUNK)
                except libvirt.libvirtError as err:
                    self._end(err.get_error_message() or "the console stream failed")
                    return
                if data == -2:  # nothing more for now
                    break
                if not data:  # end of stream: the VM stopped or the console was taken
                    self._end(None)
                    return
                with contextlib.suppress(Exception):  # never raise into libvirt's loop
                    self.on_data(bytes(data))
        if events & _ENDED:
            self._end("the console stream was closed")

    def _end(self, reason: str | None) -> None:
        with self._lock:
            if self._ended:
                return
            self._ended = True
        with contextlib.suppress(Exception):
            self.on_closed(reason)

    def send(self, data: bytes, timeout: float = 10.0) -> None:
        """Type ``data`` on the console (waits while the stream is full)."""
        stream = self._stream
        if stream is None or self._ended:
            raise StateError(f"the console of VM '{self.vm}' is closed")
        deadline = time.monotonic() + timeout
        view = memoryview(data)
        while view:
            try:
                sent = stream.send(bytes(view))
            except libvirt.libvirtError as err:
                raise HypervisorError(f"writing to the console of VM '{self.vm}' failed: "
                                      f"{err.get_error_message()}") from err
            if sent == -2:
                if time.monotonic() > deadline:
                    raise HypervisorError(f"the console of VM '{self.vm}' takes no input")
                time.sleep(0.01)
                continue
            view = view[sent:]

    def close(self) -> None:
        stream, conn, self._stream, self._conn = self._stream, self._conn, None, None
        self._ended = True
        if stream is not None:
            with contextlib.suppress(libvirt.libvirtError):
                stream.eventRemoveCallback()
            with contextlib.suppress(libvirt.libvirtError):
                stream.finish()
        if conn is not None:
            with contextlib.suppress(libvirt.libvirtError):
                conn.close()
