"""The Prometheus series of a :class:`~kvmops.metrics.model.Scrape` (pure).

kumina's libvirt exporter (Debian's ``prometheus-libvirt-exporter`` 0.2.0) series keep
its names, labels, types and help texts, so existing dashboards work unchanged; each
per-host series adds a ``host`` label (the kvmops host name, ``local`` for this machine).
kumina reports running domains only; kvmops reports every defined domain (a stopped one
has its state and sizes, no counters) and counts running ones in
``libvirt_domains_number`` as kumina does.

A value libvirt did not give is left out (no series), never reported as 0.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, TypeVar

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from kvmops.metrics.model import (
    BackupSample,
    DrillSample,
    HostSample,
    JobsSample,
    ScheduleSample,
    Scrape,
)

if TYPE_CHECKING:
    from kvmops.host.domstats import DomainStats

#: Buckets of ``kvmops_job_duration_seconds`` (jobs last from seconds to hours).
JOB_BUCKETS = (1.0, 5.0, 15.0, 30.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 7200.0, 21600.0)

DOMAIN = ("domain", "uuid", "host")
BLOCK = ("domain", "uuid", "source_file", "target_device", "host")
NET = ("domain", "uuid", "source_bridge", "target_device", "host")
DOCTOR_STATUSES = ("ok", "warn", "fail")
IOTUNE = {
    "total_bytes_per_second": "total_bytes_sec", "read_bytes_per_second": "read_bytes_sec",
    "write_bytes_per_second": "write_bytes_sec", "total_iops_per_second": "total_iops_sec",
    "read_iops_per_second": "read_iops_sec", "write_iops_per_second": "write_iops_sec",
}


_Family = TypeVar("_Family", GaugeMetricFamily, CounterMetricFamily)


class _Families:
    """Metric families by name, made on first use (help, type, labels)."""

    def __init__(self) -> None:
        self._found: dict[str, Metric] = {}

    def _family(self, kind: type[_Family], name: str, doc: str, labels: Sequence[str]
                ) -> _Family:
        family = self._found.get(name)
        if family is None:
            family = self._found[name] = kind(name, doc, labels=list(labels))
        assert isinstance(family, kind)
        return family

    def gauge(self, name: str, doc: str, labels: Sequence[str]) -> GaugeMetricFamily:
        return self._family(GaugeMetricFamily, name, doc, labels)

    def counter(self, name: str, doc: str, labels: Sequence[str]) -> CounterMetricFamily:
        return self._family(CounterMetricFamily, name, doc, labels)

    def add(self, family: Metric) -> None:
        self._found[family.name] = family

    def __iter__(self) -> Iterator[Metric]:
        return iter(self._found.values())


def _ns(value: int | None) -> float | None:
    return None if value is None else value / 1e9


def _kib(value: int | None) -> float | None:
    return None if value is None else value * 1024.0


def _put(family: GaugeMetricFamily | CounterMetricFamily, labels: Sequence[str],
         value: float | int | None) -> None:
    if value is not None:
        family.add_metric(list(labels), float(value))


def families(scrape: Scrape) -> list[Metric]:
    """Every series of ``scrape``."""
    out = _Families()
    for host in scrape.hosts:
        _host(out, host)
    _backups(out, scrape.backups)
    _schedules(out, scrape.schedules)
    _drills(out, scrape.drills)
    if scrape.jobs is not None:
        for family in _jobs(scrape.jobs):
            out.add(family)
    status = out.gauge("kvmops_doctor_check_status",
                       "The host doctor's last result per check (1 for its status).",
                       ("host", "check", "status"))
    for report in scrape.doctor:
        for check, result in report.checks:
            for candidate in DOCTOR_STATUSES:
                status.add_metric([report.host, check, candidate],
                                  1.0 if result == candidate else 0.0)
    return list(out)


def _host(out: _Families, sample: HostSample) -> None:
    h = sample.host
    up = 1.0 if sample.up else 0.0
    out.gauge("libvirt_up", "Whether scraping libvirt's metrics was successful.",
              ("host",)).add_metric([h], up)
    out.gauge("kvmops_host_up", "Whether the host's libvirtd answered the last scrape.",
              ("host",)).add_metric([h], up)
    out.gauge("kvmops_scrape_duration_seconds",
              "How long the host's statistics took in the last scrape.",
              ("host",)).add_metric([h], sample.duration_s)
    if not sample.up:
        return
    running = [d for d in sample.domains if d.active]
    out.gauge("libvirt_domains_number", "Number of domains.",
              ("host",)).add_metric([h], float(len(running)))
    _put(out.gauge("kvmops_host_memory_bytes", "The host's memory.", ("host",)),
         [h], sample.memory_bytes)
    committed = sum((d.max_memory_kib or 0) for d in running) * 1024
    out.gauge("kvmops_host_memory_committed_bytes",
              "The maximum memory of the host's running VMs, summed.",
              ("host",)).add_metric([h], float(committed))
    for pool in sample.pools:
        _put(out.gauge("kvmops_pool_capacity_bytes", "A storage pool's capacity.",
                       ("host", "pool")), [h, pool.name], pool.capacity)
        _put(out.gauge("kvmops_pool_available_bytes", "A storage pool's free space.",
                       ("host", "pool")), [h, pool.name], pool.available)
    for dom in sample.domains:
        _domain(out, h, dom, sample.agents.get(dom.uuid))


def _domain(out: _Families, h: str, d: DomainStats, agent: bool | None) -> None:
    labels = (d.name, d.uuid, h)
    out.gauge("libvirt_domain_state_code", "State of the domain.",
              DOMAIN).add_metric(labels, float(d.state))
    out.gauge("kvmops_domain_state",
              "The domain's state and its reason (1 for the current ones).",
              (*DOMAIN, "state", "reason")).add_metric([*labels, d.state_name, d.reason_name],
                                                        1.0)
    out.gauge("libvirt_domain_timed_out",
              "1 when the domain did not answer in time and its values are the last known.",
              DOMAIN).add_metric(labels, 1.0 if d.timed_out else 0.0)
    _put(out.gauge("libvirt_domain_info_maximum_memory_bytes",
                   "Maximum allowed memory of the domain, in bytes.", DOMAIN),
         labels, _kib(d.max_memory_kib))
    _put(out.gauge("libvirt_domain_info_memory_usage_bytes",
                   "Memory usage of the domain, in bytes.", DOMAIN),
         labels, _kib(d.current_memory_kib))
    _put(out.gauge("libvirt_domain_info_virtual_cpus",
                   "Number of virtual CPUs for the domain.", DOMAIN),
         labels, d.vcpus_current)
    if agent is not None and d.active and d.agent_channel is not False:
        out.gauge("kvmops_guest_agent_responsive",
                  "1 when the guest agent answered its last ping.",
                  DOMAIN).add_metric(labels, 1.0 if agent else 0.0)
    if not d.active:
        return
    _put(out.counter("libvirt_domain_info_cpu_time_seconds_total",
                     "Amount of CPU time used by the domain, in seconds.", DOMAIN),
         labels, _ns(d.cpu_time_ns))
    _vcpus(out, labels, d)
    _memory(out, labels, d)
    _blocks(out, labels, d)
    _nets(out, labels, d)
    _jobs_of(out, labels, d)


def _vcpus(out: _Families, labels: Sequence[str], d: DomainStats) -> None:
    names = (("time", "time_ns", "Time the vCPU ran, in seconds."),
             ("wait", "wait_ns", "Time the vCPU waited on I/O, in seconds."),
             ("delay", "delay_ns",
              "Time the vCPU was ready to run but waited for a host CPU, in seconds."))
    for name, attr, doc in names:
        family = out.counter(f"libvirt_domain_vcpu_{name}_seconds_total", doc,
                             (*DOMAIN, "vcpu"))
        for vcpu in d.vcpus:
            _put(family, [*labels, str(vcpu.index)], _ns(getattr(vcpu, attr)))


def _memory(out: _Families, labels: Sequence[str], d: DomainStats) -> None:
    b = d.balloon
    gauges = (("actual_balloon", d.current_memory_kib, "The balloon's current size."),
              ("available", b.get("available"), "Memory the guest sees as usable."),
              ("usable", b.get("usable"),
               "Memory the guest can use without swapping (its MemAvailable)."),
              ("unused", b.get("unused"), "Memory the guest leaves unused (its MemFree)."),
              ("rss", b.get("rss"), "The QEMU process's resident set size."),
              ("disk_caches", b.get("disk_caches"),
               "Memory the guest uses for caches it can free."))
    for name, value, doc in gauges:
        _put(out.gauge(f"libvirt_domain_memory_stats_{name}_bytes", doc + " In bytes.",
                       DOMAIN), labels, _kib(value))
    for name, key in (("major", "major_fault"), ("minor", "minor_fault")):
        _put(out.counter(f"libvirt_domain_memory_stats_{name}_fault_total",
                         f"Page faults of the guest ({name}).", DOMAIN), labels, b.get(key))


def _blocks(out: _Families, labels: Sequence[str], d: DomainStats) -> None:
    dom, uuid, h = labels
    counters: tuple[tuple[str, str, str, Callable[[int | None], float | int | None]], ...] = (
        ("read_bytes_total", "rd_bytes",
         "Number of bytes read from a block device, in bytes.", lambda v: v),
        ("read_requests_total", "rd_reqs",
         "Number of read requests from a block device.", lambda v: v),
        ("write_bytes_total", "wr_bytes",
         "Number of bytes written from a block device, in bytes.", lambda v: v),
        ("write_requests_total", "wr_reqs",
         "Number of write requests from a block device.", lambda v: v),
        ("read_time_seconds_total", "rd_times_ns",
         "Time spent reading from a block device, in seconds.", _ns),
        ("write_time_seconds_total", "wr_times_ns",
         "Time spent writing to a block device, in seconds.", _ns),
        ("flush_requests_total", "fl_reqs",
         "Number of flush requests to a block device.", lambda v: v),
        ("flush_time_seconds_total", "fl_times_ns",
         "Time spent flushing a block device, in seconds.", _ns),
    )
    gauges = (("allocation_bytes", "allocation",
               "Highest allocated offset of the block device's image, in bytes."),
              ("capacity_bytes", "capacity", "Logical size of the block device, in bytes."),
              ("physical_bytes", "physical",
               "Size of the block device's image on its host storage, in bytes."))
    for block in d.blocks:
        block_labels = [dom, uuid, block.path or "", block.target, h]
        for name, attr, doc, convert in counters:
            _put(out.counter(f"libvirt_domain_block_stats_{name}", doc, BLOCK),
                 block_labels, convert(getattr(block, attr)))
        for name, attr, doc in gauges:
            _put(out.gauge(f"libvirt_domain_block_stats_{name}", doc, BLOCK),
                 block_labels, getattr(block, attr))
    paths = {b.target: b.path or "" for b in d.blocks}
    for tune in d.iotune:
        for name, key in IOTUNE.items():
            unit = "bytes" if "bytes" in name else "I/O operations"
            _put(out.gauge(f"libvirt_domain_block_iotune_{name}",
                           f"The disk's {key.split('_')[0]} limit in {unit} per second "
                           "(absent: no limit).", BLOCK),
                 [dom, uuid, paths.get(tune.target, ""), tune.target, h],
                 tune.limits.get(key) or None)


def _nets(out: _Families, labels: Sequence[str], d: DomainStats) -> None:
    dom, uuid, h = labels
    counters = (
        ("receive_bytes_total", "rx_bytes",
         "Number of bytes received on a network interface, in bytes."),
        ("receive_packets_total", "rx_pkts",
         "Number of packets received on a network interface."),
        ("receive_errors_total", "rx_errs",
         "Number of packet receive errors on a network interface."),
        ("receive_drops_total", "rx_drop",
         "Number of packet receive drops on a network interface."),
        ("transmit_bytes_total", "tx_bytes",
         "Number of bytes transmitted on a network interface, in bytes."),
        ("transmit_packets_total", "tx_pkts",
         "Number of packets transmitted on a network interface."),
        ("transmit_errors_total", "tx_errs",
         "Number of packet transmit errors on a network interface."),
        ("transmit_drops_total", "tx_drop",
         "Number of packet transmit drops on a network interface."),
    )
    for net in d.nets:
        for name, attr, doc in counters:
            _put(out.counter(f"libvirt_domain_interface_stats_{name}", doc, NET),
                 [dom, uuid, net.bridge or "", net.target, h], getattr(net, attr))


def _jobs_of(out: _Families, labels: Sequence[str], d: DomainStats) -> None:
    job_labels = (*DOMAIN, "operation", "target_device")
    for job in d.jobs:
        values = [*labels, job.operation, job.disk or ""]
        for name, value, doc in (("data_total", job.data_total, "Data the job moves in all"),
                                 ("data_processed", job.data_processed, "Data moved so far"),
                                 ("data_remaining", job.data_remaining, "Data left to move")):
            _put(out.gauge(f"libvirt_domain_job_{name}_bytes", f"{doc}, in bytes.",
                           job_labels), values, value)
        _put(out.gauge("libvirt_domain_job_progress_ratio",
                       "How far the domain's job is (0..1): backup, migration, block jobs.",
                       job_labels), values, job.ratio)


def _backups(out: _Families, backups: Iterable[BackupSample]) -> None:
    for b in backups:
        disks = sorted(b.disk_success_time) or [""]
        for disk in disks:
            _put(out.gauge("kvmops_backup_last_time_seconds",
                           "When the VM's last backup ended (completed or failed), "
                           "Unix time.", ("domain", "host", "disk")),
                 [b.domain, b.host, disk], b.last_time)
        for disk, when in sorted(b.disk_success_time.items()):
            out.gauge("kvmops_backup_last_success_time_seconds",
                      "When the disk's last completed backup ended, Unix time.",
                      ("domain", "host", "disk")).add_metric([b.domain, b.host, disk], when)
        for disk, length in sorted(b.chain_length.items()):
            out.gauge("kvmops_backup_chain_length",
                      "Backups a restore of the disk's last backup reads (1: a full).",
                      ("domain", "host", "disk")).add_metric([b.domain, b.host, disk],
                                                             float(length))
        for disk, bad in sorted(b.bitmap_inconsistent.items()):
            out.gauge("kvmops_bitmap_inconsistent",
                      "1 when the last backup found the disk's change-tracking bitmap "
                      "inconsistent (it took a full).", ("domain", "host", "disk")
                      ).add_metric([b.domain, b.host, disk], 1.0 if bad else 0.0)
        if b.last_success is not None:
            out.gauge("kvmops_backup_last_success",
                      "1 when the VM's last backup completed, 0 when it failed.",
                      ("domain", "host")).add_metric([b.domain, b.host],
                                                     1.0 if b.last_success else 0.0)
        _put(out.gauge("kvmops_backup_last_size_bytes",
                       "Bytes written by the VM's last completed backup (all disks).",
                       ("domain", "host")), [b.domain, b.host], b.last_size_bytes)


def _schedules(out: _Families, schedules: Iterable[ScheduleSample]) -> None:
    labels = ("schedule", "domain", "host")
    for s in schedules:
        values = [str(s.schedule), s.domain, s.host]
        out.gauge("kvmops_backup_schedule_interval_seconds",
                  "The expected time between two runs of the backup schedule.",
                  labels).add_metric(values, s.interval_s)
        out.gauge("kvmops_backup_schedule_last_success_time_seconds",
                  "When the schedule's last successful run ended (its creation before "
                  "one), Unix time.", labels).add_metric(values, s.last_success_time)
        _put(out.gauge("kvmops_backup_schedule_last_run_time_seconds",
                       "When the schedule's last finished run (ok or failed) ended, "
                       "Unix time.", labels), values, s.last_run_time)
        if s.last_success is not None:
            out.gauge("kvmops_backup_schedule_last_success",
                      "1 when the schedule's last finished run succeeded, 0 when it "
                      "failed after its retries.", labels
                      ).add_metric(values, 1.0 if s.last_success else 0.0)


def _drills(out: _Families, drills: Iterable[DrillSample]) -> None:
    for d in drills:
        out.gauge("kvmops_backup_drill_last_time_seconds",
                  "When the VM's last restore drill started, Unix time.",
                  ("domain",)).add_metric([d.domain], d.time)
        out.gauge("kvmops_backup_drill_last_success",
                  "1 when the VM's last restore drill passed (verified, restored, booted, "
                  "checked), 0 when it failed.", ("domain",)
                  ).add_metric([d.domain], 1.0 if d.success else 0.0)
        _put(out.gauge("kvmops_backup_drill_agent_seconds",
                       "Seconds from start to the guest agent of the VM's last restore "
                       "drill.", ("domain",)), [d.domain], d.agent_s)


def _jobs(jobs: JobsSample) -> list[Metric]:
    counts = GaugeMetricFamily("kvmops_jobs", "kvmops jobs in the job store by kind and state.",
                               labels=["kind", "state"])
    for (kind, state), count in sorted(jobs.counts.items()):
        counts.add_metric([kind, state], float(count))
    histogram = HistogramMetricFamily(
        "kvmops_job_duration_seconds", "How long finished kvmops jobs ran, by kind and result.",
        labels=["kind", "result"])
    grouped: dict[tuple[str, str], list[float]] = defaultdict(list)
    for kind, result, seconds in jobs.durations:
        grouped[(kind, result)].append(seconds)
    for (kind, result), values in sorted(grouped.items()):
        buckets = [(_le(bound), float(sum(1 for v in values if v <= bound)))
                   for bound in JOB_BUCKETS]
        buckets.append(("+Inf", float(len(values))))
        histogram.add_metric([kind, result], buckets, sum_value=sum(values))
    return [counts, histogram]


def _le(bound: float) -> str:
    return repr(float(bound))


class ScrapeCollector(Collector):
    """A prometheus-client collector that takes a fresh :class:`Scrape` per collect."""

    def __init__(self, source: Callable[[], Scrape]) -> None:
        self._source = source

    def collect(self) -> Iterable[Metric]:
        return families(self._source())

    def describe(self) -> Iterable[Metric]:
        return []  # no scrape at registration time
