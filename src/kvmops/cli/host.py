"""``kvmops host``: facts about this host, and the hosts kvmops manages
(``host add/list/info NAME/remove``; the local host is always there as ``local``)."""

from __future__ import annotations

import typer

from kvmops.cli.common import HostOption, JsonOption, UriOption, connect, on_host
from kvmops.cli.output import info, print_fields, print_json, print_table
from kvmops.errors import KvmopsError
from kvmops.services import host as host_service
from kvmops.services import hosts as hosts_service
from kvmops.services.caller import Caller
from kvmops.services.host import Status
from kvmops.sizes import format_size

app = typer.Typer(help="Facts about this host; the hosts kvmops manages.",
                  no_args_is_help=True)


@app.command("info")
def info_cmd(
    name: str | None = typer.Argument(None, help="A host added with 'host add' (or "
                                      "'local'): its health. Without it: this host."),
    json_out: bool = JsonOption,
    reprobe: bool = typer.Option(False, "--reprobe", help="Probe the accelerator again."),
    uri: str | None = UriOption,
) -> None:
    """Host name, versions, the accelerator kvmops uses, and where images go; with
    NAME, that host's health (reachable, versions, accelerator, CPU, memory, pools, VMs)."""
    if name is not None:
        _host_health(name, json_out)
        return
    with connect(uri) as host:
        data = host_service.info(Caller.local(), host, reprobe=reprobe)
    if json_out:
        print_json(data)
        return
    print_fields([
        ("Host", data.hostname), ("URI", data.uri), ("libvirt", data.libvirt_version),
        ("QEMU", data.qemu_version),
        ("Accelerator", f"{data.accelerator} ({data.accelerator_reason})"),
        ("/dev/kvm", "present" if data.kvm_device else "absent"),
        ("CPUs", data.cpus), ("Memory", format_size(data.memory)),
        ("Images directory", data.images_dir), ("State directory", data.state_dir),
        ("VMs", f"{data.vms_defined} defined, {data.vms_running} running"),
    ])


_MARKS = {Status.OK: "ok", Status.WARN: "warn", Status.FAIL: "FAIL"}


@app.command("doctor")
def doctor_cmd(
    json_out: bool = JsonOption,
    uri: str | None = UriOption,
    host: str | None = HostOption,
    no_probe: bool = typer.Option(False, "--no-probe",
                                  help="Start no probe guests (they take 10-40 s); show "
                                       "their last results."),
) -> None:
    """Check that this host can run, back up and snapshot VMs; exit 1 if a check fails.
    With --host NAME (another host): its libvirt-side checks. The report is kept as the
    host's last (the web UI's host page, GET /api/v1/hosts/NAME/doctor)."""
    if host is not None:
        on_host(uri, host)  # --host with --connect is a usage error
        report = host_service.doctor_of(Caller.local(), host, probes=not no_probe)
    else:
        report = host_service.doctor(Caller.local(), uri=uri, probes=not no_probe)
    if json_out:
        print_json(report)
    else:
        rows = [[_MARKS[c.status], c.name,
                 c.detail + (f"\n→ {c.hint}" if c.hint else "")]
                for c in report.checks]
        print_table(["", "Check", "Detail"], rows)
        info(f"{len(report.checks)} checks: {report.failed} failed, "
             f"{report.warnings} warning(s)")
    if not report.ok:
        failed = [c.name for c in report.checks if c.status is Status.FAIL]
        raise KvmopsError(f"host check(s) failed: {', '.join(failed)}",
                          hint="see 'kvmops host doctor' for what to do")


def _dash(value: object) -> str:
    return "-" if value is None or value == "" else str(value)


def _when(value: object) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S UTC") if hasattr(value, "strftime") else "-"


def _size(value: int | None) -> str:
    return "-" if value is None else format_size(value)


def _host_health(name: str, json_out: bool) -> None:
    data = hosts_service.host_info(Caller.local(), name)
    if json_out:
        print_json(data)
        return
    print_fields([
        ("Name", data.name), ("URI", data.uri),
        ("Reachable", "yes" if data.reachable else f"no ({data.error})"),
        ("Host", _dash(data.hostname)), ("libvirt", _dash(data.libvirt_version)),
        ("QEMU", _dash(data.qemu_version)), ("Accelerator", _dash(data.accelerator)),
        ("CPU model", _dash(data.cpu_model)), ("CPUs", _dash(data.cpus)),
        ("Memory", _size(data.memory_total)), ("Memory free", _size(data.memory_free)),
        ("Pool space", f"{_size(data.pool_available)} free of {_size(data.pool_capacity)} "
                       f"({data.pools_active} active pools)" if data.reachable else "-"),
        ("VMs", f"{data.vms_defined} defined, {data.vms_running} running"
         if data.reachable else "-"),
        ("Added", f"{_when(data.added_at)} by {_dash(data.added_by)}"
         if not data.local else "- (the local host)"),
        ("Last seen", _when(data.last_seen)),
    ])


