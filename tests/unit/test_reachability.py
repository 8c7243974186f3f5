"""A host that failed lately is answered for at once by the next list (services.fleet,
services.hosts.list_hosts, fleet.health_of_all) while one background probe per URI asks
it again; when the probe answers, the next list includes the host. On fakes: a "silent"
host hangs until the test releases it, a "flaky" one fails, then answers."""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator

import pytest

from kvmops.errors import HostUnavailableError
from kvmops.host.remote import Summary
from kvmops.services import fleet, hosts, reachability
from kvmops.services.caller import Caller
from kvmops.services.hosts import _Known
from kvmops.services.vms import VmListItem

CALLER = Caller.local()
SILENT, FLAKY = "qemu+tcp://silent/system", "qemu+tcp://flaky/system"
WAIT = 30  # a safety bound for a background thread to get somewhere, never a measure


def _vm(name: str, host: str) -> VmListItem:
    return VmListItem(name=name, uuid=f"uuid-{name}", state="shut off", vcpus=1,
                      memory=64 * 1024**2, memory_current=None, cpu_time_ns=None,
                      accelerator="tcg", autostart=False, persistent=True, host=host)


class Fakes:
    """The remote hosts' answers: silent hangs until ``release``; flaky fails while
    ``failing`` and otherwise waits for ``gate``, then answers."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.gate = threading.Event()
        self.failing = True
        self.calls: dict[str, list[float]] = {"silent": [], "flaky": []}
        self.called = threading.Event()

    def call(self, name: str, deadline: float) -> None:
        self.calls[name].append(deadline)
        self.called.set()
        if name == "silent":
            self.release.wait()
            raise HostUnavailableError(f"host 'silent' ({SILENT}) cannot be reached: "
                                       "late failure")
        if self.failing:
            raise HostUnavailableError(f"host 'flaky' ({FLAKY}) cannot be reached: "
                                       "No route to host")
        assert self.gate.wait(WAIT)


@pytest.fixture
def fakes(monkeypatch: pytest.MonkeyPatch) -> Iterator[Fakes]:
    fake = Fakes()
    known = [("local", "qemu:///system", True), ("silent", SILENT, False),
             ("flaky", FLAKY, False)]
    monkeypatch.setattr(hosts, "known_hosts", lambda db=None: known)

    def remote(name: str, uri: str, deadline: float) -> list[VmListItem]:
        fake.call(name, deadline)
        return [_vm(f"{name}-vm", name)]

    monkeypatch.setattr(fleet, "_remote_vms", remote)
    yield fake
    fake.release.set()
    fake.gate.set()


def _settled(memory: reachability.Reachability, uri: str) -> None:
    for _ in range(WAIT * 20):
        if memory.in_flight(uri) == 0:
            return
        threading.Event().wait(0.05)
    raise AssertionError(f"the probe of {uri} did not end")


def _errors(found: fleet.AllVms) -> dict[str, str]:
    return {gone.host: gone.error for gone in found.unreachable}


def test_the_next_list_answers_at_once_for_a_silent_host_one_call_in_flight(
        fakes: Fakes, fresh_reachability: reachability.Reachability) -> None:
    fakes.failing = False
    fakes.gate.set()
    first = fleet.list_all_vms(CALLER, 0.3, local=lambda: [])
    assert _errors(first) == {"silent": "did not answer within 0.3 s"}
    assert fakes.calls["silent"] == [0.3]
    # the next lists (a long deadline: waiting would show in the reason) ask silent
    # nothing: its first call still hangs, it is the one in flight
    for _ in range(2):
        again = fleet.list_all_vms(CALLER, WAIT, local=lambda: [])
        assert re.fullmatch(r"not answering since \d\d:\d\d:\d\d UTC: did not answer "
                            r"within 0\.3 s; checking again in the background",
                            _errors(again)["silent"]), again.unreachable
        assert [vm.name for vm in again.vms] == ["flaky-vm"]
    assert fakes.calls["silent"] == [0.3]
    assert fresh_reachability.in_flight(SILENT) == 1
    # its late failure replaces the reason; the next list starts one probe
    fakes.release.set()
    _settled(fresh_reachability, SILENT)
    down = fresh_reachability.down(SILENT)
    assert down is not None and down.reason == "late failure"
    later = fleet.list_all_vms(CALLER, WAIT, local=lambda: [])
    assert _errors(later)["silent"].endswith(": late failure; checking again in the "
                                             "background")
    _settled(fresh_reachability, SILENT)
    assert fakes.calls["silent"] == [0.3, reachability.PROBE_DEADLINE_S]


def test_the_background_probe_brings_the_host_back(
        fakes: Fakes, fresh_reachability: reachability.Reachability) -> None:
    fakes.release.set()
    first = fleet.list_all_vms(CALLER, 5, local=lambda: [], only=["flaky"])
    assert _errors(first) == {"flaky": "No route to host"}
    fakes.failing = False  # it answers from now on, once the gate opens
    fakes.called.clear()
    second = fleet.list_all_vms(CALLER, WAIT, local=lambda: [], only=["flaky"])
    assert _errors(second)["flaky"].endswith(": No route to host; checking again in "
                                             "the background")
    assert fakes.called.wait(WAIT)  # the probe runs, held at the gate
    third = fleet.list_all_vms(CALLER, WAIT, local=lambda: [], only=["flaky"])
    assert "flaky" in _errors(third)
    assert fakes.calls["flaky"] == [5, reachability.PROBE_DEADLINE_S]  # one probe only
    with pytest.raises(HostUnavailableError, match="not answering since"):
        fleet.host_vms(CALLER, "flaky", deadline=WAIT)
    fakes.gate.set()
    _settled(fresh_reachability, FLAKY)
    back = fleet.list_all_vms(CALLER, WAIT, local=lambda: [], only=["flaky"])
    assert back.unreachable == [] and [vm.host for vm in back.vms] == ["flaky"]
    assert fresh_reachability.down(FLAKY) is None


def test_host_list_and_dashboard_health_answer_at_once_for_a_failed_host(
        monkeypatch: pytest.MonkeyPatch,
        fresh_reachability: reachability.Reachability) -> None:
    known = [_Known(name="local", uri="qemu:///system", local=True),
             _Known(name="flaky", uri=FLAKY, local=False)]
    monkeypatch.setattr(hosts, "_known", lambda db: known)
    monkeypatch.setattr(hosts, "_mark_seen", lambda db, names, when: None)
    monkeypatch.setattr(hosts, "known_hosts",
                        lambda db=None: [(k.name, k.uri, k.local) for k in known])
    asked: list[str] = []
    answering = threading.Event()

    def probe(uri: str) -> Summary:
        asked.append(uri)
        if uri == FLAKY and not answering.is_set():
            raise HostUnavailableError("cannot connect: refused")
        return Summary(hostname="h", libvirt_version="10", qemu_version="8",
                       vms_running=0, vms_defined=1)

    listed = {h.name: h for h in hosts.list_hosts(CALLER, deadline=5, probe=probe)}
    assert not listed["flaky"].reachable and listed["flaky"].error == "cannot connect: refused"
    answering.set()
    again = {h.name: h for h in hosts.list_hosts(CALLER, deadline=WAIT, probe=probe)}
    assert (again["flaky"].error or "").startswith("not answering since ")
    _settled(fresh_reachability, FLAKY)  # the background probe answered
    assert asked.count(FLAKY) == 2 and fresh_reachability.down(FLAKY) is None

    def info(caller: Caller, name: str, db: object = None, *, deadline: float
             ) -> hosts.HostHealth:
        up = name == "local" or answering.is_set()
        return hosts.HostHealth(name=name, uri="u", local=name == "local", reachable=up,
                                error=None if up else "refused")

    monkeypatch.setattr(hosts, "host_info", info)
    answering.clear()
    health = {h.name: h for h in fleet.health_of_all(CALLER, deadline=5)}
    assert not health["flaky"].reachable and health["flaky"].error == "refused"
    answering.set()
    health = {h.name: h for h in fleet.health_of_all(CALLER, deadline=WAIT)}
    assert (health["flaky"].error or "").startswith("not answering since ")
    _settled(fresh_reachability, FLAKY)
    health = {h.name: h for h in fleet.health_of_all(CALLER, deadline=WAIT)}
    assert health["flaky"].reachable and health["local"].reachable


def test_a_late_answer_is_not_remembered_as_a_time_out() -> None:
    memory = reachability.Reachability()
    assert memory.ask(FLAKY, lambda: 1) == 1
    memory.timed_out(FLAKY, "did not answer within 3 s")  # nothing in flight: ignored
    assert memory.down(FLAKY) is None
    assert memory.recheck(FLAKY, lambda: 1)


def test_a_lost_event_watch_marks_the_host_and_its_return_clears_it(
        fresh_reachability: reachability.Reachability) -> None:
    from tests.unit.test_hostevents import Bed

    bed = Bed({"local": "qemu:///system", "h2": FLAKY})
    bed.hub.start()
    watch = bed.watch(FLAKY)
    watch.up, watch.error = False, "connection to libvirtd lost"
    watch.on_connection(False)
    down = fresh_reachability.down(FLAKY)
    assert down is not None and down.reason == "connection to libvirtd lost"
    watch.up, watch.error = True, None
    watch.on_connection(True)
    assert fresh_reachability.down(FLAKY) is None
    bed.hub.stop()
