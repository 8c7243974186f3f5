"""guest bench: command lines, parameter checks, the store and the history's comparison."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from kvmops.errors import NotFoundError, ValidationError
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
    with pytest.raises(NotFoundError, match="benchmark run 999 not found"):
        bench.get_run(caller, 999, db=store)
    with pytest.raises(ValidationError, match="unknown benchmark kind"):
        bench.history(caller, "v1", kind="iperf", db=store)
    store.close()
