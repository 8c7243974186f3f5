"""The collector on hand-made scrapes: kumina's series (names, labels, types, help),
kvmops' own, a host that is down, stale domains, backups from the event log, the job
histogram and the doctor's statuses -- read back through prometheus-client's parser."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from kvmops.backup.model import BackupType, Consistency, DiskRecord, Manifest
from kvmops.host.domstats import Iotune, JobProgress, parse_record
from kvmops.metrics.collector import ScrapeCollector
from kvmops.metrics.model import (
    BackupSample,
    DoctorSample,
    HostSample,
    JobsSample,
    PoolSample,
    Scrape,
)
from kvmops.services.metrics import backup_samples
from tests.unit.test_metrics_domstats import RUNNING, SHUTOFF, UUID_A, UUID_B

#: kumina 0.2.0's series: name -> (type, labels, help) as Debian's exporter prints them
KUMINA = {
    "libvirt_up": ("gauge", set(), "Whether scraping libvirt's metrics was successful."),
    "libvirt_domains_number": ("gauge", set(), "Number of domains."),
    "libvirt_domain_state_code": ("gauge", {"domain", "uuid"}, "State of the domain."),
    "libvirt_domain_info_cpu_time_seconds_total": (
        "counter", {"domain", "uuid"}, "Amount of CPU time used by the domain, in seconds."),
    "libvirt_domain_info_maximum_memory_bytes": (
        "gauge", {"domain", "uuid"}, "Maximum allowed memory of the domain, in bytes."),
    "libvirt_domain_info_memory_usage_bytes": (
        "gauge", {"domain", "uuid"}, "Memory usage of the domain, in bytes."),
    "libvirt_domain_info_virtual_cpus": (
        "gauge", {"domain", "uuid"}, "Number of virtual CPUs for the domain."),
    "libvirt_domain_block_stats_read_bytes_total": (
        "counter", {"domain", "uuid", "source_file", "target_device"},
        "Number of bytes read from a block device, in bytes."),
    "libvirt_domain_block_stats_read_requests_total": (
        "counter", {"domain", "uuid", "source_file", "target_device"},
        "Number of read requests from a block device."),
    "libvirt_domain_block_stats_write_bytes_total": (
        "counter", {"domain", "uuid", "source_file", "target_device"},
        "Number of bytes written from a block device, in bytes."),
    "libvirt_domain_block_stats_write_requests_total": (
        "counter", {"domain", "uuid", "source_file", "target_device"},
        "Number of write requests from a block device."),
    **{f"libvirt_domain_interface_stats_{name}_total": (
        "counter", {"domain", "uuid", "source_bridge", "target_device"}, doc)
       for name, doc in (
           ("receive_bytes", "Number of bytes received on a network interface, in bytes."),
           ("receive_packets", "Number of packets received on a network interface."),
           ("receive_errors", "Number of packet receive errors on a network interface."),
           ("receive_drops", "Number of packet receive drops on a network interface."),
           ("transmit_bytes",
            "Number of bytes transmitted on a network interface, in bytes."),
           ("transmit_packets", "Number of packets transmitted on a network interface."),
           ("transmit_errors", "Number of packet transmit errors on a network interface."),
           ("transmit_drops", "Number of packet transmit drops on a network interface."))},
}

Samples = dict[str, list[tuple[dict[str, str], float]]]


def _render(scrape: Scrape) -> tuple[str, Samples, dict[str, Any]]:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ScrapeCollector(lambda: scrape))
    text = generate_latest(registry).decode()
    samples: Samples = {}
    families = {}
    for family in text_string_to_metric_families(text):
        families[family.name] = family
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((sample.labels, sample.value))
    return text, samples, families


def _host(**kwargs: Any) -> HostSample:
    running = parse_record("a", UUID_A, RUNNING, collected_at=1.0)
    running = running.__class__(**{
        **running.__dict__,
        "nets": tuple(n.__class__(**{**n.__dict__, "bridge": "br0"}) for n in running.nets),
        "iotune": (Iotune("vda", {"total_bytes_sec": 1048576, "read_iops_sec": 100}),),
        "jobs": (JobProgress("backup", 400, 100, 300),)})
    stopped = parse_record("b", UUID_B, SHUTOFF, collected_at=1.0)
    defaults: dict[str, Any] = {
        "host": "local", "up": True, "duration_s": 0.05, "domains": (running, stopped),
        "memory_bytes": 8 << 30, "pools": (PoolSample("default", 100, 40),),
        "agents": {UUID_A: True}}
    return HostSample(**{**defaults, **kwargs})


def test_kumina_series_names_labels_types_and_help() -> None:
    text, samples, families = _render(Scrape(hosts=(_host(),)))
    for name, (kind, labels, doc) in KUMINA.items():
        family_name = name.removesuffix("_total") if kind == "counter" else name
        family = families[family_name]
        assert family.type == kind, name
        assert family.documentation == doc, name
        assert f"# HELP {name} {doc}" in text
        for sample_labels, _value in samples[name]:
            assert set(sample_labels) == labels | {"host"}, name
    assert ({"host": "local"}, 1.0) in samples["libvirt_up"]
    assert ({"host": "local"}, 1.0) in samples["libvirt_domains_number"]  # running ones
    cpu = samples["libvirt_domain_info_cpu_time_seconds_total"]
    assert cpu == [({"domain": "a", "uuid": UUID_A, "host": "local"}, 10.979792)]
    reads = dict((s["target_device"], v) for s, v in
                 samples["libvirt_domain_block_stats_read_bytes_total"])
    assert reads == {"vda": 12800.0}
    (nic, drops), = samples["libvirt_domain_interface_stats_receive_drops_total"]
    assert nic["source_bridge"] == "br0" and nic["target_device"] == "vnet3"
    assert drops == 1.0
    states = {s["domain"]: v for s, v in samples["libvirt_domain_state_code"]}
    assert states == {"a": 1.0, "b": 5.0}


def test_kvmops_domain_series() -> None:
    _text, samples, _families = _render(Scrape(hosts=(_host(),)))
    assert ({"domain": "a", "uuid": UUID_A, "host": "local", "state": "running",
             "reason": "unpaused"}, 1.0) in samples["kvmops_domain_state"]
    assert ({"domain": "b", "uuid": UUID_B, "host": "local", "state": "shutoff",
             "reason": "destroyed"}, 1.0) in samples["kvmops_domain_state"]
    assert ({"domain": "a", "uuid": UUID_A, "host": "local"}, 0.0) in \
        samples["libvirt_domain_timed_out"]
    assert samples["libvirt_domain_vcpu_delay_seconds_total"] == [
        ({"domain": "a", "uuid": UUID_A, "host": "local", "vcpu": "0"}, 1.135129563)]
    assert samples["libvirt_domain_memory_stats_rss_bytes"][0][1] == 267108 * 1024
    assert samples["libvirt_domain_memory_stats_actual_balloon_bytes"][0][1] == 262144 * 1024
    assert samples["libvirt_domain_memory_stats_major_fault_total"][0][1] == 7
    assert "libvirt_domain_memory_stats_unused_bytes" not in samples  # libvirt did not say
    assert samples["libvirt_domain_block_stats_read_time_seconds_total"][0][1] == 0.000758754
    assert samples["libvirt_domain_block_stats_capacity_bytes"][0][1] == 67108864
    assert samples["libvirt_domain_block_iotune_total_bytes_per_second"][0][1] == 1048576
    assert samples["libvirt_domain_block_iotune_read_iops_per_second"][0][1] == 100
    assert "libvirt_domain_block_iotune_write_bytes_per_second" not in samples  # no limit
    (labels, ratio), = samples["libvirt_domain_job_progress_ratio"]
    assert labels["operation"] == "backup" and ratio == 0.25
    assert samples["libvirt_domain_job_data_remaining_bytes"][0][1] == 300
    assert samples["kvmops_guest_agent_responsive"] == [
        ({"domain": "a", "uuid": UUID_A, "host": "local"}, 1.0)]
    assert samples["kvmops_host_memory_bytes"] == [({"host": "local"}, float(8 << 30))]
    # only the running VM's maximum memory is committed
    assert samples["kvmops_host_memory_committed_bytes"] == [({"host": "local"},
                                                              262144 * 1024.0)]
    assert samples["kvmops_pool_available_bytes"] == [({"host": "local", "pool": "default"},
                                                       40.0)]
    # a stopped VM has its state and sizes, no counters
    assert all(s["domain"] == "a" for s, _ in
               samples["libvirt_domain_block_stats_read_bytes_total"])


def test_a_host_that_is_down_is_zero_not_a_failure() -> None:
    down = HostSample(host="far", up=False, duration_s=5.0, error="did not answer")
    _text, samples, _families = _render(Scrape(hosts=(_host(), down)))
    assert ({"host": "far"}, 0.0) in samples["libvirt_up"]
    assert ({"host": "far"}, 0.0) in samples["kvmops_host_up"]
    assert ({"host": "far"}, 5.0) in samples["kvmops_scrape_duration_seconds"]
    assert all(s["host"] == "local" for s, _ in samples["libvirt_domain_state_code"])


def test_a_stale_domain_reports_timed_out() -> None:
    host = _host()
    stale = host.domains[0].__class__(**{**host.domains[0].__dict__, "timed_out": True})
    _text, samples, _families = _render(Scrape(hosts=(_host(domains=(stale,)),)))
    assert samples["libvirt_domain_timed_out"] == [
        ({"domain": "a", "uuid": UUID_A, "host": "local"}, 1.0)]
    assert samples["libvirt_domain_info_cpu_time_seconds_total"][0][1] == 10.979792


def test_jobs_and_doctor() -> None:
    jobs = JobsSample(counts={("backup.create", "succeeded"): 3, ("backup.create", "failed"): 1},
                      durations=(("backup.create", "succeeded", 2.0),
                                 ("backup.create", "succeeded", 100.0),
                                 ("backup.create", "failed", 0.5)))
    doctor = (DoctorSample("local", (("libvirtd", "ok"), ("kvm", "warn"))),)
    _text, samples, families = _render(Scrape(jobs=jobs, doctor=doctor))
    assert ({"kind": "backup.create", "state": "failed"}, 1.0) in samples["kvmops_jobs"]
    assert families["kvmops_job_duration_seconds"].type == "histogram"
    buckets = {s["le"]: v for s, v in samples["kvmops_job_duration_seconds_bucket"]
               if s["result"] == "succeeded"}
    assert (buckets["1.0"], buckets["5.0"], buckets["300.0"], buckets["+Inf"]) == (
        0.0, 1.0, 2.0, 2.0)
    assert ({"kind": "backup.create", "result": "succeeded"}, 102.0) in \
        samples["kvmops_job_duration_seconds_sum"]
    status = {(s["check"], s["status"]): v for s, v in samples["kvmops_doctor_check_status"]}
    assert status[("kvm", "warn")] == 1.0 and status[("kvm", "ok")] == 0.0
    assert status[("libvirtd", "ok")] == 1.0 and status[("libvirtd", "fail")] == 0.0


def _manifest(backup_id: str, parent: str | None, notes: list[str]) -> Manifest:
    kind = BackupType.FULL if parent is None else BackupType.INCREMENTAL
    disk = DiskRecord(target="vda", file="vda.qcow2", source="/img/a.qcow2",
                      type=kind, parent=parent, virtual_size=1 << 26, bytes_written=1000,
                      sha256="x")
    return Manifest(id=backup_id, vm="a", time=datetime(2026, 12, 1, 15, 0, tzinfo=UTC),
                    type=kind, parent=parent, checkpoint=None,
                    consistency=Consistency("crash"), disks=[disk], notes=notes)


def test_backup_samples_from_events_and_the_last_manifest() -> None:
    events = [
        {"time": "2026-12-01T14:00:00+00:00", "vm": "a", "event": "completed",
         "backup_id": "1", "repo": "/r"},
        {"time": "2026-12-01T15:00:00+00:00", "vm": "a", "event": "completed",
         "backup_id": "2", "repo": "/r"},
        {"time": "2026-12-01T16:00:00+00:00", "vm": "a", "event": "failed",
         "backup_id": "3", "error": "boom"},
        {"time": "2026-12-01T16:00:00+00:00", "vm": "deleted", "event": "completed",
         "backup_id": "9", "repo": "/r"},
    ]
    note = ("disk vda: change tracking since 1 cannot be trusted (bitmap x is inconsistent "
            "(QEMU was killed or crashed)); taking a full backup")
    asked = []

    def manifest(repo: str, vm: str, backup_id: str) -> tuple[Manifest, dict[str, int]]:
        asked.append((repo, vm, backup_id))
        return _manifest(backup_id, "1", [note]), {"vda": 2}

    (sample,) = backup_samples(events, {"a": "local"}, manifest)
    assert asked == [("/r", "a", "2")]
    assert sample.last_success is False
    assert sample.last_time == datetime(2026, 12, 1, 16, tzinfo=UTC).timestamp()
    assert sample.last_size_bytes == 1000 and sample.chain_length == {"vda": 2}
    assert sample.bitmap_inconsistent == {"vda": True}
    _text, samples, _families = _render(Scrape(backups=(sample,)))
    assert samples["kvmops_backup_last_success"] == [({"domain": "a", "host": "local"}, 0.0)]
    assert samples["kvmops_bitmap_inconsistent"] == [
        ({"domain": "a", "host": "local", "disk": "vda"}, 1.0)]
    assert samples["kvmops_backup_chain_length"] == [
        ({"domain": "a", "host": "local", "disk": "vda"}, 2.0)]
    assert ({"domain": "a", "host": "local", "disk": "vda"},
            datetime(2026, 12, 1, 15, tzinfo=UTC).timestamp()) in \
        samples["kvmops_backup_last_success_time_seconds"]


def test_backup_samples_of_a_sealed_repository_come_from_the_event_summary() -> None:
    """A sealed or remote repository's manifest is not read (a key, a network): the
    completed event's summary gives the time, size, disks and chain lengths (an event
    written before summaries named chains has none)."""
    note = "disk vdb: change tracking since 1 cannot be trusted (bitmap x is inconsistent)"
    events = [{"time": "2026-12-01T15:00:10+00:00", "vm": "a", "event": "completed",
               "backup_id": "2", "repo": "/work/abc", "location": "s3://b/p",
               "summary": {"time": "2026-12-01T15:00:00+00:00", "bytes": 4096,
                           "disks": ["vda", "vdb"], "notes": [note]}}]
    (sample,) = backup_samples(events, {"a": "local"}, lambda *_: None)
    when = datetime(2026, 12, 1, 15, tzinfo=UTC).timestamp()
    assert sample.last_success is True and sample.last_size_bytes == 4096
    assert sample.disk_success_time == {"vda": when, "vdb": when}
    assert sample.bitmap_inconsistent == {"vda": False, "vdb": True}
    assert sample.chain_length == {}
    with_chains = [{**events[0], "summary": {**events[0]["summary"],  # type: ignore[dict-item]
                                             "chains": {"vda": 3, "vdb": 1, "bad": "x"}}}]
    (sample,) = backup_samples(with_chains, {"a": "local"}, lambda *_: None)
    assert sample.chain_length == {"vda": 3, "vdb": 1}
    # neither a readable manifest nor a summary: no per-disk figures are made up
    bare = [{**events[0], "summary": None}]
    (sample,) = backup_samples(bare, {"a": "local"}, lambda *_: None)
    assert sample.last_success is True and sample.disk_success_time == {}


def test_backup_sample_renders_a_success() -> None:
    sample = BackupSample(domain="a", host="local", last_time=10.0, last_success=True,
                          last_size_bytes=5, disk_success_time={"vda": 10.0},
                          chain_length={"vda": 1}, bitmap_inconsistent={"vda": False})
    _text, samples, _families = _render(Scrape(backups=(sample,)))
    assert samples["kvmops_backup_last_success"] == [({"domain": "a", "host": "local"}, 1.0)]
    assert samples["kvmops_backup_last_size_bytes"][0][1] == 5.0
    assert samples["kvmops_backup_last_time_seconds"] == [
        ({"domain": "a", "host": "local", "disk": "vda"}, 10.0)]


def test_no_agent_series_for_a_vm_without_an_agent_channel() -> None:
    host = _host()
    without = host.domains[0].__class__(**{**host.domains[0].__dict__,
                                           "agent_channel": False})
    _text, samples, _families = _render(Scrape(hosts=(_host(domains=(without,),
                                                            agents={UUID_A: False}),)))
    assert "kvmops_guest_agent_responsive" not in samples  # nothing to alert on
