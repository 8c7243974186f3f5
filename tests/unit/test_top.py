"""services.top: sorting (numbers biggest first, unknown last, reverse) and a session's
rates between two readings, on fake readings (no libvirt)."""

from __future__ import annotations

import pytest

from kvmops.errors import HostUnavailableError, ValidationError
from kvmops.services import sampler
from kvmops.services import top as service
from kvmops.services.caller import Caller
from kvmops.services.top import TopRow, sort_rows
from tests.unit.domstats_factory import Dom
from tests.unit.test_sampler import Node, Stats, reading


def rows() -> list[TopRow]:
    return [TopRow(name="b", host="local", state="running", cpu_percent=5.0, memory_bytes=10),
            TopRow(name="a", host="local", state="paused", cpu_percent=None, memory_bytes=30),
            TopRow(name="c", host="local", state="running", cpu_percent=50.0,
                   memory_bytes=20)]


def test_sort_numbers_biggest_first_unknown_last() -> None:
    assert [r.name for r in sort_rows(rows(), "cpu")] == ["c", "b", "a"]
    assert [r.name for r in sort_rows(rows(), "cpu", reverse=True)] == ["b", "c", "a"]
    assert [r.name for r in sort_rows(rows(), "memory")] == ["a", "c", "b"]
    assert [r.name for r in sort_rows(rows(), "name")] == ["a", "b", "c"]
    assert [r.name for r in sort_rows(rows(), "state")] == ["a", "b", "c"]


def test_sort_refuses_an_unknown_column() -> None:
    with pytest.raises(ValidationError, match=r"cannot sort by 'bogus'.*cpu"):
        sort_rows([], "bogus")


def test_session_rates_between_two_readings(monkeypatch: pytest.MonkeyPatch) -> None:
    readings = iter([
        reading(0.0, Dom("vm1", 0.0, cpu_time_ns=0), node=Node(0, 0, cpus=4)),
        reading(2.0, Dom("vm1", 2.0, cpu_time_ns=2 * 10**9), node=Node(0, 0, cpus=4)),
    ])
    monkeypatch.setattr(service, "hosts_of", lambda caller, host: ["local"])
    monkeypatch.setattr(sampler, "read_host", lambda name, **kw: next(readings))
    monkeypatch.setattr(sampler, "agent_states", lambda caller, name: {"vm1": "connected"})
    session = service.TopSession(Caller(name="t"), None)
    first = session.refresh()
    assert [(r.name, r.cpu_percent) for r in first.rows] == [("vm1", None)]
    second = session.refresh()
    (row,) = second.rows
    assert row.cpu_percent == pytest.approx(25.0)  # one of 4 host CPUs, as virt-top
    assert row.agent == "connected" and row.state == "running"
    assert set(row.model_dump()) >= {"name", "state", "cpu_percent"}


def test_a_single_host_that_is_down_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    down = sampler.Reading(stats=Stats(collected_at=0.0, domains=(), up=False,
                                       error="connection refused"), node=None)
    monkeypatch.setattr(service, "hosts_of", lambda caller, host: ["far"])
    monkeypatch.setattr(sampler, "read_host", lambda name, **kw: down)
    with pytest.raises(HostUnavailableError, match="far: connection refused"):
        service.TopSession(Caller(name="t"), "far").refresh()


def test_once_checks_its_arguments_before_waiting() -> None:
    with pytest.raises(ValidationError, match="delay"):
        service.once(Caller(name="t"), None, delay_s=0)
    with pytest.raises(ValidationError, match="sort"):
        service.once(Caller(name="t"), None, sort="nope")


def test_once_reads_again_for_a_vm_that_was_busy(monkeypatch: pytest.MonkeyPatch) -> None:
    """A running VM whose second reading timed out gets its rates from a third."""
    readings = iter([
        reading(0.0, Dom("vm1", 0.0, cpu_time_ns=0), Dom("vm2", 0.0, cpu_time_ns=0)),
        reading(1.0, Dom("vm1", 1.0, cpu_time_ns=0, timed_out=True),
                Dom("vm2", 1.0, cpu_time_ns=10**8)),
        reading(2.0, Dom("vm1", 2.0, cpu_time_ns=10**9), Dom("vm2", 2.0, timed_out=True)),
    ])
    monkeypatch.setattr(service, "hosts_of", lambda caller, host: ["local"])
    monkeypatch.setattr(sampler, "read_host", lambda name, **kw: next(readings))
    monkeypatch.setattr(sampler, "agent_states", lambda caller, name: {})
    snap = service.once(Caller(name="t"), None, delay_s=0.01, sort="name")
    assert [(r.name, r.cpu_percent) for r in snap.rows] == [
        ("vm1", pytest.approx(50.0)), ("vm2", pytest.approx(10.0))]


def test_with_several_hosts_one_down_is_noted_and_the_others_listed(
        monkeypatch: pytest.MonkeyPatch) -> None:
    down = sampler.Reading(stats=Stats(collected_at=0.0, domains=(), up=False,
                                       error="connection refused"), node=None)
    monkeypatch.setattr(service, "hosts_of", lambda caller, host: ["local", "far"])
    monkeypatch.setattr(sampler, "read_host", lambda name, **kw: down if name == "far"
                        else reading(0.0, Dom("vm1", 0.0)))
    monkeypatch.setattr(sampler, "agent_states", lambda caller, name: {})
    snap = service.TopSession(Caller(name="t"), "all").refresh()
    assert [(r.host, r.name) for r in snap.rows] == [("local", "vm1")]
    assert snap.errors == {"far": "host far: connection refused"}
