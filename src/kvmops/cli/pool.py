"""``kvmops pool``: libvirt storage pools (dir, fs, iscsi-direct; netfs, logical, rbd)."""

from __future__ import annotations

import typer

from kvmops.cli.common import HostOption, JsonOption, UriOption, connect, on_host
from kvmops.cli.output import info, print_fields, print_json, print_table
from kvmops.services import pools as service
from kvmops.services.caller import Caller
from kvmops.sizes import format_size

app = typer.Typer(help="Storage pools: dir, fs, iscsi-direct, netfs, logical, rbd.",
                  no_args_is_help=True)

NameArg = typer.Argument(..., help="Pool name.")
#: pool create's --host has named the storage server (iscsi-direct, netfs) since before
#: hosts were added, so the host the pool is created on is --on-host there.
PoolHostOption = typer.Option(None, "--on-host", metavar="NAME",
                              help="Create the pool on this host of 'kvmops host list' "
                                   "(default: the local host; --host elsewhere); not with "
                                   "--connect. Paths are checked on the machine running "
                                   "kvmops.")


def _yes(value: bool) -> str:
    return "yes" if value else "no"


def _size(value: int | None) -> str:
    return format_size(value) if value is not None else "-"


@app.command("create")
def create_cmd(
    name: str = NameArg,
    pool_type: str = typer.Option(..., "--type",
                                  help="dir, fs, iscsi-direct (tested here); netfs, "
                                       "logical, rbd (libvirt's XML, untested here)."),
    target: str | None = typer.Option(None, "--target",
                                      help="dir/fs/netfs: the pool's directory (inside an "
                                           "allowed image directory); logical: /dev/VG."),
    device: list[str] = typer.Option([], "--device",
                                     help="fs: the block device (e.g. a loop device); "
                                          "logical: a physical volume (repeatable)."),
    fs_format: str | None = typer.Option(None, "--fs-format",
                                         help="fs: ext4 (default), ext3, ext2, xfs."),
    host: str | None = typer.Option(None, "--host",
                                    help="iscsi-direct/netfs: the server; rbd: a Ceph "
                                         "monitor."),
    port: int | None = typer.Option(None, "--port", help="The server's port."),
    target_iqn: str | None = typer.Option(None, "--target-iqn",
                                          help="iscsi-direct: the target's IQN."),
    initiator_iqn: str | None = typer.Option(None, "--initiator-iqn",
                                             help="iscsi-direct: the IQN libvirt and QEMU "
                                                  "log in as."),
    source_dir: str | None = typer.Option(None, "--source-dir",
                                          help="netfs: the export's path."),
    netfs_format: str | None = typer.Option(None, "--netfs-format",
                                            help="netfs: nfs (default), cifs, glusterfs."),
    source_name: str | None = typer.Option(None, "--source-name",
                                           help="logical: the volume group; rbd: the Ceph "
                                                "pool."),
    auth_user: str | None = typer.Option(None, "--auth-user", help="rbd: cephx user."),
    secret_uuid: str | None = typer.Option(None, "--secret-uuid",
                                           help="rbd: the libvirt secret with its key."),
    build: bool = typer.Option(False, "--build",
                               help="dir: create the directory; fs: make the file system "
                                    "on a device that has none (never over data)."),
    autostart: bool = typer.Option(False, "--autostart",
                                   help="Start the pool when libvirtd starts."),
    no_start: bool = typer.Option(False, "--no-start", help="Only define the pool."),
    json_out: bool = JsonOption,
    uri: str | None = UriOption,
    host_name: str | None = PoolHostOption,
) -> None:
    """Create (define, optionally build, and start) a storage pool."""
    uri = on_host(uri, host_name, option="--on-host")
    one = len(device) == 1 and pool_type != "logical"
    spec = service.PoolSpec(
        name=name, type=pool_type, target=target, device=device[0] if one else None,
        devices=() if one else tuple(device), fs_format=fs_format,
        host=host, port=port, target_iqn=target_iqn, initiator_iqn=initiator_iqn,
        source_dir=source_dir, netfs_format=netfs_format, source_name=source_name,
        auth_user=auth_user, secret_uuid=secret_uuid, autostart=autostart)
    with connect(uri) as conn:
        pool = service.create(Caller.local(), conn, spec, build=build, start=not no_start)
    if json_out:
        print_json(pool)
        return
    state = "active" if pool.active else "defined, not started"
    info(f"storage pool '{pool.name}' created ({pool.type}, {state})")


