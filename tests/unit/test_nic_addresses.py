"""guest ip: the agent's interfaces merged with the DHCP leases of the VM's networks."""

from __future__ import annotations

from kvmops.agent.guest import Interface
from kvmops.services.nics import GuestAddress, agent_interfaces, merge_addresses


def _agent() -> list[Interface]:
    return [Interface.model_validate({
        "name": "eth0", "hardware-address": "52:54:00:AA:00:01",
        "ip-addresses": [
            {"ip-address": "192.168.250.20", "ip-address-type": "ipv4", "prefix": 24},
            {"ip-address": "fd00:250::5054:ff:feaa:1", "ip-address-type": "ipv6",
             "prefix": 64}]})]


def test_agent_addresses_keep_their_type_and_gain_family_and_source() -> None:
    (eth0,) = agent_interfaces(_agent())
    assert (eth0.name, eth0.mac) == ("eth0", "52:54:00:AA:00:01")
    assert [(a.address, a.prefix, a.family, a.source, a.type) for a in eth0.addresses] == [
        ("192.168.250.20", 24, "ipv4", "agent", "ipv4"),
        ("fd00:250::5054:ff:feaa:1", 64, "ipv6", "agent", "ipv6")]


def test_leases_join_by_mac_without_repeating_the_agents_addresses() -> None:
    leases = {
        "52:54:00:aa:00:01": [GuestAddress("192.168.250.20", 24, "ipv4", "lease"),
                              GuestAddress("fd00:250::1001", 64, "ipv6", "lease")],
        "52:54:00:aa:00:02": [GuestAddress("192.168.250.21", 24, "ipv4", "lease")],
    }
    merged = merge_addresses(agent_interfaces(_agent()), leases)
    assert [(i.name, i.mac) for i in merged] == [("eth0", "52:54:00:aa:00:01"),
                                                 (None, "52:54:00:aa:00:02")]
    assert [(a.address, a.source) for a in merged[0].addresses] == [
        ("192.168.250.20", "agent"), ("fd00:250::5054:ff:feaa:1", "agent"),
        ("fd00:250::1001", "lease")]
    assert [(a.address, a.source) for a in merged[1].addresses] == [
        ("192.168.250.21", "lease")]


def test_without_the_agent_leases_alone() -> None:
    merged = merge_addresses([], {"52:54:00:aa:00:03": [
        GuestAddress("192.168.250.30", 24, "ipv4", "lease")]})
    assert [(i.name, i.mac, [a.address for a in i.addresses]) for i in merged] == [
        (None, "52:54:00:aa:00:03", ["192.168.250.30"])]


def test_an_agents_address_a_lease_names_is_marked_leased() -> None:
    """DHCPv6 vs SLAAC: the agent reports both alike; the lease tells them apart (the
    lease may spell the IPv6 address differently)."""
    agent = [Interface.model_validate({
        "name": "eth0", "hardware-address": "52:54:00:aa:00:01",
        "ip-addresses": [
            {"ip-address": "fd00:232::1c2", "ip-address-type": "ipv6", "prefix": 128},
            {"ip-address": "fd00:238::5054:ff:feaa:1", "ip-address-type": "ipv6",
             "prefix": 64}]})]
    leases = {"52:54:00:AA:00:01": [
        GuestAddress("fd00:232:0::01c2", 64, "ipv6", "lease", leased=True)]}
    (eth0,) = merge_addresses(agent_interfaces(agent), leases)
    assert [(a.address, a.source, a.leased) for a in eth0.addresses] == [
        ("fd00:232::1c2", "agent", True), ("fd00:238::5054:ff:feaa:1", "agent", False)]
    # the agent's own records are not changed in place
    assert [a.leased for a in agent_interfaces(agent)[0].addresses] == [False, False]
    assert eth0.addresses[0].model_dump(mode="json")["leased"] is True