def _labels(values: list[str]) -> dict[str, str]:
    found = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep:
            raise KvmopsError(f"invalid label {item!r}", hint="use --label KEY=VALUE")
        found[key] = value
    return found


@app.command("add")
def add_cmd(
    name: str = typer.Argument(..., help="A name for the host ('local' is this one)."),
    uri: str = typer.Argument(..., help="Its libvirt URI: qemu+ssh://[USER@]HOST/system"
                              "[?keyfile=/PATH], qemu+tls://HOST/system, "
                              "qemu+tcp://HOST/system."),
    no_check: bool = typer.Option(False, "--no-check",
                                  help="Do not connect to it first (a host being set up)."),
    label: list[str] = typer.Option([], "--label", help="KEY=VALUE (repeatable)."),
    json_out: bool = JsonOption,
) -> None:
    """Add a libvirt host kvmops manages (connected to once first, unless --no-check)."""
    entry = hosts_service.add_host(Caller.local(), name, uri, check=not no_check,
                                   labels=_labels(label))
    if json_out:
        print_json(entry)
        return
    if entry.reachable:
        info(f"host '{entry.name}' added: {entry.hostname}, libvirt {entry.libvirt_version}, "
             f"{entry.vms_defined} VMs ({entry.vms_running} running)")
    else:
        info(f"host '{entry.name}' added without a check")


@app.command("list")
def list_cmd(
    json_out: bool = JsonOption,
    timeout: float = typer.Option(hosts_service.DEFAULT_DEADLINE_S, "--timeout", min=0.1,
                                  max=120, help="Seconds to wait for each host (all are "
                                  "asked at once)."),
) -> None:
    """Every host with whether it answers, versions and VM counts (asked in parallel;
    one that does not answer in time is shown unreachable)."""
    found = hosts_service.list_hosts(Caller.local(), deadline=timeout)
    if json_out:
        print_json(found)
        return
    print_table(["Name", "URI", "Reachable", "libvirt", "QEMU", "VMs", "Running", "Error"],
                [(h.name, h.uri, "yes" if h.reachable else "no", _dash(h.libvirt_version),
                  _dash(h.qemu_version), _dash(h.vms_defined), _dash(h.vms_running),
                  _dash(h.error)) for h in found])


@app.command("remove")
def remove_cmd(name: str = typer.Argument(..., help="The host to forget.")) -> None:
    """Forget a host (its daemon and VMs are not touched; 'local' cannot be removed)."""
    hosts_service.remove_host(Caller.local(), name)
    info(f"host '{name}' removed")


@app.command("evacuate")
def evacuate_cmd(
    name: str = typer.Argument(..., help="The host to empty of running VMs."),
    parallel: int = typer.Option(2, "--parallel", min=1, max=16,
                                 help="Migrations at once."),
    dry_run: bool = typer.Option(False, "--dry-run",
                                 help="Show the plan (VM -> host, why; blockers) only."),
    copy_storage: bool = typer.Option(False, "--copy-storage",
                                      help="Copy the VMs' local disks to their targets."),
    bandwidth: int | None = typer.Option(None, "--bandwidth", min=1, max=1_000_000,
                                         help="MiB/s cap for each migration."),
    auto_converge: bool = typer.Option(False, "--auto-converge",
                                       help="Throttle a guest's vCPUs when its memory "
                                            "stays dirty."),
    json_out: bool = JsonOption,
) -> None:
    """Migrate every running VM of host NAME to the other hosts, placed by room (memory,
    vCPUs, networks, pool space); the plan is shown first. Exits non-zero when a VM
    could not move (the others still do)."""
    from kvmops.services import evacuate as evacuate_service

    def show_plan(plan: evacuate_service.EvacuationReport) -> None:
        if json_out:
            return
        for line in plan.notes:
            info(line)
        for other, why in plan.unreachable.items():
            info(f"host {other}: unreachable ({why})")
        for item in plan.vms:
            info(f"plan: {item.line()}")
            if item.target is None or item.status == "blocked":
                for line in item.hosts:
                    info(f"  {line}")
        if plan.staying:
            info(f"not running, staying on {plan.host}: {', '.join(plan.staying)}")

    report = evacuate_service.evacuate(
        Caller.local(), name, parallel=parallel, dry_run=dry_run,
        copy_storage=copy_storage, bandwidth_mib=bandwidth, auto_converge=auto_converge,
        on_plan=show_plan,
        note=None if json_out else lambda line: info(f"  {line}"))
    if json_out:
        print_json(report)
    counts = ", ".join(f"{n} {status}" for status, n in sorted(report.counts().items()))
    if not json_out:
        info(f"{'plan' if report.dry_run else 'evacuation'} of host '{name}': "
             f"{counts or 'nothing to move'}")
    if not report.dry_run and not report.ok:
        stuck = [item.vm for item in report.vms if item.status != "moved"]
        raise KvmopsError(f"{len(stuck)} of {len(report.vms)} VMs did not leave host "
                          f"'{name}': {', '.join(stuck)}",
                          hint="see each VM's line above for why; fix it and run "
                               "'kvmops host evacuate' again")
