"""Benchmarks inside a VM's guest (``guest bench``): fio and sysbench run through the
guest agent, parsed (:mod:`kvmops.agent.benchparse`), stored per VM with the VM's
configuration at the time (vCPUs, memory, the disks' cache and io modes and I/O limits,
host), listed and compared with the previous run of the same kind and parameters.

The tools run under ``/bin/sh`` so a missing tool is exit 127 in any guest, named with
the package that brings it. The agent's ``guest-exec`` is polled until a deadline a
minute beyond the benchmark's own time; ``progress(elapsed, expected)`` is told on the
way.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from kvmops.agent.benchparse import parse_fio, parse_sysbench
from kvmops.errors import (
    AgentTimeoutError,
    CancelledError,
    GuestCommandError,
    NotFoundError,
    OperationTimeoutError,
    ValidationError,
)
from kvmops.records import Record
from kvmops.services.audit import audited
from kvmops.services.caller import Caller
from kvmops.sizes import format_size, parse_size
from kvmops.store.bench import StoredRun

if TYPE_CHECKING:
    from kvmops.agent.channel import AgentChannel
    from kvmops.host.connection import Host
    from kvmops.store.db import Store

__all__ = ["FIO_RW", "IOENGINES", "SYSBENCH_TESTS", "FioParams", "HistoryEntry",
           "StoredRun", "SysbenchParams", "compare", "config_changes", "fio_argv", "get_run",
           "history", "run_fio", "run_sysbench", "sysbench_argv"]

Kind = Literal["fio", "sysbench"]
FIO_RW = ("randread", "randwrite", "read", "write", "randrw")
IOENGINES = ("libaio", "psync")
SYSBENCH_TESTS = ("cpu", "memory", "fileio")
DEADLINE_MARGIN = 60.0  # seconds beyond the run's own time: start-up, layout, TCG
DEFAULT_FILE = "/tmp/kvmops-bench.fio"
NOT_FOUND_EXIT = 127  # sh: command not found
Progress = Callable[[float, float], None]
"""``progress(elapsed_s, expected_s)`` while the benchmark runs."""
T = TypeVar("T")

# Runs ARGV when its tool is there, else exits 127 (the guest has no such command).
_RUN = 'command -v "$1" >/dev/null 2>&1 || exit 127; exec "$@"'
# sysbench fileio: its files in a fresh directory, removed afterwards.
_FILEIO = ('command -v sysbench >/dev/null 2>&1 || exit 127\n'
           'd=$(mktemp -d "${TMPDIR:-/tmp}/kvmops-bench.XXXXXX") || exit 1\n'
           'cd "$d" || exit 1\n'
           'sysbench fileio --file-total-size="$1" prepare >/dev/null && '
           'sysbench fileio --file-total-size="$1" --file-test-mode=rndrw --time="$2" '
           '--threads="$3" run\n'
           'rc=$?; cd /; rm -rf "$d"; exit $rc')


@dataclass
class FioParams(Record):
    """One fio job; sizes in bytes. ``direct``: O_DIRECT (None: for a device only)."""

    rw: str = "randread"
    bs: int = 4096
    iodepth: int = 16
    size: int = 64 * 1024 * 1024
    runtime: int = 20
    target: str | None = None  # /dev/vdb or a file in the guest; None: DEFAULT_FILE
    ioengine: str = "libaio"
    direct: bool | None = None
    overwrite: bool = False  # allow writes to a device target

    def checked(self) -> FioParams:
        if self.rw not in FIO_RW:
            raise ValidationError(f"unknown fio --rw '{self.rw}'", hint=f"use {', '.join(FIO_RW)}")
        if self.ioengine not in IOENGINES:
            raise ValidationError(f"unknown fio --ioengine '{self.ioengine}'",
                                  hint=f"use {', '.join(IOENGINES)}")
        _bounded("--bs", self.bs, 512, 64 * 1024 * 1024)
        _bounded("--iodepth", self.iodepth, 1, 1024)
        _bounded("--size", self.size, 1024 * 1024, 1 << 40)
        _bounded("--runtime", self.runtime, 1, 3600)
        target = self.target or DEFAULT_FILE
        if not target.startswith("/") or any(c in target for c in "\n\0:"):
            raise ValidationError(f"invalid fio target '{target}'",
                                  hint="give an absolute path in the guest: /dev/vdb or a file")
        writes = self.rw in ("randwrite", "write", "randrw")
        if target.startswith("/dev/") and writes and not self.overwrite:
            raise ValidationError(f"fio --rw {self.rw} writes to {target} and destroys its data",
                                  hint="pass --overwrite if that disk is scratch")
        direct = target.startswith("/dev/") if self.direct is None else self.direct
        return FioParams(rw=self.rw, bs=self.bs, iodepth=self.iodepth, size=self.size,
                         runtime=self.runtime, target=target, ioengine=self.ioengine,
                         direct=direct, overwrite=self.overwrite)

    def identity(self) -> dict[str, Any]:
        """What makes two runs comparable."""
        return {"rw": self.rw, "bs": self.bs, "iodepth": self.iodepth, "size": self.size,
                "runtime": self.runtime, "target": self.target, "ioengine": self.ioengine,
                "direct": self.direct}


@dataclass
class SysbenchParams(Record):
    test: str = "cpu"
    time: int = 10
    threads: int = 1
    size: int = 64 * 1024 * 1024  # fileio: total size of its files

    def checked(self) -> SysbenchParams:
        if self.test not in SYSBENCH_TESTS:
            raise ValidationError(f"unknown sysbench test '{self.test}'",
                                  hint=f"use {', '.join(SYSBENCH_TESTS)}")
        _bounded("--time", self.time, 1, 3600)
        _bounded("--threads", self.threads, 1, 1024)
        _bounded("--size", self.size, 1024 * 1024, 1 << 40)
        return self

    def identity(self) -> dict[str, Any]:
        found: dict[str, Any] = {"test": self.test, "time": self.time, "threads": self.threads}
        if self.test == "fileio":
            found["size"] = self.size
        return found


def _bounded(option: str, value: int, low: int, high: int) -> None:
    if not low <= value <= high:
        raise ValidationError(f"{option} {value} is out of range ({low}..{high})")


def parse_bytes(text: str | int, option: str) -> int:
    """A size option (``4k``, ``64M``) in bytes."""
    return parse_size(text, what=option)


def fio_argv(params: FioParams) -> list[str]:
    """fio's command line for a checked job: JSON output, one group, time based."""
    argv = ["fio", "--name=kvmops", f"--filename={params.target}", f"--rw={params.rw}",
            f"--bs={params.bs}", f"--iodepth={params.iodepth}", f"--size={params.size}",
            f"--runtime={params.runtime}", "--time_based", f"--ioengine={params.ioengine}",
            f"--direct={1 if params.direct else 0}", "--group_reporting",
            "--output-format=json"]
    if params.target == DEFAULT_FILE:
        argv.append("--unlink=1")  # our own file: gone afterwards
    return argv


