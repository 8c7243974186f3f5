"""The connection pool of managed hosts (kvmops.host.remote.Pool), with fake
connections: one per URI reused while alive, opened again when dead, not kept after a
failure, a caller behind a hanging attempt gives up, ``drop`` closes."""

from __future__ import annotations

import threading

import pytest

from kvmops.errors import HostUnavailableError, NotFoundError
from kvmops.host.connection import Host
from kvmops.host.remote import Pool


class FakeHost:
    def __init__(self, uri: str) -> None:
        self.uri = uri
        self.up = True
        self.closed = False

    def alive(self) -> bool:
        return self.up and not self.closed

    def close(self) -> None:
        self.closed = True


class Opener:
    def __init__(self) -> None:
        self.opened: list[FakeHost] = []

    def __call__(self, uri: str) -> Host:
        host = FakeHost(uri)
        self.opened.append(host)
        return host  # type: ignore[return-value]


def test_reused_while_alive_reopened_when_dead() -> None:
    opener = Opener()
    pool = Pool(opener)
    with pool.connection("qemu+tcp://a/system") as first:
        pass
    with pool.connection("qemu+tcp://a/system") as again:
        assert again is first
    with pool.connection("qemu+tcp://b/system") as other:
        assert other is not first
    opener.opened[0].up = False  # libvirtd went away (keepalive closed it)
    with pool.connection("qemu+tcp://a/system") as fresh:
        assert fresh is not first
    assert opener.opened[0].closed and len(opener.opened) == 3


@pytest.mark.parametrize("error", [HostUnavailableError("lost"), NotFoundError("x")])
def test_not_kept_after_a_failure(error: Exception) -> None:
    opener = Opener()
    pool = Pool(opener)
    with pytest.raises(type(error)), pool.connection("qemu+tcp://a/system"):
        raise error
    assert opener.opened[0].closed
    with pool.connection("qemu+tcp://a/system") as fresh:
        assert fresh is opener.opened[1]  # type: ignore[comparison-overlap]


def test_a_caller_behind_a_hanging_attempt_gives_up_and_drop_closes() -> None:
    release, entered = threading.Event(), threading.Event()
    opener = Opener()
    pool = Pool(opener, wait=0.2)

    def hang() -> None:
        with pool.connection("qemu+tcp://slow/system"):
            entered.set()
            release.wait(60)

    worker = threading.Thread(target=hang, daemon=True)
    worker.start()
    assert entered.wait(60)
    try:
        with pytest.raises(HostUnavailableError, match="still waiting"), \
                pool.connection("qemu+tcp://slow/system"):
            pass
        assert len(opener.opened) == 1
        pool.drop("qemu+tcp://slow/system")  # does not wait for the hanging attempt
        assert not opener.opened[0].closed
    finally:
        release.set()
        worker.join(60)
    assert opener.opened[0].closed  # closed when its user was done, not kept
    with pool.connection("qemu+tcp://slow/system") as fresh:
        assert fresh is opener.opened[1]  # type: ignore[comparison-overlap]
    pool.drop("qemu+tcp://slow/system")
    assert opener.opened[1].closed
    pool.drop("qemu+tcp://never/system")  # nothing open: nothing to do
