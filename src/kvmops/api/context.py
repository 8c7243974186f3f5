"""Per-app state: settings, database, job runner, event hub, libvirt connection."""

from __future__ import annotations

import contextlib
import threading

import libvirt
from fastapi import Request

from kvmops.api.events import DomainEvents, EventHub
from kvmops.api.limits import SlotLimiter
from kvmops.api.runner import JobRunner
from kvmops.api.settings import ApiSettings
from kvmops.api.throttle import LoginThrottle
from kvmops.api.vmlist import DomainTypeCache, VmListCache
from kvmops.host.connection import Host
from kvmops.store.db import Store


class ApiContext:
    def __init__(self, settings: ApiSettings) -> None:
        self.settings = settings
        self.store = Store(settings.db_url)
        self.hub = EventHub()
        self.runner = JobRunner(self.store, self.hub, settings.workers)
        self.domain_types = DomainTypeCache()
        self.vm_list = VmListCache(self.domain_types)
        self.domain_events: DomainEvents | None = None
        self.login_throttle = LoginThrottle(settings.login_max_failures, settings.login_window)
        self.long_requests = SlotLimiter(settings.long_per_user, settings.long_total)
        self.initial_admin_password: str | None = None
        self._host: Host | None = None
        self._host_lock = threading.Lock()

    def host(self) -> Host:
        """One shared libvirt connection (libvirt connections are thread-safe)."""
        with self._host_lock:
            host = self._host
            if host is not None:
                try:
                    alive = host.conn.isAlive()
                except libvirt.libvirtError:
                    alive = False
                if alive:
                    return host
                host.close()
            self._host = Host(self.settings.uri)
            return self._host

    def start_events(self) -> None:
        if not self.settings.events:
            return

        def changed(uuid: str, kind: str) -> None:
            self.vm_list.invalidate()
            if kind in ("defined", "undefined"):
                self.domain_types.invalidate(uuid)

        events = DomainEvents(self.hub, self.settings.uri, on_change=changed)
        if events.start():
            self.domain_events = events
        else:  # without events the caches must expire on their own
            self.domain_types.ttl = 5.0
            self.vm_list.max_age = 0.0

    def close(self) -> None:
        self.hub.close()
        if self.domain_events is not None:
            self.domain_events.stop()
        self.runner.shutdown()
        with self._host_lock:
            if self._host is not None:
                with contextlib.suppress(Exception):
                    self._host.close()
                self._host = None
        self.store.close()


def get_context(request: Request) -> ApiContext:
    ctx: ApiContext = request.app.state.kvmops
    return ctx
