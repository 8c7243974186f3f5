"""Benchmarks in a VM's guest (a job; history and runs) and a disk's I/O limits."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Query, Response
from fastapi import Path as PathParam
from pydantic import Field

from kvmops.api.deps import (
    Ctx,
    HostDep,
    HostName,
    HostUri,
    OperatorCaller,
    ViewerCaller,
    VmNameDep,
)
from kvmops.api.routes.common import Body, JobAccepted, accepted
from kvmops.api.runner import JobContext
from kvmops.errors import NotFoundError
from kvmops.services import bench as bench_service
from kvmops.services import iotune as iotune_service
from kvmops.services.bench import HistoryEntry, StoredRun
from kvmops.services.iotune import IoTuneResult
from kvmops.services.session import open_connection

router = APIRouter(prefix="/vms/{name}", tags=["bench"])
_TARGET = r"^(vd|sd|hd)[a-z]{1,2}$"
_LIMIT = Field(default=None, ge=0, le=2**53)


class IoTuneBody(Body):
    """Limits to change (absent: kept; 0: removed); bytes per second for ``*_bytes_sec``."""

    total_iops: int | None = _LIMIT
    read_iops: int | None = _LIMIT
    write_iops: int | None = _LIMIT
    total_bytes_sec: int | None = _LIMIT
    read_bytes_sec: int | None = _LIMIT
    write_bytes_sec: int | None = _LIMIT
    config_only: bool = False


class BenchBody(Body):
    """One run: ``kind`` fio (rw, bs, iodepth, size, runtime, target, ioengine, direct,
    overwrite) or sysbench (test, time, threads, size); sizes in bytes."""

    kind: Literal["fio", "sysbench"]
    rw: Literal["randread", "randwrite", "read", "write", "randrw"] = "randread"
    bs: int = Field(default=4096, ge=512, le=64 * 1024 * 1024)
    iodepth: int = Field(default=16, ge=1, le=1024)
    size: int = Field(default=64 * 1024 * 1024, ge=1024 * 1024, le=1 << 40)
    runtime: int = Field(default=20, ge=1, le=3600)
    target: str | None = Field(default=None, max_length=256, pattern=r"^/[^\x00\n:]*$")
    ioengine: Literal["libaio", "psync"] = "libaio"
    direct: bool | None = None
    overwrite: bool = False
    test: Literal["cpu", "memory", "fileio"] = "cpu"
    time: int = Field(default=10, ge=1, le=3600)
    threads: int = Field(default=1, ge=1, le=1024)


@router.get("/disks/{target}/iotune", response_model=IoTuneResult, tags=["disks"])
def get_iotune(caller: ViewerCaller, name: VmNameDep, host: HostDep,
               target: str = PathParam(pattern=_TARGET), inactive: bool = Query(False)
               ) -> IoTuneResult:
    return iotune_service.get_iotune(caller, host, name, target, inactive=inactive)


@router.put("/disks/{target}/iotune", response_model=IoTuneResult, tags=["disks"])
def set_iotune(caller: OperatorCaller, name: VmNameDep, host: HostDep, body: IoTuneBody,
               target: str = PathParam(pattern=_TARGET)) -> IoTuneResult:
    changes = body.model_dump(exclude={"config_only"})
    return iotune_service.set_iotune(caller, host, name, target, changes,
                                     config_only=body.config_only)


@router.post("/bench", status_code=202, response_model=JobAccepted)
def start_bench(caller: OperatorCaller, name: VmNameDep, body: BenchBody, ctx: Ctx,
                uri: HostUri, host_name: HostName, response: Response) -> JobAccepted:
    if body.kind == "fio":
        fio = bench_service.FioParams(
            rw=body.rw, bs=body.bs, iodepth=body.iodepth, size=body.size,
            runtime=body.runtime, target=body.target, ioengine=body.ioengine,
            direct=body.direct, overwrite=body.overwrite).checked()
    else:
        sysbench = bench_service.SysbenchParams(test=body.test, time=body.time,
                                                threads=body.threads, size=body.size).checked()
    store = ctx.store

    def run(job: JobContext) -> StoredRun:
        def progress(elapsed: float, expected: float) -> None:
            job.percent(100.0 * elapsed / expected if expected else 0.0,
                        f"{body.kind} running: {elapsed:.0f}/{expected:.0f} s")

        with open_connection(uri) as host:
            if body.kind == "fio":
                return bench_service.run_fio(caller, host, name, fio, uri=uri,
                                             host_name=host_name or "local",
                                             progress=progress, db=store)
            return bench_service.run_sysbench(caller, host, name, sysbench, uri=uri,
                                              host_name=host_name or "local",
                                              progress=progress, db=store)

    return accepted(ctx.runner.submit(f"bench.{body.kind}", name, caller.name, run), response)


@router.get("/bench", response_model=list[HistoryEntry])
def bench_history(caller: ViewerCaller, name: VmNameDep, ctx: Ctx,
                  kind: Literal["fio", "sysbench"] | None = Query(None)
                  ) -> list[HistoryEntry]:
    return bench_service.history(caller, name, kind=kind, db=ctx.store)


@router.get("/bench/{run_id}", response_model=StoredRun)
def bench_run(caller: ViewerCaller, name: VmNameDep, ctx: Ctx, run_id: int) -> StoredRun:
    run = bench_service.get_run(caller, run_id, db=ctx.store)
    if run.vm != name:
        raise NotFoundError(f"benchmark run {run_id} is not of VM '{name}'")
    return run
