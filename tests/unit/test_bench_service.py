"""guest bench: command lines, parameter checks, the store and the history's comparison."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from kvmops.agent.channel import AgentChannel
from kvmops.errors import (
    CancelledError,
    GuestCommandError,
    NotFoundError,
    OperationTimeoutError,
    ValidationError,
)
from kvmops.services import bench
from kvmops.services.bench import FioParams, SysbenchParams
from kvmops.services.caller import Caller
from kvmops.store.db import Store


def _config(total_iops: int = 0, vcpus: int = 1) -> dict[str, object]:
    tune = {"total_iops": total_iops, "read_iops": 0, "write_iops": 0,
            "total_bytes_sec": 0, "read_bytes_sec": 0, "write_bytes_sec": 0}
    return {"host": "local", "vcpus": vcpus, "memory_bytes": 256 * 1024 * 1024,
            "disks": {"vda": {"cache": "none", "io": "default", "iotune": dict(tune)},
                      "vdb": {"cache": "none", "io": "default", "iotune": tune}},
            "disk": "vdb"}


def test_fio_argv_for_a_device_is_direct_and_json() -> None:
    job = FioParams(target="/dev/vdb", runtime=3, size=8 * 1024 * 1024).checked()
    argv = bench.fio_argv(job)
    assert argv[0] == "fio"
    assert {"--filename=/dev/vdb", "--rw=randread", "--bs=4096", "--iodepth=16",
            "--direct=1", "--time_based", "--runtime=3", "--output-format=json",
            "--group_reporting", "--ioengine=libaio"} <= set(argv)
    assert "--unlink=1" not in argv


def test_fio_default_file_is_buffered_and_removed() -> None:
    job = FioParams(rw="randwrite").checked()
    argv = bench.fio_argv(job)
    assert job.target == bench.DEFAULT_FILE
    assert "--direct=0" in argv and "--unlink=1" in argv


@pytest.mark.parametrize(("params", "words"), [
    (FioParams(rw="randwrite", target="/dev/vdb"), "destroys its data.*--overwrite"),
    (FioParams(rw="trim"), "unknown fio --rw 'trim'"),
    (FioParams(ioengine="io_uring"), "unknown fio --ioengine"),
    (FioParams(iodepth=0), "--iodepth 0 is out of range"),
    (FioParams(target="vdb"), "invalid fio target 'vdb'"),
])
def test_fio_refusals(params: FioParams, words: str) -> None:
    with pytest.raises(ValidationError, match=words):
        params.checked()


def test_writes_to_a_device_with_overwrite() -> None:
    assert FioParams(rw="randrw", target="/dev/vdb", overwrite=True).checked().direct


def test_sysbench_argv() -> None:
    argv = bench.sysbench_argv(SysbenchParams(test="cpu", time=3, threads=2).checked())
    assert argv[:2] == ["/bin/sh", "-c"] and argv[-5:] == [
        "sysbench", "cpu", "--time=3", "--threads=2", "run"]
    fileio = bench.sysbench_argv(SysbenchParams(test="fileio", size=16 << 20).checked())
    assert "prepare" in fileio[2] and "rm -rf" in fileio[2] and fileio[-3:] == [
        str(16 << 20), "10", "1"]
    with pytest.raises(ValidationError, match="unknown sysbench test 'oltp'"):
        SysbenchParams(test="oltp").checked()


def test_config_changes_name_the_disk_limit() -> None:
    assert bench.config_changes(_config(0), _config(50)) == ["vdb iotune total_iops 0→50"]
    assert bench.config_changes(_config(0, vcpus=1), _config(0, vcpus=2)) == ["vcpus 1→2"]
    assert bench.config_changes(_config(), _config()) == []


def test_store_history_compares_same_parameters_only(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'k.db'}")
    store.migrate()
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    fio = FioParams(target="/dev/vdb", runtime=3).checked().identity()
    common: dict[str, Any] = {"vm": "v1", "vm_uuid": None, "host": "local",
                              "duration_s": 4.0, "created_by": "root"}
    from kvmops.store import bench as store_bench

    first = store_bench.add(store, kind="fio", test="randread", params=fio,
                            config=_config(0), metrics={"iops": 400.0}, score=400.0,
                            started_at=t0, **common)
    store_bench.add(store, kind="sysbench", test="cpu", params={"test": "cpu"},
                    config=_config(0), metrics={"events_per_s": 90.0}, score=90.0,
                    started_at=t0 + timedelta(seconds=1), **common)
    store_bench.add(store, kind="fio", test="randread", params={**fio, "bs": 8192},
                    config=_config(0), metrics={"iops": 300.0}, score=300.0,
                    started_at=t0 + timedelta(seconds=2), **common)
    store_bench.add(store, kind="fio", test="randread", params=fio, config=_config(50),
                    metrics={"iops": 50.0}, score=50.0,
                    started_at=t0 + timedelta(seconds=3), **common)
    caller = Caller(name="t", via="api")
    entries = bench.history(caller, "v1", db=store)
    assert [e.run.score for e in entries] == [400.0, 90.0, 300.0, 50.0]
    assert [e.previous_id for e in entries] == [None, None, None, first.id]
    assert entries[3].change_percent == -87.5
    assert entries[3].config_changes == ["vdb iotune total_iops 0→50"]
    assert [e.run.kind for e in bench.history(caller, "v1", kind="sysbench", db=store)] == \
        ["sysbench"]
    assert bench.get_run(caller, first.id, db=store).metrics == {"iops": 400.0}
    for missing in (999, 0, 10**30):
        with pytest.raises(NotFoundError, match=f"benchmark run {missing} not found"):
            bench.get_run(caller, missing, db=store)
    with pytest.raises(ValidationError, match="unknown benchmark kind"):
        bench.history(caller, "v1", kind="iperf", db=store)
    store.close()


# ------------------------------------------------------------ a run against fakes
class FakeChannel(AgentChannel):
    """guest-exec answers: the benchmark (pid 7) ends with ``exit_code`` and ``stdout``
    after ``polls`` status calls (None: never); every argv started is kept."""

    target = "VM 'v1'"

    def __init__(self, exit_code: int, stdout: str = "", polls: int | None = 1) -> None:
        self.exit_code, self.stdout, self.polls = exit_code, stdout, polls
        self.started: list[list[str]] = []

    def execute(self, command: str, arguments: dict[str, Any] | None = None, *,
                timeout: float = 30.0) -> Any:
        args = arguments or {}
        if command == "guest-exec":
            self.started.append([args["path"], *args["arg"]])
            return {"pid": 7 if len(self.started) == 1 else 8}
        assert command == "guest-exec-status"
        if self.polls is None or self.polls > 0:
            self.polls = None if self.polls is None else self.polls - 1
            return {"exited": False}
        return {"exited": True, "exitcode": self.exit_code,
                "out-data": base64.b64encode(self.stdout.encode()).decode()}

    def execute_no_reply(self, command: str, arguments: dict[str, Any] | None = None, *,
                         timeout: float = 3.0) -> None:
        raise AssertionError(command)


class FakeDomain:
    def stats(self) -> Any:
        return SimpleNamespace(vcpus=2, memory=512 * 1024 * 1024)

    def xml(self, **_: Any) -> str:
        return ("<domain><name>v1</name><devices><disk type='file' device='disk'>"
                "<driver name='qemu' type='raw' cache='none' io='native'/>"
                "<source file='/x.raw'/><target dev='vdb' bus='virtio'/>"
                "<iotune><total_iops_sec>50</total_iops_sec></iotune></disk>"
                "</devices></domain>")

    def uuid(self) -> str:
        return "00000000-0000-0000-0000-000000000001"


class FakeHost:
    def lookup(self, name: str) -> FakeDomain:
        return FakeDomain()


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    db = Store(f"sqlite:///{tmp_path / 'k.db'}")
    db.migrate()
    yield db
    db.close()


def _with(monkeypatch: pytest.MonkeyPatch, channel: FakeChannel) -> None:
    import kvmops.services.guest as guest_service

    monkeypatch.setattr(guest_service, "open_agent", lambda *a, **k: channel)
    monkeypatch.setattr("kvmops.services.bench.time.sleep", lambda s: None)


def test_a_sysbench_run_is_parsed_and_stored_with_the_config(
        monkeypatch: pytest.MonkeyPatch, store: Store) -> None:
    text = (Path(__file__).parent / "data" / "bench" / "sysbench-cpu.txt").read_text()
    channel = FakeChannel(0, text, polls=2)
    _with(monkeypatch, channel)
    seen: list[tuple[float, float]] = []
    run = bench.run_sysbench(Caller(name="t", via="api"), FakeHost(), "v1",  # type: ignore[arg-type]
                             SysbenchParams(test="cpu", time=2), db=store,
                             progress=lambda done, total: seen.append((done, total)))
    assert run.score == 2046.72 and run.kind == "sysbench" and run.test == "cpu"
    assert run.config["vcpus"] == 2 and run.config["memory_bytes"] == 512 * 1024 * 1024
    assert run.config["disks"]["vdb"] == {"cache": "none", "io": "native", "iotune": {
        "total_iops": 50, "read_iops": 0, "write_iops": 0, "total_bytes_sec": 0,
        "read_bytes_sec": 0, "write_bytes_sec": 0}}
    assert len(seen) == 2 and all(total == 2.0 for _, total in seen)
    assert channel.started[0][:2] == ["/bin/sh", "-c"]
    assert bench.get_run(Caller(name="t", via="api"), run.id, db=store).score == 2046.72


def test_a_missing_tool_names_its_package(monkeypatch: pytest.MonkeyPatch,
                                          store: Store) -> None:
    _with(monkeypatch, FakeChannel(127))
    with pytest.raises(NotFoundError, match="fio is not installed in the guest of VM 'v1'; "
                                            "install the 'fio' package"):
        bench.run_fio(Caller(name="t", via="api"), FakeHost(), "v1", FioParams(),  # type: ignore[arg-type]
                      db=store)
    assert bench.history(Caller(name="t", via="api"), "v1", db=store) == []


def test_a_failing_tool_is_one_guest_command_error(monkeypatch: pytest.MonkeyPatch,
                                                   store: Store) -> None:
    _with(monkeypatch, FakeChannel(1, "fio: failed to open /dev/vdz\n"))
    with pytest.raises(GuestCommandError, match=r"fio failed in VM 'v1' \(exit 1\): fio: "
                                                "failed to open /dev/vdz"):
        bench.run_fio(Caller(name="t", via="api"), FakeHost(), "v1",  # type: ignore[arg-type]
                      FioParams(target="/dev/vdz"), db=store)


def test_a_cancelled_or_overdue_run_is_killed_in_the_guest(
        monkeypatch: pytest.MonkeyPatch, store: Store) -> None:
    channel = FakeChannel(0, polls=None)
    _with(monkeypatch, channel)

    def cancel(done: float, total: float) -> None:
        raise CancelledError("job cancelled")

    with pytest.raises(CancelledError):
        bench.run_sysbench(Caller(name="t", via="api"), FakeHost(), "v1",  # type: ignore[arg-type]
                           SysbenchParams(), db=store, progress=cancel)
    assert channel.started[-1] == ["kill", "7"]

    channel = FakeChannel(0, polls=None)
    _with(monkeypatch, channel)
    monkeypatch.setattr(bench, "DEADLINE_MARGIN", -1.0)  # past due at the first look
    with pytest.raises(OperationTimeoutError, match="did not finish within 0s"):
        bench.run_sysbench(Caller(name="t", via="api"), FakeHost(), "v1",  # type: ignore[arg-type]
                           SysbenchParams(time=1), db=store)
    assert channel.started[-1] == ["kill", "7"]
