"""The VM list of every host (services.fleet), the per-URI shared connections
(services.session.HostConnections) and the bulk listing of a remote host
(host.inventory), on fakes: order, the host of each VM, a host that fails or never
answers listed unreachable without holding up the others."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import libvirt
import pytest

from kvmops.errors import HostUnavailableError, NotFoundError
from kvmops.host import inventory
from kvmops.services import fleet, hosts
from kvmops.services.caller import Caller
from kvmops.services.session import HostConnections
from kvmops.services.vms import VmListItem

CALLER = Caller.local()


def _vm(name: str, host: str | None = None) -> VmListItem:
    return VmListItem(name=name, uuid=f"uuid-{name}", state="shut off", vcpus=1,
                      memory=64 * 1024**2, memory_current=None, cpu_time_ns=None,
                      accelerator="tcg", autostart=False, persistent=True, host=host)


@pytest.fixture
def hanging() -> Iterator[threading.Event]:
    release = threading.Event()
    yield release
    release.set()  # the hanging host's thread ends with the test


@pytest.fixture
def three_hosts(monkeypatch: pytest.MonkeyPatch, hanging: threading.Event) -> None:
    known = [("local", "qemu:///system", True), ("b", "qemu+tcp://b/system", False),
             ("gone", "qemu+tcp://gone/system", False),
             ("silent", "qemu+tcp://silent/system", False)]
    monkeypatch.setattr(hosts, "known_hosts", lambda db=None: known)

    def remote(name: str, uri: str, deadline: float) -> list[VmListItem]:
        if name == "gone":
            raise HostUnavailableError(f"host 'gone' ({uri}) cannot be reached: "
                                       "No route to host")
        if name == "silent":
            hanging.wait()
        return [_vm("zeta", name), _vm("alpha", name)]

    monkeypatch.setattr(fleet, "_remote_vms", remote)


def test_every_host_at_once_unreachable_ones_named(three_hosts: None) -> None:
    found = fleet.list_all_vms(CALLER, 0.5, local=lambda: [_vm("mine")])
    assert [(vm.host, vm.name) for vm in found.vms] == [
        ("local", "mine"), ("b", "zeta"), ("b", "alpha")]
    assert found.hosts == ["local", "b", "gone", "silent"]
    assert [(u.host, u.error) for u in found.unreachable] == [
        ("gone", "No route to host"), ("silent", "did not answer within 0.5 s")]


def test_one_host(three_hosts: None, monkeypatch: pytest.MonkeyPatch) -> None:
    assert [vm.host for vm in fleet.host_vms(CALLER, "b")] == ["b", "b"]
    with pytest.raises(HostUnavailableError) as err:
        fleet.host_vms(CALLER, "gone", deadline=0.5)
    assert err.value.message == ("host 'gone' (qemu+tcp://gone/system) cannot be reached: "
                                 "No route to host")

    def unknown(caller: Caller, name: str | None, db: Any = None) -> str:
        raise NotFoundError(f"host '{name}' not found")

    monkeypatch.setattr(hosts, "uri_of", unknown)
    with pytest.raises(NotFoundError):
        fleet.list_all_vms(CALLER, 0.5, only=["nosuch"])


class FakeHost:
    def __init__(self, uri: str | None) -> None:
        self.uri = uri
        self.closed = False

    def alive(self) -> bool:
        return not self.closed

    def close(self) -> None:
        self.closed = True


def test_shared_connection_per_uri_gives_up_at_the_deadline_and_keeps_a_late_one(
        monkeypatch: pytest.MonkeyPatch, hanging: threading.Event) -> None:
    from kvmops.services import session

    opened: list[FakeHost] = []

    def opener(uri: str | None) -> Any:
        hanging.wait()
        opened.append(FakeHost(uri))
        return opened[-1]

    monkeypatch.setattr(session, "_open_remote", opener)
    pool = HostConnections()
    with pytest.raises(HostUnavailableError) as err:
        pool.get("qemu+tcp://slow/system", 0.2, "slow")
    assert "host 'slow' (qemu+tcp://slow/system) cannot be reached: did not answer " \
           "within 0.2 s" in str(err.value)
    hanging.set()
    first = pool.get("qemu+tcp://slow/system", 5, "slow")
    assert pool.get("qemu+tcp://slow/system", 5, "slow") is first
    assert len(opened) == 1  # the late connection was kept and reused
    other = pool.get("qemu+tcp://other/system", 5)
    assert other is not first and other.uri == "qemu+tcp://other/system"


class FakeDomain:
    def __init__(self, name: str) -> None:
        self._name = name

    def name(self) -> str:
        return self._name

    def UUIDString(self) -> str:
        return f"uuid-{self._name}"


class FakeConn:
    def __init__(self) -> None:
        self.calls: list[str] = []
        self.run, self.off = FakeDomain("run"), FakeDomain("off")

    def getAllDomainStats(self, groups: int, flags: int) -> list[Any]:
        self.calls.append("stats")
        return [(self.run, {"state.state": libvirt.VIR_DOMAIN_RUNNING,
                            "balloon.current": 65536, "balloon.maximum": 131072,
                            "vcpu.current": 2, "vcpu.maximum": 4, "cpu.time": 123}),
                (self.off, {"state.state": libvirt.VIR_DOMAIN_SHUTOFF,
                            "balloon.current": 65536, "balloon.maximum": 65536,
                            "vcpu.current": 1, "vcpu.maximum": 1})]

    def listAllDomains(self, flags: int) -> list[Any]:
        self.calls.append("list")
        if flags == libvirt.VIR_CONNECT_LIST_DOMAINS_PERSISTENT:
            return [self.off]
        assert flags == libvirt.VIR_CONNECT_LIST_DOMAINS_AUTOSTART
        return [self.run]


def test_bulk_listing_is_one_stats_call_and_two_listings() -> None:
    class Host:
        conn = FakeConn()

    found = {vm.name: vm for vm in inventory.bulk_vms(Host())}  # type: ignore[arg-type]
    assert Host.conn.calls == ["stats", "list", "list"]
    run, off = found["run"], found["off"]
    assert (run.state, run.vcpus, run.max_memory, run.memory, run.cpu_time_ns,
            run.autostart, run.persistent) == ("running", 2, 128 * 1024**2, 64 * 1024**2,
                                               123, True, False)
    assert (off.state, off.vcpus, off.max_memory, off.memory, off.cpu_time_ns,
            off.autostart, off.persistent, off.uuid) == ("shut off", 1, 64 * 1024**2,
                                                          None, None, False, True,
                                                          "uuid-off")
