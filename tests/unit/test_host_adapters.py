"""kvmops.host: libvirt errors sorted by code (never by text) and the Domain adapter's
typed answers, against stand-ins for libvirt's objects."""

from __future__ import annotations

from typing import Any

import libvirt
import pytest

from kvmops.errors import (
    AgentUnavailableError,
    AlreadyExistsError,
    HostUnavailableError,
    HypervisorError,
    NotFoundError,
    OperationTimeoutError,
    StateError,
    UnsupportedError,
    ValidationError,
)
from kvmops.host.domain import BlockJob, Domain, SnapshotCreateError
from kvmops.host.errors import translate


class FakeError(libvirt.libvirtError):
    def __init__(self, code: int, message: str = "boom", domain: int = 0) -> None:
        Exception.__init__(self, message)
        self.code, self.message, self.domain = code, message, domain

    def get_error_code(self) -> int:
        return self.code

    def get_error_message(self) -> str:
        return self.message

    def get_error_domain(self) -> int:
        return self.domain


@pytest.mark.parametrize(("code", "kind"), [
    (libvirt.VIR_ERR_NO_DOMAIN, NotFoundError),
    (libvirt.VIR_ERR_NO_DOMAIN_SNAPSHOT, NotFoundError),
    (libvirt.VIR_ERR_NO_DOMAIN_CHECKPOINT, NotFoundError),
    (libvirt.VIR_ERR_OPERATION_INVALID, StateError),
    (libvirt.VIR_ERR_NO_SUPPORT, UnsupportedError),
    (libvirt.VIR_ERR_XML_ERROR, ValidationError),
    (libvirt.VIR_ERR_DOM_EXIST, AlreadyExistsError),
    (libvirt.VIR_ERR_OPERATION_TIMEOUT, OperationTimeoutError),
    (libvirt.VIR_ERR_AGENT_UNRESPONSIVE, AgentUnavailableError),
    (libvirt.VIR_ERR_INTERNAL_ERROR, HypervisorError),
])
def test_translate_by_code(code: int, kind: type[Exception]) -> None:
    err = translate(FakeError(code, "some text"), "doing X of VM 'a'")
    assert type(err) is kind
    assert str(err).startswith("doing X of VM 'a'")


@pytest.mark.parametrize(("domain", "kind"), [
    (libvirt.VIR_FROM_RPC, HostUnavailableError),  # End of file while reading data
    (libvirt.VIR_FROM_REMOTE, HostUnavailableError),
    (libvirt.VIR_FROM_NONE, HypervisorError),  # libvirtd's own failed call, e.g. a tap
])
def test_a_system_error_is_a_lost_connection_only_from_the_rpc_layer(
        domain: int, kind: type[Exception]) -> None:
    err = translate(FakeError(libvirt.VIR_ERR_SYSTEM_ERROR, "Unable to add bridge br port "
                              "vnet1: Operation not supported", domain), "doing X")
    assert type(err) is kind
    assert ("lost the connection" in str(err)) == (kind is HostUnavailableError)


def test_translate_never_sorts_by_text() -> None:
    """A message that merely says "already exists" or "not found" stays what its code is."""
    err = translate(FakeError(libvirt.VIR_ERR_INTERNAL_ERROR, "domain 'a' already exists; "
                                                              "no domain found"), "x")
    assert type(err) is HypervisorError


def test_rpc_domain_is_a_lost_connection() -> None:
    err = translate(FakeError(libvirt.VIR_ERR_INTERNAL_ERROR, "client socket is closed",
                              domain=libvirt.VIR_FROM_RPC), "backing up VM 'a'")
    assert isinstance(err, HostUnavailableError)
    assert "lost the connection to libvirtd" in str(err)


class RawDomain:
    """The few virDomain methods the tests below reach."""

    def __init__(self, **raises: libvirt.libvirtError) -> None:
        self.raises = raises
        self.active = False
        self.checkpoint_names: list[str] = []
        self.job: dict[str, int] = {}

    def _maybe(self, name: str) -> None:
        if name in self.raises:
            raise self.raises[name]

    def name(self) -> str:
        return "web1"

    def isActive(self) -> int:
        return int(self.active)

    def listAllCheckpoints(self, _flags: int) -> list[Any]:
        return [RawNamed(n) for n in self.checkpoint_names]

    def checkpointLookupByName(self, name: str, _flags: int) -> Any:
        self._maybe("checkpointLookupByName")
        return RawNamed(name)

    def snapshotCreateXML(self, _xml: str, _flags: int) -> None:
        self._maybe("snapshotCreateXML")

    def blockJobAbort(self, _target: str, _flags: int) -> None:
        self._maybe("blockJobAbort")

    def blockJobInfo(self, _target: str, _flags: int) -> dict[str, int]:
        return self.job

    def shutdownFlags(self, _flags: int) -> None:
        self._maybe("shutdownFlags")


