"""Per-app state: settings, database, job runner, event hub, libvirt connection."""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Collection
from typing import Any
from urllib.parse import urlsplit

from fastapi import Request

from kvmops.api.events import EventHub
from kvmops.api.limits import SlotLimiter
from kvmops.api.runner import JobRunner
from kvmops.api.settings import ApiSettings
from kvmops.api.throttle import LoginThrottle, SharedLoginThrottle
from kvmops.services import hosts, sriov
from kvmops.services.database import EventChannel, event_channel, open_database, shared
from kvmops.services.hostevents import LOCAL, HostWatches
from kvmops.services.session import Connection, SharedConnection
from kvmops.services.vms import DomainTypeCache, VmListCache

log = logging.getLogger("kvmops.api")
#: Events of a libvirt host (every server watching that host raises them itself).
HOST_EVENTS = ("domain", "host")


def libvirt_identity(uri: str | None) -> str:
    """Which libvirt daemon a server watches: a remote URI names it; a local one
    (``qemu:///system``) is the daemon of this machine."""
    uri = uri or os.environ.get("KVMOPS_URI") or "qemu:///system"
    return uri if urlsplit(uri).hostname else f"{socket.gethostname()}{uri}"


def relayed_twice(kind: str, data: dict[str, Any], mine: str | Collection[str]) -> bool:
    """An event another server relayed that this server's own libvirt watch raised too
    (both watch the same daemon): its clients already have it. ``mine``: the daemon(s)
    this server watches."""
    watched = {mine} if isinstance(mine, str) else mine
    return kind in HOST_EVENTS and data.get("libvirt") in watched


class ApiContext:
    def __init__(self, settings: ApiSettings) -> None:
        self.settings = settings
        self.store = open_database(settings.db_url)
        sriov.use_database(self.store)  # for the VF steps of NIC and VM use cases
        # host names (--host, migrate/evacuate targets) resolve in this server's database
        hosts.use_database(self.store)
        self.hub = EventHub()
        # PostgreSQL: other servers may share the database (job queue, events, throttle)
        self.shared = shared(self.store)
        self.runner = JobRunner(self.store, self.hub, settings.workers, shared=self.shared,
                                lease=settings.job_lease)
        self.channel: EventChannel | None = None
        self.libvirt = libvirt_identity(settings.uri)  # tags its domain and host events
        self.domain_types = DomainTypeCache()
        self.vm_list = VmListCache(self.domain_types)
        #: one life cycle watch per known host (the local one and every added one)
        self.host_events: HostWatches | None = None
        self.login_throttle: LoginThrottle = (
            SharedLoginThrottle(self.store, settings.login_max_failures, settings.login_window)
            if self.shared else
            LoginThrottle(settings.login_max_failures, settings.login_window))
        self.long_requests = SlotLimiter(settings.long_per_user, settings.long_total)
        self.initial_admin_password: str | None = None
        self._connection = SharedConnection(settings.uri)

    def host(self) -> Connection:
        """The server's one shared libvirt connection, opened again after a libvirtd restart."""
        return self._connection.get()

    def start_scale_out(self) -> None:
        """Shared database: events cross to the other servers' clients (LISTEN/NOTIFY)
        and this server claims queued jobs."""
        if not self.shared:
            return

        def received(kind: str, data: dict[str, Any]) -> None:
            if relayed_twice(kind, data, self.watched_daemons()):
                return
            self.hub.deliver(kind, data)
            if kind == "job" and data.get("state") == "queued":
                self.runner.wake()
            elif kind == "domain":
                self.vm_list.invalidate()

        self.channel = event_channel(self.store, self.runner.instance, received)
        self.hub.relay = self.channel.send
        self.channel.start()
        self.runner.start()
        log.info("server instance %s on a shared database: queued jobs, events and the "
                 "log-in throttle are shared with the other servers on it",
                 self.runner.instance)

    def watched_daemons(self) -> set[str]:
        """The libvirt daemons whose events this server raises itself."""
        mine = {self.libvirt}
        if self.host_events is not None:
            mine |= {libvirt_identity(uri) for uri in self.host_events.subscribed_uris()}
        return mine

    def host_events_state(self, name: str) -> str | None:
        """``subscribed`` / ``down: REASON`` for host ``name`` (None: not watched)."""
        return None if self.host_events is None else self.host_events.state(name)

    def start_events(self) -> None:
        """libvirt life cycle events of every known host into the hub (tagged ``host``)
        and the caches; after a libvirtd restart a watch subscribes again by itself (a
        remote host that is down: with a backoff), and the caches expire meanwhile."""
        if not self.settings.events:
            return

        def identity(host: str) -> str:
            if host == LOCAL or self.host_events is None:
                return self.libvirt
            uri = self.host_events.uri(host)
            return libvirt_identity(uri) if uri else host

        def changed(host: str, name: str, uuid: str, kind: str, detail: int) -> None:
            self.vm_list.invalidate()
            if kind in ("defined", "undefined"):
                self.domain_types.invalidate(uuid)
            self.hub.publish("domain", {"vm": name, "event": kind, "detail": detail,
                                        "libvirt": identity(host), "host": host})

        def connection(host: str, up: bool, error: str | None) -> None:
            if host == LOCAL:
                log.warning("libvirt life cycle events: %s", "subscribed again" if up else
                            f"connection to libvirtd lost ({error}); re-subscribing")
                # without events the caches must expire on their own
                self.vm_list.max_age = self._list_age if up else 0.0
                self.domain_types.ttl = self._types_ttl if up else 5.0
                self.domain_types.invalidate()
            else:
                log.warning("libvirt life cycle events of host %s: %s", host,
                            "subscribed" if up else f"down ({error}); retrying")
            self.vm_list.invalidate()
            event: dict[str, Any] = {"event": "libvirt-reconnected" if up
                                     else "libvirt-disconnected",
                                     "libvirt": identity(host), "host": host}
            if error:
                event["error"] = error
            self.hub.publish("host", event)

        self._list_age, self._types_ttl = self.vm_list.max_age, self.domain_types.ttl
        self.host_events = HostWatches(changed, connection, store=self.store,
                                       local_uri=self.settings.uri)
        self.host_events.start()

    def hosts_changed(self) -> None:
        """A host was added or removed here: watch it / stop watching it now."""
        if self.host_events is not None:
            self.host_events.sync()

    def close(self) -> None:
        self.hub.close()
        self.hub.relay = None
        if self.channel is not None:
            self.channel.stop()
        if self.host_events is not None:
            self.host_events.stop()
        self.runner.shutdown()
        self._connection.close()
        for service in (hosts, sriov):  # an in-process test may open another server
            service.use_database(None)
        self.store.close()


def get_context(request: Request) -> ApiContext:
    ctx: ApiContext = request.app.state.kvmops
    return ctx
