"""host.domstats on libvirt-shaped dicts and a fake connection: parsing, the stale
(NOWAIT without the monitor) detection, the per-domain fallback under the deadline and
VMs that vanish mid-call."""

from __future__ import annotations

import threading
from typing import Any

import libvirt
import pytest

from kvmops.host import domstats
from kvmops.host.domstats import DomainStats, collect, parse_record

UUID_A = "31d26ff9-4db9-4e5a-9898-7b1112d4831b"
UUID_B = "057bd5db-49f0-4cbb-b9c6-430e110fa6b1"

RUNNING = {  # a real record of a running tiny guest (libvirt 9), trimmed
    "state.state": 1, "state.reason": 5, "cpu.time": 10979792000, "cpu.user": 9698559000,
    "cpu.system": 1281233000, "balloon.current": 262144, "balloon.maximum": 262144,
    "balloon.last-update": 0, "balloon.rss": 267108, "balloon.available": 200000,
    "balloon.major_fault": 7, "vcpu.current": 1, "vcpu.maximum": 2,
    "vcpu.0.state": 1, "vcpu.0.time": 10330000000, "vcpu.0.wait": 0,
    "vcpu.0.delay": 1135129563, "vcpu.0.exits.sum": 3,
    "net.count": 1, "net.0.name": "vnet3", "net.0.rx.bytes": 100, "net.0.rx.pkts": 2,
    "net.0.rx.errs": 0, "net.0.rx.drop": 1, "net.0.tx.bytes": 50, "net.0.tx.pkts": 1,
    "net.0.tx.errs": 0, "net.0.tx.drop": 0,
    "block.count": 1, "block.0.name": "vda", "block.0.path": "/img/a-vda.qcow2",
    "block.0.backingIndex": 1, "block.0.rd.reqs": 4, "block.0.rd.bytes": 12800,
    "block.0.rd.times": 758754, "block.0.wr.reqs": 0, "block.0.wr.bytes": 0,
    "block.0.wr.times": 0, "block.0.fl.reqs": 0, "block.0.fl.times": 0,
    "block.0.allocation": 0, "block.0.capacity": 67108864, "block.0.physical": 270336,
    "dirtyrate.calc_mode": "page-sampling",
}
#: What NOWAIT gives for the same domain when another call holds its job.
NO_JOB = {key: value for key, value in RUNNING.items()
          if not key.startswith(("block.0.rd", "block.0.wr", "block.0.fl"))
          and key != "balloon.rss"}
SHUTOFF = {"state.state": 5, "state.reason": 2, "balloon.current": 131072,
           "balloon.maximum": 262144, "vcpu.current": 1, "vcpu.maximum": 1,
           "block.count": 1, "block.0.name": "vda", "block.0.path": "/img/b.qcow2",
           "net.count": 0}


def test_parse_running_record() -> None:
    stats = parse_record("a", UUID_A, RUNNING, collected_at=1.0)
    assert (stats.state, stats.state_name, stats.reason_name) == (1, "running", "unpaused")
    assert stats.cpu_time_ns == 10979792000 and stats.cpu_user_ns == 9698559000
    assert (stats.vcpus_current, stats.vcpus_maximum) == (1, 2)
    assert (stats.max_memory_kib, stats.current_memory_kib) == (262144, 262144)
    assert stats.balloon["rss"] == 267108 and stats.balloon["major_fault"] == 7
    assert "current" not in stats.balloon
    assert stats.vcpus == (domstats.VcpuStat(0, 1, 10330000000, 0, 1135129563),)
    (block,) = stats.blocks
    assert (block.target, block.path, block.rd_bytes, block.rd_times_ns) == (
        "vda", "/img/a-vda.qcow2", 12800, 758754)
    assert (block.capacity, block.physical) == (67108864, 270336)
    (net,) = stats.nets
    assert (net.target, net.rx_bytes, net.rx_drop, net.tx_pkts, net.bridge) == (
        "vnet3", 100, 1, 1, None)
    assert not stats.timed_out and stats.active


def test_missing_values_are_none_not_zero() -> None:
    stats = parse_record("b", UUID_B, SHUTOFF, collected_at=1.0)
    assert (stats.state_name, stats.reason_name) == ("shutoff", "destroyed")
    assert stats.cpu_time_ns is None and not stats.active
    (block,) = stats.blocks
    assert block.rd_bytes is None and block.capacity is None


@pytest.mark.parametrize(("state", "reason", "names"), [
    (3, 5, ("paused", "ioerror")), (5, 3, ("shutoff", "crashed")),
    (6, 1, ("crashed", "panicked")), (1, 99, ("running", "unknown")),
    (42, 0, ("unknown", "unknown"))])
