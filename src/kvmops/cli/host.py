"""``kvmops host``: facts about this host."""

from __future__ import annotations

import typer

from kvmops.cli.common import JsonOption, UriOption, connect
from kvmops.cli.output import info, print_fields, print_json, print_table
from kvmops.errors import KvmopsError
from kvmops.services import host as host_service
from kvmops.services.caller import Caller
from kvmops.services.host import Status
from kvmops.sizes import format_size

app = typer.Typer(help="Facts about this host.", no_args_is_help=True)


@app.command("info")
def info_cmd(
    json_out: bool = JsonOption,
    reprobe: bool = typer.Option(False, "--reprobe", help="Probe the accelerator again."),
    uri: str | None = UriOption,
) -> None:
    """Host name, versions, the accelerator kvmops uses, and where images go."""
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
def doctor_cmd(json_out: bool = JsonOption, uri: str | None = UriOption) -> None:
    """Check that this host can run, back up and snapshot VMs; exit 1 if a check fails."""
    report = host_service.doctor(Caller.local(), uri=uri)
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