def sysbench_argv(params: SysbenchParams) -> list[str]:
    """The guest command of a sysbench test (fileio: prepare, run, clean up in sh)."""
    if params.test == "fileio":
        return ["/bin/sh", "-c", _FILEIO, "kvmops-bench", str(params.size), str(params.time),
                str(params.threads)]
    return ["/bin/sh", "-c", _RUN, "kvmops-bench", "sysbench", params.test,
            f"--time={params.time}", f"--threads={params.threads}", "run"]


# ------------------------------------------------------------------------ the VM's side
def vm_config(host: Host, vm: str, host_name: str) -> tuple[str | None, dict[str, Any]]:
    """(uuid, configuration) of a running VM as a run records it."""
    from kvmops.vm.domxml import DomainDocument
    from kvmops.vm.iotune import IoTune

    domain = host.lookup(vm)
    stats = domain.stats()
    doc = DomainDocument(domain.xml())
    disks = {d.target: {"cache": d.cache or "default", "io": d.io or "default",
                        "iotune": IoTune.from_libvirt(d.iotune).model_dump()}
             for d in doc.disks() if d.device == "disk"}
    return domain.uuid(), {"host": host_name, "vcpus": stats.vcpus,
                           "memory_bytes": stats.memory, "disks": disks}


def _guest_run(caller: Caller, vm: str, uri: str | None, argv: Sequence[str], tool: str,
               expected_s: float, progress: Progress | None) -> tuple[str, str]:
    """Run ``argv`` in the guest until it ends (or the deadline): (stdout, stderr)."""
    from kvmops.agent import process
    from kvmops.services.guest import open_guest

    deadline_s = expected_s + DEADLINE_MARGIN
    with open_guest(caller, vm, uri=uri) as guest:
        pid = guest.exec_start(list(argv))
        started = time.monotonic()
        try:
            while True:
                try:
                    result = process.exec_status(guest.channel, pid)
                except AgentTimeoutError as err:
                    raise AgentTimeoutError(
                        f"guest agent of VM '{vm}' stopped answering while {tool} ran "
                        f"(pid {pid})", hint=f"{tool} may still run in the guest") from err
                elapsed = time.monotonic() - started
                if result is not None:
                    break
                if progress is not None:
                    progress(min(elapsed, expected_s), expected_s)  # may cancel the job
                if elapsed > deadline_s:
                    raise OperationTimeoutError(
                        f"{tool} in VM '{vm}' did not finish within {deadline_s:g}s "
                        f"(guest pid {pid})", hint=f"stop it with 'kill {pid}' in the guest")
                time.sleep(0.5)
        except (KeyboardInterrupt, CancelledError, OperationTimeoutError):
            _stop(guest.channel, pid)
            raise
    stdout = result.stdout.decode("utf-8", "replace")
    stderr = result.stderr.decode("utf-8", "replace")
    if result.exit_code == NOT_FOUND_EXIT:
        raise NotFoundError(
            f"{tool} is not installed in the guest of VM '{vm}'",
            hint=f"install the '{tool}' package in the guest (apt-get install {tool}, "
                 f"dnf install {tool}); the tiny test guest has it on its tools disk")
    # fio may exit non-zero with a JSON result naming the failed job: its parser says.
    has_json = tool == "fio" and (stdout.lstrip().startswith("{") or "\n{" in stdout)
    if (result.exit_code != 0 or result.signal is not None) and not has_json:
        detail = " ".join((stderr or stdout).split())[-300:] or "no output"
        ended = f"signal {result.signal}" if result.signal is not None \
            else f"exit {result.exit_code}"
        raise GuestCommandError(f"{tool} failed in VM '{vm}' ({ended}): {detail}")
    return stdout, stderr