class RawNamed:
    def __init__(self, name: str) -> None:
        self._name = name

    def getName(self) -> str:
        return self._name


def test_snapshot_refused_for_checkpoints_of_a_shut_off_vm() -> None:
    raw = RawDomain(snapshotCreateXML=FakeError(libvirt.VIR_ERR_OPERATION_UNSUPPORTED,
                                                "cannot do it"))
    raw.checkpoint_names = ["kvmops-0a1b2c3d-20250101T000000.000000Z"]
    with pytest.raises(SnapshotCreateError) as caught:
        Domain(raw).create_snapshot("<domainsnapshot/>", what="creating snapshot 's'")
    assert caught.value.checkpoints and not caught.value.agent
    assert caught.value.text == "cannot do it"
    raw.checkpoint_names = []
    with pytest.raises(SnapshotCreateError) as again:
        Domain(raw).create_snapshot("<domainsnapshot/>", what="creating snapshot 's'")
    assert not again.value.checkpoints


def test_snapshot_quiesce_failure_is_the_agents_by_code() -> None:
    raw = RawDomain(snapshotCreateXML=FakeError(libvirt.VIR_ERR_AGENT_UNRESPONSIVE,
                                                "QEMU guest agent is not connected"))
    raw.active = True
    with pytest.raises(SnapshotCreateError) as caught:
        Domain(raw).create_snapshot("<x/>", disk_only=True, quiesce=True, what="w")
    assert caught.value.agent
    with pytest.raises(SnapshotCreateError) as unquiesced:
        Domain(raw).create_snapshot("<x/>", disk_only=True, quiesce=False, what="w")
    assert not unquiesced.value.agent  # without a quiesce the agent was not asked


def test_pivot_not_ready_is_false_other_errors_raise() -> None:
    raw = RawDomain(blockJobAbort=FakeError(libvirt.VIR_ERR_BLOCK_COPY_ACTIVE))
    assert Domain(raw).block_job_pivot("vda") is False
    raw.raises["blockJobAbort"] = FakeError(libvirt.VIR_ERR_OPERATION_INVALID)
    with pytest.raises(StateError, match="pivoting disk vda of VM 'web1'"):
        Domain(raw).block_job_pivot("vda")
    del raw.raises["blockJobAbort"]
    assert Domain(raw).block_job_pivot("vda") is True


def test_block_job_is_typed() -> None:
    raw = RawDomain()
    assert Domain(raw).block_job("vda") is None
    raw.job = {"type": 4, "cur": 5, "end": 10}
    job = Domain(raw).block_job("vda")
    assert job == BlockJob(4, 5, 10) and not job.ready
    raw.job = {"type": 4, "cur": 10, "end": 10}
    assert Domain(raw).block_job("vda") == BlockJob(4, 10, 10)
    assert BlockJob(4, 10, 10).ready


def test_missing_checkpoint_is_none_a_lost_connection_raises() -> None:
    raw = RawDomain(checkpointLookupByName=FakeError(libvirt.VIR_ERR_NO_DOMAIN_CHECKPOINT))
    assert Domain(raw).find_checkpoint("c1") is None
    raw.raises["checkpointLookupByName"] = FakeError(libvirt.VIR_ERR_SYSTEM_ERROR, "gone",
                                                     libvirt.VIR_FROM_RPC)
    with pytest.raises(HostUnavailableError):
        Domain(raw).find_checkpoint("c1")


def test_shutdown_errors() -> None:
    raw = RawDomain(shutdownFlags=FakeError(libvirt.VIR_ERR_OPERATION_FAILED, "no ACPI"))
    with pytest.raises(HypervisorError, match="shutting down VM 'web1' failed: no ACPI"):
        Domain(raw).shutdown("acpi")
    raw.raises["shutdownFlags"] = FakeError(libvirt.VIR_ERR_AGENT_UNRESPONSIVE,
                                            "QEMU guest agent is not connected")
    with pytest.raises(AgentUnavailableError, match="guest agent of VM 'web1'"):
        Domain(raw).shutdown("agent")


def test_domain_of_wraps_once() -> None:
    domain = Domain(RawDomain())
    assert Domain.of(domain) is domain
    assert Domain.of(RawDomain()).name == "web1"


