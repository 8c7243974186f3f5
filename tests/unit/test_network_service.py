"""The network use cases' refusals, on a stand-in host: which VMs use a network (a NIC
on it by name, or on the bridge libvirt owns for it; in the live XML or only in the
definition), stop refused under running VMs, delete under any, naming them."""

from __future__ import annotations

from typing import Any

import pytest

from kvmops.errors import StateError
from kvmops.host import networks as host_networks
from kvmops.host.networks import NetworkState
from kvmops.network.model import NetworkInfo, NetworkSpec
from kvmops.services import networks as service
from kvmops.services.caller import Caller

CALLER = Caller(name="tester", role="operator", via="api")


def _domain_xml(name: str, *nics: tuple[str, str]) -> str:
    interfaces = "".join(f"<interface type='{kind}'><source {kind}='{source}'/>"
                         f"<model type='virtio'/></interface>" for kind, source in nics)
    return (f"<domain type='qemu'><name>{name}</name><memory unit='KiB'>262144</memory>"
            f"<vcpu>1</vcpu><os><type arch='x86_64' machine='pc'>hvm</type></os>"
            f"<devices>{interfaces}</devices></domain>")


class FakeDomain:
    def __init__(self, name: str, *nics: tuple[str, str], active: bool = False,
                 definition: list[tuple[str, str]] | None = None) -> None:
        self.name = name
        self.active = active
        self.live = _domain_xml(name, *nics)
        self.definition = _domain_xml(name, *(definition if definition is not None
                                              else nics))

    def is_active(self) -> bool:
        return self.active

    def is_persistent(self) -> bool:
        return True

    def xml(self, *, inactive: bool = False, what: str | None = None) -> str:
        return self.definition if inactive or not self.active else self.live


class FakeHost:
    def __init__(self, *domains: FakeDomain) -> None:
        self.domains = list(domains)

    def all_domains(self) -> list[FakeDomain]:
        return self.domains


LAB = NetworkInfo(name="lab", mode="isolated", bridge="virbr5", active=True)


def test_used_by_reads_network_and_managed_bridge_nics() -> None:
    host: Any = FakeHost(
        FakeDomain("by-name", ("network", "lab")),
        FakeDomain("by-bridge", ("bridge", "virbr5")),
        FakeDomain("elsewhere", ("network", "default"), ("bridge", "br0")),
        FakeDomain("next-boot", ("network", "default"), active=True,
                   definition=[("network", "lab")]),
    )
    assert service.used_by(host, LAB) == ["by-bridge", "by-name", "next-boot"]
    assert service.used_by(host, LAB, running_only=True) == ["next-boot"]
    # A bridge-mode network does not own its host bridge: a VM directly on br0 does not
    # use the libvirt network over it.
    over_br0 = NetworkInfo(name="lan", mode="bridge", bridge="br0", active=True)
    assert service.used_by(host, over_br0) == []


def _state(name: str, *, active: bool = True) -> NetworkState:
    spec = NetworkSpec(name=name, bridge="virbr5", ipv4="192.168.251.1/24")
    return NetworkState(name=name, active=active, persistent=True, autostart=False,
                        xml=spec.to_xml())


def test_stop_and_delete_refusals_name_the_vms(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    monkeypatch.setattr(host_networks, "network", lambda _h, name: _state(name))
    monkeypatch.setattr(host_networks, "stop", lambda _h, n: calls.append("stop"))
    monkeypatch.setattr(host_networks, "undefine",
                        lambda _h, n: calls.append("undefine"))
    host: Any = FakeHost(FakeDomain("web1", ("network", "lab"), active=True),
                         FakeDomain("db1", ("network", "lab")))
    with pytest.raises(StateError) as caught:
        service.stop(CALLER, host, "lab")
    assert "running VM(s) web1 use it" in str(caught.value)
    with pytest.raises(StateError) as caught:
        service.delete(CALLER, host, "lab")
    assert "VM(s) db1, web1 use it" in str(caught.value)
    assert "remove their interfaces" in str(caught.value)
    assert calls == []  # nothing was touched

    idle: Any = FakeHost(FakeDomain("db1", ("network", "lab")))
    monkeypatch.setattr(service, "info", lambda _c, _h, name: NetworkInfo(name, "isolated"))
    service.stop(CALLER, idle, "lab")  # only a shut-off VM uses it: it may stop
    assert calls == ["stop"]
    nobody: Any = FakeHost()
    service.delete(CALLER, nobody, "lab")
    assert calls == ["stop", "stop", "undefine"]


def test_list_with_users_matches_used_by(monkeypatch: pytest.MonkeyPatch) -> None:
    """The web page's list fills ``used_by`` for every network as ``used_by`` does."""
    lab = NetworkState(name="lab", active=True, persistent=True, autostart=False,
                       xml=NetworkSpec(name="lab", bridge="virbr5",
                                       ipv4="192.168.251.1/24").to_xml())
    other = NetworkState(name="other", active=False, persistent=True, autostart=True,
                         xml=NetworkSpec(name="other", bridge="virbr6",
                                         ipv4="192.168.252.1/24").to_xml())
    monkeypatch.setattr(host_networks, "all_networks", lambda host: [lab, other])
    host: Any = FakeHost(
        FakeDomain("b-vm", ("network", "lab")),
        FakeDomain("a-vm", ("bridge", "virbr5"), ("network", "other")),
        FakeDomain("next-boot", ("network", "default"), active=True,
                   definition=[("network", "other")]),
        FakeDomain("none", ("network", "default")),
    )
    listed = {net.name: net for net in service.list_with_users(CALLER, host)}
    assert listed["lab"].used_by == ["a-vm", "b-vm"]
    assert listed["other"].used_by == ["a-vm", "next-boot"]
    for net in listed.values():
        assert net.used_by == service.used_by(host, net)
