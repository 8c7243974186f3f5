"""``kvmops guest bench``: fio and sysbench inside a VM's guest, their stored history."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import typer

from kvmops.cli.common import HostOption, JsonOption, UriOption, connect, on_host
from kvmops.cli.output import info, percent_progress, print_fields, print_json, print_table
from kvmops.services.caller import Caller
from kvmops.sizes import format_size

if TYPE_CHECKING:
    from rich.progress import Progress, TaskID

    from kvmops.services.bench import HistoryEntry, StoredRun

app = typer.Typer(help="Benchmarks inside a VM's guest (fio, sysbench) and their history.",
                  no_args_is_help=True)
VmArg = typer.Argument(..., help="VM name.")
DbOption = typer.Option(None, "--db", envvar="KVMOPS_DB", metavar="URL",
                        help="Database of the results (default: the server's).")


@contextmanager
def _progress(what: str) -> Iterator[Callable[[float, float], None]]:
    """A percent bar of the run's time that appears at the first report (a run refused
    before it starts prints only its one error line)."""
    bar: Progress | None = None
    task: TaskID | None = None

    def update(elapsed: float, expected: float) -> None:
        nonlocal bar, task
        if bar is None:
            bar = percent_progress(transient=True)
            bar.start()
            task = bar.add_task(what, total=100)
        assert task is not None
        bar.update(task, completed=100.0 * elapsed / expected if expected else 0,
                   description=f"{what} ({elapsed:.0f}/{expected:.0f} s)")

    try:
        yield update
    finally:
        if bar is not None:
            bar.stop()


def _host_name(host_name: str | None) -> str:
    return host_name or "local"


def _score(run: StoredRun) -> str:
    unit = "IOPS" if run.kind == "fio" else "events/s"
    return f"{run.score:,.1f} {unit}"


def _latency(run: StoredRun) -> str:
    m = run.metrics
    if run.kind == "fio":
        side = "read" if m.get("read_iops") else "write"
        p = [m.get(f"{side}_clat_{q}_us") for q in ("p50", "p95", "p99", "p99.9")]
        if p[0] is None:
            return "-"
        return "p50/p95/p99/p99.9 " + "/".join(f"{v:g}" for v in p if v is not None) + " µs"
    return (f"min/avg/max/p95 {m.get('latency_min_ms', 0):g}/{m.get('latency_avg_ms', 0):g}/"
            f"{m.get('latency_max_ms', 0):g}/{m.get('latency_p95_ms', 0):g} ms")


def _run_and_show(uri: str | None, what: str, json_out: bool,
                  start: Callable[[Any, Callable[[float, float], None]], StoredRun]) -> None:
    """``start(host, progress)`` on a connection to ``uri`` with a progress bar for
    ``what``; its stored run printed as JSON or as fields."""
    with connect(uri) as host, _progress(what) as progress:
        run = start(host, progress)
    if json_out:
        print_json(run)
        return
    _print_run(run)


def _print_run(run: StoredRun) -> None:
    m = run.metrics
    rows: list[tuple[str, object]] = [
        ("Run", run.id), ("VM", run.vm), ("Host", run.host),
        ("Started", run.started_at.isoformat(timespec="seconds")),
        ("Benchmark", f"{run.kind} {run.test}"),
        ("Parameters", " ".join(f"{k}={v}" for k, v in sorted(run.params.items()))),
        ("Score", _score(run)), ("Latency", _latency(run))]
    if run.kind == "fio":
        for side in ("read", "write"):
            if m.get(f"{side}_iops"):
                rows.append((side.capitalize(), f"{m[f'{side}_iops']:,.1f} IOPS, "
                             f"{format_size(int(m[f'{side}_bw_bytes']))}/s"))
    for key, label in (("mib_per_s", "MiB/s"), ("reads_per_s", "Reads/s"),
                       ("writes_per_s", "Writes/s"), ("read_mib_per_s", "Read MiB/s"),
                       ("written_mib_per_s", "Written MiB/s")):
        if key in m:
            rows.append((label, f"{m[key]:,.2f}"))
    cfg = run.config
    rows.append(("vCPUs / memory", f"{cfg.get('vcpus', '-')} / "
                 f"{format_size(int(cfg.get('memory_bytes') or 0))}"))
    for target, disk in sorted(cfg.get("disks", {}).items()):
        limits = " ".join(f"{k}={v}" for k, v in disk.get("iotune", {}).items() if v) or "none"
        rows.append((f"Disk {target}", f"cache={disk.get('cache')} io={disk.get('io')} "
                                       f"iotune {limits}"))
    print_fields(rows)


@app.command("fio")
def fio_cmd(vm: str = VmArg,
            rw: str = typer.Option("randread", "--rw",
                                   help="randread, randwrite, read, write or randrw."),
            bs: str = typer.Option("4k", "--bs", help="Block size."),
            iodepth: int = typer.Option(16, "--iodepth", help="I/Os in flight."),
            size: str = typer.Option("64M", "--size", help="Region (file size) to use."),
            runtime: int = typer.Option(20, "--runtime", help="Seconds to run."),
            target: str | None = typer.Option(
                None, "--target", metavar="/dev/vdX|FILE",
                help="A guest device or file (default: a temporary file, removed after)."),
            ioengine: str = typer.Option("libaio", "--ioengine", help="libaio or psync."),
            direct: bool | None = typer.Option(
                None, "--direct/--buffered",
                help="O_DIRECT (default: for a device only)."),
            overwrite: bool = typer.Option(False, "--overwrite",
                                           help="Allow writes to a device target (its data "
                                                "is destroyed)."),
            json_out: bool = JsonOption, db: str | None = DbOption,
            uri: str | None = UriOption, host_name: str | None = HostOption) -> None:
    """Run fio in the guest (through its agent), store and show the result."""
    uri = on_host(uri, host_name)
    from kvmops.services import bench

    params = bench.FioParams(rw=rw, bs=bench.parse_bytes(bs, "--bs"), iodepth=iodepth,
                             size=bench.parse_bytes(size, "--size"), runtime=runtime,
                             target=target, ioengine=ioengine, direct=direct,
                             overwrite=overwrite)
    _run_and_show(uri, f"fio {rw} in {vm}", json_out, lambda host, progress: bench.run_fio(
        Caller.local(), host, vm, params, uri=uri, host_name=_host_name(host_name),
        progress=progress, db=db))


@app.command("sysbench")
def sysbench_cmd(vm: str = VmArg,
                 test: str = typer.Argument(..., metavar="cpu|memory|fileio",
                                            help="The sysbench test."),
                 time_s: int = typer.Option(10, "--time", help="Seconds to run."),
                 threads: int = typer.Option(1, "--threads", help="Worker threads."),
                 size: str = typer.Option("64M", "--size",
                                          help="fileio: total size of its files."),
                 json_out: bool = JsonOption, db: str | None = DbOption,
                 uri: str | None = UriOption, host_name: str | None = HostOption) -> None:
    """Run a sysbench test in the guest (through its agent), store and show the result."""
    uri = on_host(uri, host_name)
    from kvmops.services import bench

    params = bench.SysbenchParams(test=test, time=time_s, threads=threads,
                                  size=bench.parse_bytes(size, "--size"))
    _run_and_show(uri, f"sysbench {test} in {vm}", json_out,
                  lambda host, progress: bench.run_sysbench(
                      Caller.local(), host, vm, params, uri=uri,
                      host_name=_host_name(host_name), progress=progress, db=db))


def _change(entry: HistoryEntry) -> str:
    if entry.change_percent is None:
        return "-" if entry.previous_id is None else "?"
    return f"{entry.change_percent:+.1f}% vs #{entry.previous_id}"


@app.command("history")
def history_cmd(vm: str = VmArg,
                kind: str | None = typer.Option(None, "--kind", help="fio or sysbench."),
                json_out: bool = JsonOption, db: str | None = DbOption) -> None:
    """A VM's runs, each compared with the previous one of the same kind and parameters."""
    from kvmops.services import bench

    entries = bench.history(Caller.local(), vm, kind=kind, db=db)
    if json_out:
        print_json(entries)
        return
    if not entries:
        info(f"no benchmark runs of VM '{vm}'"
             + (f" of kind {kind}" if kind else "")
             + f"; run one with 'kvmops guest bench fio {vm}'")
        return
    print_table(["ID", "Started", "Benchmark", "Score", "Change", "Config changed"],
                [(e.run.id, e.run.started_at.strftime("%Y-%m-%d %H:%M:%S"),
                  f"{e.run.kind} {e.run.test}", _score(e.run), _change(e),
                  "; ".join(e.config_changes) or "-") for e in entries])


@app.command("show")
def show_cmd(run_id: int = typer.Argument(..., metavar="ID", help="Run id (see history)."),
             json_out: bool = JsonOption, db: str | None = DbOption) -> None:
    """One stored run: parameters, every metric, the VM's configuration then."""
    from kvmops.services import bench

    run = bench.get_run(Caller.local(), run_id, db=db)
    if json_out:
        print_json(run)
        return
    _print_run(run)