class RawSizes(RawDomain):
    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, int, int]] = []

    def setMemoryFlags(self, kib: int, flags: int) -> None:
        self.calls.append(("memory", kib, flags))

    def setVcpusFlags(self, count: int, flags: int) -> None:
        self.calls.append(("vcpus", count, flags))


def test_memory_in_kib_and_the_right_flags() -> None:
    raw = RawSizes()
    domain = Domain(raw)
    domain.set_memory(512 * 1024**2, live=True, config=False)
    domain.set_max_memory(1024**3)
    domain.set_vcpus(2, live=False, config=True)
    domain.set_max_vcpus(4)
    assert raw.calls == [
        ("memory", 512 * 1024, libvirt.VIR_DOMAIN_AFFECT_LIVE),
        ("memory", 1024**2, libvirt.VIR_DOMAIN_AFFECT_CONFIG | libvirt.VIR_DOMAIN_MEM_MAXIMUM),
        ("vcpus", 2, libvirt.VIR_DOMAIN_AFFECT_CONFIG),
        ("vcpus", 4, libvirt.VIR_DOMAIN_AFFECT_CONFIG | libvirt.VIR_DOMAIN_VCPU_MAXIMUM),
    ]


class RawCheckpoints(RawDomain):
    def __init__(self) -> None:
        super().__init__()
        self.created: list[int] = []

    def checkpointCreateXML(self, _xml: str, flags: int) -> RawNamed:
        self.created.append(flags)
        return RawNamed("kvmops-0a1b2c3d-20250101T000000.000000Z")


def test_checkpoint_create_and_redefine_flags() -> None:
    raw = RawCheckpoints()
    created = Domain(raw).create_checkpoint("<domaincheckpoint/>", what="w")
    assert created.name == "kvmops-0a1b2c3d-20250101T000000.000000Z" and created.vm == "web1"
    Domain(raw).create_checkpoint("<domaincheckpoint/>", redefine=True, what="w")
    Domain(raw).create_checkpoint("<domaincheckpoint/>", redefine=True, validate=False,
                                  what="w")
    redefine = libvirt.VIR_DOMAIN_CHECKPOINT_CREATE_REDEFINE
    validate = getattr(libvirt, "VIR_DOMAIN_CHECKPOINT_CREATE_REDEFINE_VALIDATE", 0)
    assert raw.created == [0, redefine | validate, redefine]


class RawGuest(RawDomain):
    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, tuple[Any, ...]]] = []

    def interfaceAddresses(self, source: int, flags: int) -> dict[str, Any]:
        self.calls.append(("addresses", (source, flags)))
        return {"eth0": {"addrs": []}}

    def guestInfo(self, types: int, flags: int) -> dict[str, Any]:
        self.calls.append(("info", (types, flags)))
        return {"os.id": "tiny", "hostname": "g"}

    def sendKey(self, codeset: int, hold: int, codes: list[int], count: int,
                flags: int) -> None:
        self.calls.append(("keys", (codeset, hold, codes, count, flags)))

    def connect(self) -> RawGuest:
        return self

    def domainListGetStats(self, doms: list[Any], groups: int, flags: int
                           ) -> list[tuple[Any, dict[str, Any]]]:
        self.calls.append(("stats", (len(doms), groups, flags)))
        return [(doms[0], {"state.state": 1, "balloon.current": 262144})]


def test_guest_queries_and_statistics_are_typed_calls() -> None:
    raw = RawGuest()
    domain = Domain(raw)
    assert domain.interface_addresses("agent", what="w") == {"eth0": {"addrs": []}}
    assert domain.interface_addresses("arp", what="w")
    assert domain.guest_info(what="w") == {"os.id": "tiny", "hostname": "g"}
    domain.send_keys([29, 56, 14], hold_ms=20, what="w")
    assert domain.stats_record(what="w") == {"state.state": 1, "balloon.current": 262144}
    assert raw.calls == [
        ("addresses", (libvirt.VIR_DOMAIN_INTERFACE_ADDRESSES_SRC_AGENT, 0)),
        ("addresses", (libvirt.VIR_DOMAIN_INTERFACE_ADDRESSES_SRC_ARP, 0)),
        ("info", (libvirt.VIR_DOMAIN_GUEST_INFO_OS | libvirt.VIR_DOMAIN_GUEST_INFO_HOSTNAME,
                  0)),
        ("keys", (libvirt.VIR_KEYCODE_SET_LINUX, 20, [29, 56, 14], 3, 0)),
        ("stats", (1, 63, 0)),
    ]
