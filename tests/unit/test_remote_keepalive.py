"""host/remote.open_remote: libvirt's event loop is registered *before* a remote
connection opens (libvirt refuses keepalive on a connection opened without one: "the
caller doesn't support keepalive protocol"), then keepalive is set; a local URI gets
neither."""

from __future__ import annotations

from typing import Any

import pytest

from kvmops.host import events, remote


class _Conn:
    def __init__(self, order: list[str]) -> None:
        self.order = order

    def setKeepAlive(self, interval: int, count: int) -> int:
        self.order.append(f"keepalive {interval} {count}")
        return 0


@pytest.mark.parametrize("uri", ["qemu+ssh://root@10.250.3.2/system?keyfile=/k",
                                 "qemu+tcp://10.250.3.2/system"])
def test_event_loop_before_the_connection_then_keepalive(monkeypatch: pytest.MonkeyPatch,
                                                         uri: str) -> None:
    order: list[str] = []

    class FakeHost:
        def __init__(self, opened: str) -> None:
            order.append(f"open {opened}")
            self.conn: Any = _Conn(order)

    monkeypatch.setattr(events, "ensure_event_loop", lambda: order.append("event loop"))
    monkeypatch.setattr(remote, "Host", FakeHost)
    remote.open_remote(uri)
    assert order == ["event loop", f"open {uri}",
                     f"keepalive {remote.KEEPALIVE_INTERVAL_S} {remote.KEEPALIVE_COUNT}"]


def test_local_connection_gets_no_keepalive(monkeypatch: pytest.MonkeyPatch) -> None:
    order: list[str] = []

    class FakeHost:
        def __init__(self, opened: str) -> None:
            order.append(f"open {opened}")
            self.conn: Any = _Conn(order)

    monkeypatch.setattr(events, "ensure_event_loop", lambda: order.append("event loop"))
    monkeypatch.setattr(remote, "Host", FakeHost)
    remote.open_remote("qemu:///system")
    assert order == ["open qemu:///system"]
