"""One life cycle watch per known host (services/hostevents.HostWatches) with fake
watches: started for new hosts, stopped for removed or moved ones, one watch for two names
of one daemon, events and state tagged with the host name; the retry backoff of
host/events.LifecycleWatch; the scale-out de-duplication over several daemons."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest

from kvmops.api.context import relayed_twice
from kvmops.host import events as host_events
from kvmops.services.hostevents import HostWatches


class FakeWatch:
    def __init__(self, uri: str, on_event: Callable[[str, str, str, int], None],
                 on_connection: Callable[[bool], None], up: bool) -> None:
        self.uri, self.on_event, self.on_connection = uri, on_event, on_connection
        self.error: str | None = None
        self.up = up
        self.started: bool | None = None  # background?
        self.stopped = False

    @property
    def active(self) -> bool:
        return self.started is not None and self.up and not self.stopped

    def start(self, *, background: bool = False) -> bool:
        self.started = background
        if not self.up:
            self.error = f"cannot connect to {self.uri}"
        return self.up and not background

    def stop(self) -> None:
        self.stopped = True


class Bed:
    def __init__(self, known: dict[str, str], down: set[str] | None = None) -> None:
        self.known = dict(known)
        self.down = down or set()
        self.watches: list[FakeWatch] = []
        self.events: list[tuple[str, str, str, str, int]] = []
        self.states: list[tuple[str, bool, str | None]] = []
        self.hub = HostWatches(lambda *e: self.events.append(e),
                               lambda *s: self.states.append(s),
                               known=lambda: dict(self.known), factory=self.factory,
                               resync_s=0)

    def factory(self, uri: str, on_event: Callable[[str, str, str, int], None],
                on_connection: Callable[[bool], None]) -> FakeWatch:
        watch = FakeWatch(uri, on_event, on_connection, up=uri not in self.down)
        self.watches.append(watch)
        return watch

    def watch(self, uri: str) -> FakeWatch:
        return next(w for w in self.watches if w.uri == uri and not w.stopped)


def test_a_watch_per_host_started_and_stopped_with_the_host_table() -> None:
    bed = Bed({"local": "qemu:///system", "h2": "qemu+tcp://10.250.7.2/system"})
    bed.hub.start()
    local, h2 = bed.watch("qemu:///system"), bed.watch("qemu+tcp://10.250.7.2/system")
    assert local.started is False and h2.started is True  # remote ones in the background
    assert bed.hub.state("local") == "subscribed" and bed.hub.state("h2") == "subscribed"

    h2.on_event("vm1", "uuid-1", "started", 1)
    local.on_event("vm0", "uuid-0", "stopped", 0)
    assert bed.events == [("h2", "vm1", "uuid-1", "started", 1),
                          ("local", "vm0", "uuid-0", "stopped", 0)]

    bed.known["h3"] = "qemu+tcp://10.250.7.3/system"
    bed.hub.sync()
    assert bed.hub.state("h3") == "subscribed" and len(bed.watches) == 3
    bed.hub.sync()  # nothing new: no second watch
    assert len(bed.watches) == 3

    del bed.known["h2"]
    bed.known["h3"] = "qemu+tcp://10.250.7.4/system"  # moved: watched at the new URI
    bed.hub.sync()
    assert h2.stopped and bed.hub.state("h2") is None
    assert bed.hub.uri("h3") == "qemu+tcp://10.250.7.4/system"
    assert [w.uri for w in bed.watches if not w.stopped] == [
        "qemu:///system", "qemu+tcp://10.250.7.4/system"]

    bed.hub.stop()
    assert all(w.stopped for w in bed.watches)
    bed.known["h5"] = "qemu+tcp://10.250.7.5/system"
    bed.hub.sync()  # after stop nothing starts again
    assert len(bed.watches) == 4


def test_a_host_that_is_down_shows_why_and_its_state_changes_are_reported() -> None:
    bed = Bed({"local": "qemu:///system", "gone": "qemu+tcp://10.250.7.99/system"},
              down={"qemu+tcp://10.250.7.99/system"})
    bed.hub.start()
    assert bed.hub.state("gone") == "down: cannot connect to qemu+tcp://10.250.7.99/system"
    assert bed.hub.subscribed_uris() == {"qemu:///system"}
    assert bed.hub.states() == {"local": "subscribed",
                                "gone": "down: cannot connect to qemu+tcp://10.250.7.99/system"}
    gone = bed.watch("qemu+tcp://10.250.7.99/system")
    gone.up = True
    gone.on_connection(True)
    gone.error = "connection to libvirtd lost"
    gone.on_connection(False)
    assert bed.states == [("gone", True, None), ("gone", False, "connection to libvirtd lost")]


def test_a_local_daemon_that_is_down_at_start_is_reported_at_once() -> None:
    bed = Bed({"local": "qemu:///system"}, down={"qemu:///system"})
    bed.hub.start()
    assert bed.states == [("local", False, "cannot connect to qemu:///system")]


def test_two_names_for_one_daemon_are_watched_once() -> None:
    bed = Bed({"local": "qemu:///system", "alias": "qemu:///system"})
    bed.hub.start()
    assert len(bed.watches) == 1 and bed.hub.state("alias") == "subscribed"
    del bed.known["local"]  # (cannot happen for local; shows the hand-over)
    bed.hub.sync()
    # the watch went with the name it was started for; the other name has its own now
    assert bed.watches[0].stopped and len(bed.watches) == 2
    assert bed.hub.state("alias") == "subscribed" and bed.hub.state("local") is None


def test_the_retry_backs_off_up_to_its_maximum(monkeypatch: pytest.MonkeyPatch) -> None:
    waits: list[float] = []
    watch = host_events.LifecycleWatch("qemu+tcp://10.250.7.99/system", lambda *a: None)
    watch.RETRY_MAX_S = 8.0
    attempts = iter([False] * 6 + [True])

    class Clock:
        def wait(self, delay: float) -> bool:
            waits.append(delay)
            return False

        def is_set(self) -> bool:
            return False

    monkeypatch.setattr(watch, "_stopped", Clock())
    monkeypatch.setattr(watch, "_subscribe", lambda: next(attempts))
    watch._reconnect(first=0.0)
    assert waits == [0.0, 2.0, 4.0, 8.0, 8.0, 8.0, 8.0]
    waits.clear()
    attempts = iter([False, False, True])
    plain = host_events.LifecycleWatch("qemu:///system", lambda *a: None)
    monkeypatch.setattr(plain, "_stopped", Clock())
    monkeypatch.setattr(plain, "_subscribe", lambda: next(attempts))
    plain._reconnect()
    assert waits == [1.0, 1.0, 1.0]  # the local default: every second, as before


def test_relayed_events_of_any_watched_daemon_are_dropped() -> None:
    mine = {"box/qemu:///system", "qemu+tcp://10.250.7.2/system"}
    assert relayed_twice("domain", {"libvirt": "qemu+tcp://10.250.7.2/system"}, mine)
    assert relayed_twice("host", {"libvirt": "box/qemu:///system"}, mine)
    assert not relayed_twice("domain", {"libvirt": "qemu+tcp://10.250.7.3/system"}, mine)
    assert relayed_twice("domain", {"libvirt": "box/qemu:///system"}, "box/qemu:///system")


def test_follow_lifecycle_merges_the_hosts_events_into_one_queue() -> None:
    from kvmops.services.caller import Caller
    from kvmops.services.hostevents import follow_lifecycle

    made: list[FakeWatch] = []

    def factory(uri: str, on_event: Callable[[str, str, str, int], None],
                on_connection: Callable[[bool], None]) -> FakeWatch:
        made.append(FakeWatch(uri, on_event, on_connection, up=True))
        return made[-1]

    with follow_lifecycle(Caller.local(), None, local_uri="qemu:///system",
                          factory=factory) as (next_event, hosts):
        assert hosts == ["local"] and [w.uri for w in made] == ["qemu:///system"]
        assert next_event(0.01) is None
        made[0].on_event("vm1", "u1", "started", 1)
        made[0].on_connection(False)
        first, second = next_event(1), next_event(1)
    assert first is not None and second is not None
    assert first.to_dict()["host"] == "local" and first.vm == "vm1"
    assert first.event == "started" and first.detail == 1
    assert (second.host, second.event) == ("local", "down")
    assert made[0].stopped  # the watch ends with the block


def test_events_lifecycle_lines() -> None:
    from kvmops.cli.events import format_lifecycle
    from kvmops.services.hostevents import HostEvent

    started = HostEvent(host="h2", event="started", vm="web1", uuid="u", detail=0)
    assert format_lifecycle(started, False).endswith("  h2  started  web1")
    data = json.loads(format_lifecycle(started, True))
    assert data["host"] == "h2" and data["vm"] == "web1" and data["event"] == "started"
    down = HostEvent(host="h2", event="down", error="connection to libvirtd lost")
    assert format_lifecycle(down, False).endswith("  h2  down  connection to libvirtd lost")