def _stop(channel: AgentChannel, pid: int) -> None:
    """Best effort: end a benchmark the caller gave up on (cancelled, interrupted, past
    its deadline) so it does not go on loading the guest."""
    from kvmops.agent import process

    with contextlib.suppress(Exception):
        process.exec_start(channel, ["kill", str(pid)])


def _store_run(caller: Caller, db: str | Store | None, **fields: Any) -> StoredRun:
    from kvmops.store import bench as store_bench

    return _with_store(db, lambda store: store_bench.add(store, created_by=caller.name,
                                                         **fields))


@audited("guest.bench.fio", target="vm")
def run_fio(caller: Caller, host: Host, vm: str, params: FioParams, *,
            uri: str | None = None, host_name: str = "local",
            progress: Progress | None = None, db: str | Store | None = None) -> StoredRun:
    """Run fio in ``vm``'s guest, store and return the run."""
    job = params.checked()
    uuid, config = vm_config(host, vm, host_name)
    target = job.target or ""
    if target.startswith("/dev/") and target[5:] in config["disks"]:
        config["disk"] = target[5:]  # what the run measured: compare that disk alone
    started = datetime.now(UTC)
    clock = time.monotonic()
    stdout, _stderr = _guest_run(caller, vm, uri, ["/bin/sh", "-c", _RUN, "kvmops-bench",
                                                   *fio_argv(job)],
                                 "fio", float(job.runtime), progress)
    metrics = parse_fio(stdout)
    return _store_run(caller, db, vm=vm, vm_uuid=uuid, host=host_name, kind="fio",
                      test=job.rw, params=job.identity(), config=config, metrics=metrics,
                      score=metrics["iops"], started_at=started,
                      duration_s=round(time.monotonic() - clock, 3))