def test_state_and_reason_names(state: int, reason: int, names: tuple[str, str]) -> None:
    assert (domstats.state_name(state), domstats.reason_name(state, reason)) == names


def test_a_record_without_the_monitor_is_stale() -> None:
    assert domstats.without_monitor(NO_JOB)
    assert not domstats.without_monitor(RUNNING)
    assert not domstats.without_monitor(SHUTOFF)  # no QEMU: nothing is missing


def test_stale_keeps_previous_values_and_current_state() -> None:
    before = parse_record("a", UUID_A, RUNNING, collected_at=1.0)
    now = parse_record("a", UUID_A, {**NO_JOB, "state.state": 3, "state.reason": 5},
                       collected_at=2.0)
    stale = domstats.stale(now, before)
    assert stale.timed_out and stale.collected_at == 2.0
    assert stale.state_name == "paused" and stale.reason_name == "ioerror"
    assert stale.blocks == before.blocks and stale.cpu_time_ns == before.cpu_time_ns
    assert domstats.stale(now, None).timed_out


def test_parse_iotune_and_bridges() -> None:
    xml = """<domain><devices>
      <disk type='file' device='disk'><source file='/img/a.qcow2'/><target dev='vda'/>
        <iotune><total_bytes_sec>1048576</total_bytes_sec><read_iops_sec>100</read_iops_sec>
        </iotune></disk>
      <disk type='file' device='disk'><target dev='vdb'/></disk>
      <interface type='bridge'><source bridge='br0'/><target dev='vnet3'/></interface>
      <interface type='network'><source network='default'/><target dev='vnet4'/></interface>
    </devices></domain>"""
    limits, bridges = domstats.parse_iotune(xml)
    assert limits == (domstats.Iotune("vda", {"total_bytes_sec": 1048576,
                                              "read_iops_sec": 100}),)
    assert bridges == {"vnet3": "br0", "vnet4": "default"}
    assert domstats.parse_iotune("<not xml") == ((), {})
    assert not domstats.has_agent_channel(xml)
    assert domstats.has_agent_channel(
        "<domain><devices><channel type='unix'><target type='virtio' "
        "name='org.qemu.guest_agent.0' state='connected'/></channel></devices></domain>")


def test_job_progress() -> None:
    assert domstats.job_from_stats({"type": 0}) is None
    job = domstats.job_from_stats({"type": 2, "operation": 5, "data_total": 200,
                                   "data_processed": 50, "data_remaining": 150})
    assert job is not None and job.operation == "migration_out" and job.ratio == 0.25
    backup = domstats.job_from_stats({"type": 2, "operation": 9, "disk_total": 10,
                                      "disk_processed": 10, "disk_remaining": 0})
    assert backup is not None and backup.operation == "backup" and backup.ratio == 1.0
    block = domstats.block_job("vda", {"type": 2, "cur": 3, "end": 4, "bandwidth": 0})
    assert block is not None and block.operation == "block_copy" and block.disk == "vda"
    assert block.data_remaining == 1 and block.ratio == 0.75
    assert domstats.block_job("vda", {}) is None


# collect() on a fake connection ------------------------------------------------------
class Gone(libvirt.libvirtError):  # type: ignore[misc]
    def __init__(self) -> None:
        super().__init__("Domain not found")

    def get_error_code(self) -> int:
        return int(libvirt.VIR_ERR_NO_DOMAIN)


class FakeDomain:
    def __init__(self, name: str, uuid: str, record: dict[str, Any], *,
                 hang: threading.Event | None = None, gone: bool = False) -> None:
        self._name, self._uuid, self.record = name, uuid, record
        self.hang, self.gone = hang, gone

    def name(self) -> str:
        return self._name

    def UUIDString(self) -> str:
        return self._uuid

    def state(self, _flags: int) -> list[int]:
        return [int(self.record["state.state"]), int(self.record.get("state.reason", 0))]

    def XMLDesc(self, _flags: int) -> str:
        return "<domain><devices/></domain>"

    def controlInfo(self, _flags: int) -> list[int]:
        return [0, 0, 0]

    def blockJobInfo(self, _disk: str, _flags: int) -> dict[str, int]:
        return {}


