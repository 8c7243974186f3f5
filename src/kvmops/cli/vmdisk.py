"""``kvmops vm disk``: list, hot-plug and hot-unplug a VM's disks."""

from __future__ import annotations

from pathlib import Path

import typer

from kvmops.cli.common import (
    HostFilesOption,
    HostOption,
    JsonOption,
    UriOption,
    connect,
    from_cwd,
    on_host,
)
from kvmops.cli.output import info, print_json, print_table
from kvmops.errors import ValidationError
from kvmops.services.caller import Caller
from kvmops.sizes import format_size, parse_size

# The disk services (qemu-img, image chains) are imported inside the commands: this
# module loads with every ``kvmops vm`` command (kvmops.cli.main keeps start-up quick).

app = typer.Typer(help="List, attach (hot-plug) and detach a VM's disks.", no_args_is_help=True)

NameArg = typer.Argument(..., help="VM name.")
LiveOnly = typer.Option(False, "--live-only",
                        help="Only the running VM, not its persistent definition.")
ConfigOnly = typer.Option(False, "--config-only",
                          help="Only the persistent definition (takes effect at next start).")


def _scope(live_only: bool, config_only: bool) -> tuple[bool, bool]:
    if live_only and config_only:
        raise ValidationError("give either --live-only or --config-only, not both")
    return not config_only, not live_only


def _where(live: bool, config: bool) -> str:
    if live and config:
        return "running VM and definition"
    return "running VM only" if live else "definition only"


@app.command("list")
def list_cmd(name: str = NameArg,
             inactive: bool = typer.Option(False, "--inactive",
                                           help="The persistent definition, not the live VM."),
             json_out: bool = JsonOption, uri: str | None = UriOption,
             host_name: str | None = HostOption) -> None:
    """Disks with image, format, size and QEMU node/device names."""
    uri = on_host(uri, host_name)
    from kvmops.services import disks as disk_service

    with connect(uri) as host:
        found = disk_service.list_disks(Caller.local(), host, name, inactive=inactive)
    if json_out:
        print_json(found)
        return
    print_table(
        ["Target", "Bus", "Format", "Size", "Image", "Node", "Device"],
        [(d.target, d.bus, d.format, format_size(d.virtual_size) if d.virtual_size else "-",
          d.image or "-", d.node_name or "-", d.qdev or "-") for d in found])


@app.command("attach")
def attach_cmd(
    name: str = NameArg,
    image: Path | None = typer.Option(None, "--image", help="Existing image to attach.",
                                       callback=from_cwd),
    size: str | None = typer.Option(None, "--size", help="Create a new qcow2 of this size."),
    bus: str = typer.Option("virtio", "--bus", help="virtio, scsi, sata, usb or ide."),
    target: str | None = typer.Option(None, "--target", help="Guest name, e.g. vdb "
                                                             "(default: next free)."),
    fmt: str | None = typer.Option(
        None, "--format", help="Image format (raw or qcow2). An existing image: default the "
                               "format kvmops recorded, else raw (never guessed); a new one: "
                               "qcow2."),
    images_dir: Path | None = typer.Option(None, "--images-dir",
                                           help="Where a new image goes.", callback=from_cwd),
    readonly: bool = typer.Option(False, "--readonly",
                                  help="The guest cannot write it; running VMs may share "
                                       "an image they all read read-only."),
    live_only: bool = LiveOnly,
    config_only: bool = ConfigOnly,
    json_out: bool = JsonOption,
    uri: str | None = UriOption,
    host_name: str | None = HostFilesOption,
) -> None:
    """Attach a disk: hot-plugged into a running VM and kept in its definition."""
    uri = on_host(uri, host_name)
    from kvmops.services import disks as disk_service

    live, persistent = _scope(live_only, config_only)
    size_bytes = parse_size(size, what="disk size") if size is not None else None
    with connect(uri) as host:
        disk = disk_service.attach(Caller.local(), host, name, image=image, size=size_bytes,
                                   bus=bus, fmt=fmt, images_dir=images_dir, target=target,
                                   live=live, persistent=persistent, readonly=readonly)
    if json_out:
        print_json(disk)
        return
    size_text = format_size(disk.virtual_size) if disk.virtual_size else "?"
    info(f"disk {disk.target} ({disk.image}, {size_text} {disk.format}) attached to VM "
         f"'{name}'")


