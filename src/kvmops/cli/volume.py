"""``kvmops volume``: the volumes of a storage pool, and their data through libvirt
streams (upload, download with progress). Formats are always named, never probed."""

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
from kvmops.cli.output import LazyBar, info, print_fields, print_json, print_table
from kvmops.services import pools as service
from kvmops.services.caller import Caller
from kvmops.sizes import format_size, parse_size

app = typer.Typer(help="Volumes of storage pools: create, clone, resize, upload, download.",
                  no_args_is_help=True)

PoolArg = typer.Argument(..., help="Pool name.")
VolArg = typer.Argument(..., help="Volume name.")
FormatOption = typer.Option(..., "--format", help="raw or qcow2 (always named).")


@app.command("create")
def create_cmd(pool: str = PoolArg, name: str = VolArg,
               size: str = typer.Option(..., "--size", help="Capacity, e.g. 64M or 10G."),
               fmt: str = FormatOption, json_out: bool = JsonOption,
               uri: str | None = UriOption,
               host_name: str | None = HostOption) -> None:
    """Create a volume of the named format."""
    uri = on_host(uri, host_name)
    spec = service.VolumeSpec(name=name, capacity=parse_size(size, what="volume size"),
                              format=fmt)
    with connect(uri) as conn:
        vol = service.create_volume(Caller.local(), conn, pool, spec)
    if json_out:
        print_json(vol)
        return
    info(f"volume '{vol.name}' created in pool '{pool}' ({fmt}, "
         f"{format_size(vol.capacity)}, {vol.path})")


@app.command("list")
def list_cmd(pool: str = PoolArg, json_out: bool = JsonOption,
             uri: str | None = UriOption,
             host_name: str | None = HostOption) -> None:
    """The volumes of an active pool, with the VMs that use them."""
    uri = on_host(uri, host_name)
    with connect(uri) as conn:
        vols = service.list_volumes(Caller.local(), conn, pool)
    if json_out:
        print_json(vols)
        return
    print_table(["Name", "Format", "Capacity", "Allocation", "Used by", "Path"],
                [(v.name, v.format or "raw", format_size(v.capacity),
                  format_size(v.allocation), ", ".join(v.used_by) or "-", v.path or "-")
                 for v in vols])


@app.command("info")
def info_cmd(pool: str = PoolArg, name: str = VolArg, json_out: bool = JsonOption,
             uri: str | None = UriOption,
             host_name: str | None = HostOption) -> None:
    """One volume."""
    uri = on_host(uri, host_name)
    with connect(uri) as conn:
        vol = service.volume_info(Caller.local(), conn, pool, name)
    if json_out:
        print_json(vol)
        return
    print_fields([("Name", vol.name), ("Pool", vol.pool), ("Type", vol.type),
                  ("Format", vol.format or "raw"), ("Capacity", format_size(vol.capacity)),
                  ("Allocation", format_size(vol.allocation)), ("Path", vol.path),
                  ("Used by", ", ".join(vol.used_by) or "-")])


@app.command("clone")
def clone_cmd(pool: str = PoolArg, source: str = typer.Argument(..., help="Volume to copy."),
              name: str = typer.Argument(..., help="The new volume's name."),
              fmt: str | None = typer.Option(None, "--format",
                                             help="The copy's format (default: the "
                                                  "source's recorded one)."),
              json_out: bool = JsonOption, uri: str | None = UriOption,
              host_name: str | None = HostOption) -> None:
    """Copy a volume within its pool."""
    uri = on_host(uri, host_name)
    with connect(uri) as conn:
        vol = service.clone_volume(Caller.local(), conn, pool, source, name, fmt)
    if json_out:
        print_json(vol)
        return
    info(f"volume '{source}' cloned to '{vol.name}' in pool '{pool}'")


@app.command("resize")
def resize_cmd(pool: str = PoolArg, name: str = VolArg,
               size: str = typer.Argument(..., help="The new capacity, e.g. 128M."),
               shrink: bool = typer.Option(False, "--shrink",
                                           help="Allow a smaller size (data past it is "
                                                "lost)."),
               json_out: bool = JsonOption, uri: str | None = UriOption,
               host_name: str | None = HostOption) -> None:
    """Grow (or with --shrink, shrink) a volume."""
    uri = on_host(uri, host_name)
    capacity = parse_size(size, what="volume size")
    with connect(uri) as conn:
        vol = service.resize_volume(Caller.local(), conn, pool, name, capacity,
                                    shrink=shrink)
    if json_out:
        print_json(vol)
        return
    info(f"volume '{name}' of pool '{pool}' is now {format_size(vol.capacity)}")


@app.command("delete")
def delete_cmd(pool: str = PoolArg, name: str = VolArg, uri: str | None = UriOption,
               host_name: str | None = HostOption) -> None:
    """Delete a volume no VM uses (its data is gone)."""
    uri = on_host(uri, host_name)
    with connect(uri) as conn:
        service.delete_volume(Caller.local(), conn, pool, name)
    info(f"volume '{name}' deleted from pool '{pool}'")


@app.command("upload")
def upload_cmd(pool: str = PoolArg, name: str = VolArg,
               file: Path = typer.Argument(..., help="The file to write into the volume."),
               fmt: str = FormatOption, uri: str | None = UriOption,
               host_name: str | None = HostFilesOption) -> None:
    """Write a file of the named format into a volume of that format (libvirt stream)."""
    uri = on_host(uri, host_name)
    source = from_cwd(file)
    assert source is not None
    with connect(uri) as conn, LazyBar(f"upload {name}") as bar:
        vol = service.upload(Caller.local(), conn, pool, name, source, fmt,
                             progress=bar.update)
    info(f"{source} uploaded into volume '{vol.name}' of pool '{pool}'")


@app.command("download")
def download_cmd(pool: str = PoolArg, name: str = VolArg,
                 file: Path = typer.Argument(..., help="Where to write the volume's bytes."),
                 overwrite: bool = typer.Option(False, "--overwrite",
                                                help="Replace an existing file."),
                 uri: str | None = UriOption,
                 host_name: str | None = HostFilesOption) -> None:
    """Copy a volume's bytes into a file (libvirt stream; written whole, then renamed)."""
    uri = on_host(uri, host_name)
    dest = from_cwd(file)
    assert dest is not None
    with connect(uri) as conn, LazyBar(f"download {name}") as bar:
        got = service.download(Caller.local(), conn, pool, name, dest, overwrite=overwrite,
                               progress=bar.update)
    info(f"volume '{name}' of pool '{pool}' downloaded to {dest} ({format_size(got)})")