@audited("guest.bench.sysbench", target="vm")
def run_sysbench(caller: Caller, host: Host, vm: str, params: SysbenchParams, *,
                 uri: str | None = None, host_name: str = "local",
                 progress: Progress | None = None, db: str | Store | None = None
                 ) -> StoredRun:
    """Run a sysbench test in ``vm``'s guest, store and return the run."""
    job = params.checked()
    uuid, config = vm_config(host, vm, host_name)
    started = datetime.now(UTC)
    clock = time.monotonic()
    stdout, _stderr = _guest_run(caller, vm, uri, sysbench_argv(job), "sysbench",
                                 float(job.time), progress)
    metrics = parse_sysbench(job.test, stdout)
    return _store_run(caller, db, vm=vm, vm_uuid=uuid, host=host_name, kind="sysbench",
                      test=job.test, params=job.identity(), config=config, metrics=metrics,
                      score=metrics["events_per_s"], started_at=started,
                      duration_s=round(time.monotonic() - clock, 3))


# ------------------------------------------------------------------------ history
@dataclass
class HistoryEntry(Record):
    """A run and how it compares with the previous run of the same kind and parameters."""

    run: StoredRun
    previous_id: int | None = None
    change_percent: float | None = None  # of the score (IOPS, events/s)
    config_changes: list[str] = field(default_factory=list)


def _flat_config(config: dict[str, Any], disk: str | None) -> dict[str, str]:
    flat = {"host": str(config.get("host", "-")), "vcpus": str(config.get("vcpus", "-"))}
    memory = config.get("memory_bytes")
    flat["memory"] = format_size(int(memory)) if memory else "-"
    for target, facts in sorted(config.get("disks", {}).items()):
        if disk is not None and target != disk:
            continue
        flat[f"{target} cache"] = str(facts.get("cache", "-"))
        flat[f"{target} io"] = str(facts.get("io", "-"))
        for key, value in facts.get("iotune", {}).items():
            flat[f"{target} iotune {key}"] = str(value)
    return flat


def config_changes(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    """What differs between two runs' configurations: ``vdb iotune total_iops 0→50``."""
    disk = after.get("disk") if after.get("disk") == before.get("disk") else None
    old, new = _flat_config(before, disk), _flat_config(after, disk)
    return [f"{key} {old.get(key, '-')}→{new.get(key, '-')}"
            for key in sorted(set(old) | set(new)) if old.get(key) != new.get(key)]


def compare(runs: Sequence[StoredRun]) -> list[HistoryEntry]:
    """Each run (oldest first) against the one before it with the same kind, test and
    parameters."""
    last: dict[tuple[str, str, str], StoredRun] = {}
    entries = []
    for run in runs:
        key = (run.kind, run.test, repr(sorted(run.params.items())))
        previous = last.get(key)
        entry = HistoryEntry(run=run)
        if previous is not None:
            entry.previous_id = previous.id
            if previous.score:
                entry.change_percent = round((run.score - previous.score) / previous.score
                                             * 100.0, 1)
            entry.config_changes = config_changes(previous.config, run.config)
        last[key] = run
        entries.append(entry)
    return entries


def history(caller: Caller, vm: str, *, kind: str | None = None,
            db: str | Store | None = None) -> list[HistoryEntry]:
    """A VM's runs, oldest first, each compared with its predecessor."""
    from kvmops.store import bench as store_bench

    if kind is not None and kind not in ("fio", "sysbench"):
        raise ValidationError(f"unknown benchmark kind '{kind}'", hint="use fio or sysbench")
    return compare(_with_store(db, lambda store: store_bench.runs(store, vm, kind=kind)))


def get_run(caller: Caller, run_id: int, *, db: str | Store | None = None) -> StoredRun:
    from kvmops.store import bench as store_bench

    if not 1 <= run_id < 2**63:  # no row has it (and a database integer cannot hold it)
        raise NotFoundError(f"benchmark run {run_id} not found",
                            hint="see 'kvmops guest bench history VM' for the runs")
    return _with_store(db, lambda store: store_bench.get(store, run_id))


def _with_store(db: str | Store | None, fn: Callable[[Store], T]) -> T:
    if db is not None and not isinstance(db, str):
        return fn(db)
    from kvmops.config import settings
    from kvmops.store import migrated

    with migrated(db or settings().db) as store:
        return fn(store)