@app.command("detach")
def detach_cmd(
    name: str = NameArg,
    target: str = typer.Argument(..., help="Disk target, e.g. vdb."),
    remove_storage: bool = typer.Option(False, "--remove-storage",
                                        help="Also delete the image file."),
    timeout: float = typer.Option(30.0, "--timeout",
                                  help="Seconds to wait for the guest to release the disk."),
    live_only: bool = LiveOnly,
    config_only: bool = ConfigOnly,
    json_out: bool = JsonOption,
    uri: str | None = UriOption,
    host_name: str | None = HostOption,
) -> None:
    """Detach a disk (the guest must release it) and optionally delete its image."""
    uri = on_host(uri, host_name)
    from kvmops.services import disks as disk_service

    live, persistent = _scope(live_only, config_only)
    with connect(uri) as host:
        result = disk_service.detach(Caller.local(), host, name, target,
                                     remove_storage=remove_storage, timeout=timeout, live=live,
                                     persistent=persistent)
    if json_out:
        print_json(result)
        return
    info(f"disk {target} detached from VM '{name}' ({_where(result.live, result.config)})"
         + (f"; removed {result.image}" if result.removed_storage else ""))


def _limit_cell(key: str, value: int) -> str:
    if not value:
        return "-"
    return f"{format_size(value)}/s" if key.endswith("bytes_sec") else f"{value}/s"


@app.command("iotune")
def iotune_cmd(
    name: str = NameArg,
    target: str = typer.Argument(..., help="Disk target, e.g. vdb."),
    total_iops: int | None = typer.Option(None, "--total-iops", min=0,
                                          help="Read+write operations per second (0: none)."),
    read_iops: int | None = typer.Option(None, "--read-iops", min=0,
                                         help="Read operations per second (0: none)."),
    write_iops: int | None = typer.Option(None, "--write-iops", min=0,
                                          help="Write operations per second (0: none)."),
    total_bytes_sec: str | None = typer.Option(None, "--total-bytes-sec", metavar="SIZE",
                                               help="Read+write bytes per second, e.g. 50M "
                                                    "(0: none)."),
    read_bytes_sec: str | None = typer.Option(None, "--read-bytes-sec", metavar="SIZE",
                                              help="Read bytes per second (0: none)."),
    write_bytes_sec: str | None = typer.Option(None, "--write-bytes-sec", metavar="SIZE",
                                               help="Write bytes per second (0: none)."),
    config_only: bool = ConfigOnly,
    json_out: bool = JsonOption,
    uri: str | None = UriOption,
    host_name: str | None = HostOption,
) -> None:
    """Show a disk's I/O limits, or change them (live on a running VM and in its
    definition; 0 removes a limit; a total replaces read/write limits and back)."""
    uri = on_host(uri, host_name)
    from kvmops.services import iotune as iotune_service

    def rate(text: str | None, what: str) -> int | None:
        return None if text is None else parse_size(text, what=what)

    changes = {"total_iops": total_iops, "read_iops": read_iops, "write_iops": write_iops,
               "total_bytes_sec": rate(total_bytes_sec, "--total-bytes-sec"),
               "read_bytes_sec": rate(read_bytes_sec, "--read-bytes-sec"),
               "write_bytes_sec": rate(write_bytes_sec, "--write-bytes-sec")}
    with connect(uri) as host:
        if all(v is None for v in changes.values()):
            result = iotune_service.get_iotune(Caller.local(), host, name, target,
                                               inactive=config_only)
            changed = False
        else:
            result = iotune_service.set_iotune(Caller.local(), host, name, target, changes,
                                               config_only=config_only)
            changed = True
    if json_out:
        print_json(result)
        return
    if changed:
        info(f"I/O limits of disk {target} of VM '{name}' set "
             f"({_where(result.live, result.config)}): {result.limits.describe()}")
        return
    limits = result.limits.model_dump()
    print_table(["Limit", "Value"], [(key, _limit_cell(key, value))
                                     for key, value in limits.items()])
