"""Host listing in parallel under a deadline (kvmops.services.hosts), with fake probes:
a host that does not answer in time is reported unreachable with the reason while the
others are reported with their facts; add/remove rules; ``last_seen``."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from kvmops.errors import (
    AlreadyExistsError,
    HostUnavailableError,
    NotFoundError,
    StateError,
    ValidationError,
)
from kvmops.host.remote import Summary
from kvmops.services import hosts
from kvmops.services.caller import Caller

ADMIN = Caller(name="tester", role="admin")
FAST = "qemu+tcp://10.250.0.2/system"
SLOW = "qemu+tcp://10.250.0.9/system"
DOWN = "qemu+tcp://127.0.0.1:1/system"


def _summary(vms: int) -> Summary:
    return Summary(hostname="h", libvirt_version="9.0.0", qemu_version="7.2.0",
                   vms_running=1, vms_defined=vms)


class FakeProbe:
    """Answers FAST and the local URI at once, fails DOWN, blocks on SLOW until
    ``release`` (so the test proves the listing returned while SLOW still hung)."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.asked: list[str] = []

    def __call__(self, uri: str) -> Summary:
        self.asked.append(uri)
        if uri == SLOW:
            self.release.wait(60)
            return _summary(99)
        if uri == DOWN:
            raise HostUnavailableError(f"cannot connect to libvirt at {uri}: refused")
        return _summary(3)


@pytest.fixture
def db(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'state.db'}"


def test_gather_returns_by_the_deadline_without_the_hanging_task() -> None:
    blocked = threading.Event()
    try:
        found = hosts.gather({"a": lambda: 1, "b": lambda: blocked.wait(60) and 2,
                              "c": lambda: 3}, deadline=0.5)
        assert not blocked.is_set()  # "b" still hangs while the answer is back
        assert found["a"].value == 1 and found["c"].value == 3
        assert found["b"].value is None
        assert found["b"].error == "did not answer within 0.5 s"
    finally:
        blocked.set()


def test_gather_turns_errors_into_messages() -> None:
    def refused() -> int:
        raise HostUnavailableError("cannot connect: refused", hint="is libvirtd running?")

    def bug() -> int:
        raise RuntimeError("boom")

    found = hosts.gather({"x": refused, "y": bug}, deadline=30)
    assert found["x"].error == "cannot connect: refused"
    assert found["y"].error == "RuntimeError: boom"


def test_list_reports_each_host_on_its_own(db: str) -> None:
    probe = FakeProbe()
    for name, uri in (("fast", FAST), ("slow", SLOW), ("down", DOWN)):
        hosts.add_host(ADMIN, name, uri, db, check=False)
    try:
        listed = {h.name: h for h in hosts.list_hosts(ADMIN, db, deadline=0.5, probe=probe)}
        assert not probe.release.is_set()
    finally:
        probe.release.set()
    assert list(listed) == ["local", "down", "fast", "slow"]
    assert listed["local"].local and listed["local"].reachable
    assert listed["fast"].reachable and listed["fast"].vms_defined == 3
    assert listed["fast"].vms_running == 1 and listed["fast"].error is None
    assert not listed["slow"].reachable and listed["slow"].vms_defined is None
    assert listed["slow"].error == "did not answer within 0.5 s"
    assert not listed["down"].reachable
    assert listed["down"].error == f"cannot connect to libvirt at {DOWN}: refused"
    assert sorted(probe.asked[:4]) == sorted({FAST, SLOW, DOWN, listed["local"].uri})
    # last_seen is kept for the host that answered, none for the others.

    def nothing(uri: str) -> Summary:
        raise HostUnavailableError("gone")

    again = {h.name: h for h in hosts.list_hosts(ADMIN, db, deadline=5, probe=nothing)}
    assert again["fast"].last_seen == listed["fast"].last_seen is not None
    assert again["slow"].last_seen is None and again["down"].last_seen is None
    assert not any(h.reachable for h in again.values())


def test_add_checks_the_host_first_and_names_it(db: str) -> None:
    probe = FakeProbe()
    with pytest.raises(HostUnavailableError) as caught:
        hosts.add_host(ADMIN, "down", DOWN, db, probe=probe)
    assert "host 'down'" in caught.value.message and "refused" in caught.value.message
    assert "--no-check" in (caught.value.hint or "")
    added = hosts.add_host(ADMIN, "fast", FAST, db, probe=probe, labels={"rack": "r1"})
    assert added.reachable and added.vms_defined == 3 and added.added_by == "tester"
    assert [h.name for h in hosts.list_hosts(ADMIN, db, probe=probe)] == ["local", "fast"]
    assert hosts.uri_of(ADMIN, "fast", db) == FAST
    def no_health(uri: str) -> Summary:
        raise HostUnavailableError("no health")

    info = hosts.host_info(ADMIN, "fast", db, probe=no_health, deadline=5)  # type: ignore[arg-type]
    assert not info.reachable and info.error == "no health"
    assert info.labels == {"rack": "r1"} and info.last_seen is not None


def test_add_and_remove_rules(db: str) -> None:
    hosts.add_host(ADMIN, "h2", FAST, db, check=False)
    with pytest.raises(AlreadyExistsError):
        hosts.add_host(ADMIN, "h2", DOWN, db, check=False)
    with pytest.raises(StateError):
        hosts.add_host(ADMIN, "local", FAST, db, check=False)
    with pytest.raises(StateError):
        hosts.remove_host(ADMIN, "local", db)
    with pytest.raises(ValidationError):
        hosts.add_host(ADMIN, "h3", "qemu+ssh://-oProxyCommand=id/system", db, check=False)
    with pytest.raises(ValidationError):
        hosts.add_host(ADMIN, "h3", FAST, db, check=False, labels={"k": "a b"})
    hosts.remove_host(ADMIN, "h2", db)
    with pytest.raises(NotFoundError):
        hosts.remove_host(ADMIN, "h2", db)
    with pytest.raises(NotFoundError):
        hosts.host_info(ADMIN, "h2", db)
