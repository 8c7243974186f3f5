"""``kvmops host``: facts about this host."""

from __future__ import annotations

import typer

from kvmops.cli.common import JsonOption, UriOption, connect
from kvmops.cli.output import print_fields, print_json
from kvmops.host.info import host_info
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
        data = host_info(host, refresh_probe=reprobe)
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