class FakeConn:
    """getAllDomainStats hangs while ``stuck`` (a stopped QEMU holding a monitor call);
    the per-domain call of a stuck domain answers without its monitor figures (its job
    is held) or hangs too when ``hang`` is set on it."""

    def __init__(self, domains: list[FakeDomain], stuck: threading.Event | None = None
                 ) -> None:
        self.domains, self.stuck = domains, stuck
        self.list_stuck: threading.Event | None = None

    def getAllDomainStats(self, _groups: int, _flags: int
                          ) -> list[tuple[FakeDomain, dict[str, Any]]]:
        if self.stuck is not None:
            self.stuck.wait(30)
        return [(d, d.record) for d in self.domains if not d.gone]

    def listAllDomains(self, _flags: int) -> list[FakeDomain]:
        if self.list_stuck is not None:
            self.list_stuck.wait(30)
        return list(self.domains)

    def getLibVersion(self) -> int:
        return 9000000

    def domainListGetStats(self, doms: list[FakeDomain], _groups: int,
                           _flags: int) -> list[tuple[FakeDomain, dict[str, Any]]]:
        (dom,) = doms
        if dom.gone:
            raise Gone()
        if dom.hang is not None:
            dom.hang.wait(30)
        return [(dom, dom.record)]


class FakeHost:
    def __init__(self, conn: FakeConn) -> None:
        self.conn, self.uri = conn, "qemu:///fake"


def _collect(conn: FakeConn, deadline: float = 2.0,
             previous: dict[str, DomainStats] | None = None) -> domstats.HostStats:
    return collect(FakeHost(conn), deadline_s=deadline, previous=previous)  # type: ignore[arg-type]


def test_bulk_call_in_time() -> None:
    result = _collect(FakeConn([FakeDomain("a", UUID_A, RUNNING),
                                FakeDomain("b", UUID_B, SHUTOFF)]))
    assert result.up and result.error is None
    assert [(d.name, d.timed_out) for d in result.domains] == [("a", False), ("b", False)]


def test_a_held_domain_is_timed_out_with_its_previous_values() -> None:
    before = parse_record("a", UUID_A, RUNNING, collected_at=1.0)
    stuck, hang = threading.Event(), threading.Event()
    try:
        held = FakeDomain("a", UUID_A, NO_JOB)
        silent = FakeDomain("c", "c" * 36, RUNNING, hang=hang)
        vanished = FakeDomain("gone", "d" * 36, RUNNING, gone=True)
        conn = FakeConn([held, FakeDomain("b", UUID_B, SHUTOFF), silent, vanished],
                        stuck=stuck)
        result = _collect(conn, deadline=1.0, previous={UUID_A: before})
    finally:
        stuck.set()
        hang.set()
    assert result.up and result.duration_s < 1.0 + 2.0  # not the 30 s the calls hang
    by_name = {d.name: d for d in result.domains}
    assert set(by_name) == {"a", "b", "c"}  # the vanished one is skipped, not an error
    assert by_name["a"].timed_out and by_name["a"].blocks == before.blocks
    assert not by_name["b"].timed_out
    # never answered and no previous values: reported, stale, its state unknown
    assert by_name["c"].timed_out and by_name["c"].state_name == "nostate"


def test_a_listing_held_by_a_domain_lock_reports_the_previous_snapshot() -> None:
    before = parse_record("a", UUID_A, RUNNING, collected_at=1.0)
    stuck = threading.Event()
    try:
        conn = FakeConn([FakeDomain("a", UUID_A, RUNNING)], stuck=stuck)
        conn.list_stuck = stuck
        result = _collect(conn, deadline=1.0, previous={UUID_A: before, "a": before})
    finally:
        stuck.set()
    assert result.up  # the host answers; the domains' lock is what is held
    (only,) = result.domains
    assert only.timed_out and only.cpu_time_ns == before.cpu_time_ns


def test_known_domains_are_asked_one_by_one_while_the_listing_waits() -> None:
    conn = FakeConn([FakeDomain("a", UUID_A, RUNNING), FakeDomain("b", UUID_B, SHUTOFF)])
    first = _collect(conn)
    assert [d.timed_out for d in first.domains] == [False, False]
    stuck = threading.Event()
    try:
        conn.stuck = conn.list_stuck = stuck  # a domain being started holds its lock
        result = _collect(conn, deadline=1.0, previous=domstats.previous_of(first))
    finally:
        stuck.set()
    assert result.up
    assert [(d.name, d.timed_out) for d in result.domains] == [("a", False), ("b", False)]


def test_an_unreachable_host_is_down_not_an_exception() -> None:
    class Lost(FakeConn):
        def getAllDomainStats(self, _groups: int, _flags: int) -> Any:
            err = libvirt.libvirtError("End of file while reading data")
            err.err = (libvirt.VIR_ERR_SYSTEM_ERROR, libvirt.VIR_FROM_RPC, "eof", 2, "", None,
                       None, 0, 0)
            raise err

    result = _collect(Lost([]))
    assert not result.up and result.error and result.domains == ()