@app.command("list")
def list_cmd(json_out: bool = JsonOption, uri: str | None = UriOption,
             host_name: str | None = HostOption) -> None:
    """Every storage pool, active or not."""
    uri = on_host(uri, host_name)
    with connect(uri) as conn:
        pools = service.list_pools(Caller.local(), conn)
    if json_out:
        print_json(pools)
        return
    print_table(["Name", "Type", "State", "Autostart", "Capacity", "Available", "Target"],
                [(p.name, p.type, "active" if p.active else "inactive", _yes(p.autostart),
                  _size(p.capacity), _size(p.available),
                  p.target or p.target_iqn or p.source_name or "-") for p in pools])


@app.command("info")
def info_cmd(name: str = NameArg, json_out: bool = JsonOption,
             uri: str | None = UriOption,
             host_name: str | None = HostOption) -> None:
    """One pool: type, source, target, sizes, volume count."""
    uri = on_host(uri, host_name)
    with connect(uri) as conn:
        pool = service.info(Caller.local(), conn, name)
    if json_out:
        print_json(pool)
        return
    print_fields([
        ("Name", pool.name), ("UUID", pool.uuid), ("Type", pool.type),
        ("State", "active" if pool.active else "inactive"),
        ("Persistent", _yes(pool.persistent)), ("Autostart", _yes(pool.autostart)),
        ("Target", pool.target), ("Device", pool.device), ("Host", pool.host),
        ("Port", pool.port), ("Target IQN", pool.target_iqn),
        ("Initiator IQN", pool.initiator_iqn), ("Source dir", pool.source_dir),
        ("Source name", pool.source_name), ("Capacity", _size(pool.capacity)),
        ("Allocation", _size(pool.allocation)), ("Available", _size(pool.available)),
        ("Volumes", pool.volumes if pool.volumes is not None else "-"),
        ("Tested here", _yes(pool.tested_here)),
    ])


@app.command("refresh")
def refresh_cmd(name: str = NameArg, uri: str | None = UriOption,
                host_name: str | None = HostOption) -> None:
    """Read the pool's volumes again (files or LUNs added outside libvirt)."""
    uri = on_host(uri, host_name)
    with connect(uri) as conn:
        pool = service.refresh(Caller.local(), conn, name)
    info(f"storage pool '{name}' refreshed ({pool.volumes} volume(s))")


@app.command("start")
def start_cmd(name: str = NameArg, uri: str | None = UriOption,
              host_name: str | None = HostOption) -> None:
    """Start a defined pool (an fs pool mounts its device; iscsi-direct logs in)."""
    uri = on_host(uri, host_name)
    with connect(uri) as conn:
        service.start(Caller.local(), conn, name)
    info(f"storage pool '{name}' started")


@app.command("stop")
def stop_cmd(name: str = NameArg, uri: str | None = UriOption,
             host_name: str | None = HostOption) -> None:
    """Stop a pool (refused while a VM uses its volumes)."""
    uri = on_host(uri, host_name)
    with connect(uri) as conn:
        service.stop(Caller.local(), conn, name)
    info(f"storage pool '{name}' stopped")


@app.command("delete")
def delete_cmd(name: str = NameArg, uri: str | None = UriOption,
               host_name: str | None = HostOption) -> None:
    """Stop and remove a pool's definition (its data stays; refused while VMs use it)."""
    uri = on_host(uri, host_name)
    with connect(uri) as conn:
        service.delete(Caller.local(), conn, name)
    info(f"storage pool '{name}' deleted (its data was left in place)")


@app.command("autostart")
def autostart_cmd(
    name: str = NameArg,
    disable: bool = typer.Option(False, "--disable", help="Do not start it with libvirtd."),
    uri: str | None = UriOption,
    host_name: str | None = HostOption,
) -> None:
    """Start a pool when libvirtd starts (or, with --disable, no longer)."""
    uri = on_host(uri, host_name)
    with connect(uri) as conn:
        service.set_autostart(Caller.local(), conn, name, not disable)
    info(f"storage pool '{name}' autostart {'disabled' if disable else 'enabled'}")
