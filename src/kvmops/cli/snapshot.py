"""``kvmops snapshot``: internal and external VM snapshots."""

from __future__ import annotations

import typer

from kvmops.cli.common import HostOption, JsonOption, UriOption, connect, on_host
from kvmops.cli.output import info, print_fields, print_json, print_table, warn
from kvmops.services import snapshots as service
from kvmops.services.caller import Caller

app = typer.Typer(help="VM snapshots: internal (with memory) and external (disk-only).",
                  no_args_is_help=True)


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="snapshot")


@app.command("create")
def create_cmd(
    vm: str = typer.Argument(..., help="VM name."),
    name: str = typer.Argument(..., help="Snapshot name."),
    memory: bool = typer.Option(False, "--memory",
                                help="Include the memory (internal; default for a running "
                                     "VM with qcow2 disks)."),
    disk_only: bool = typer.Option(False, "--disk-only",
                                   help="External disk-only snapshot: new overlays next to "
                                        "the disk images."),
    quiesce: bool = typer.Option(False, "--quiesce",
                                 help="Freeze the guest's file systems through the agent "
                                      "(disk-only)."),
    description: str | None = typer.Option(None, "--description", help="Free text."),
    json_out: bool = JsonOption,
    uri: str | None = UriOption,
    host_name: str | None = HostOption,
) -> None:
    """Take a snapshot of a VM."""
    uri = on_host(uri, host_name)
    request = service.CreateRequest(vm=vm, name=name, memory=memory, disk_only=disk_only,
                                    quiesce=quiesce, description=description)
    with connect(uri) as host:
        snap = service.create(Caller.local(), host, vm, request, note=warn)
    if json_out:
        print_json(snap)
        return
    what = f"{snap.kind.value}, {'with memory' if snap.memory else 'disk-only'}"
    info(f"snapshot '{snap.name}' of VM '{vm}' created ({what})")
    for disk in snap.disks:
        if disk.overlay:
            info(f"  {disk.target}: now writes to {disk.overlay}")


@app.command("list")
def list_cmd(
    vm: str = typer.Argument(..., help="VM name."),
    as_tree: bool = typer.Option(False, "--tree", help="Show parents and children."),
    json_out: bool = JsonOption,
    uri: str | None = UriOption,
    host_name: str | None = HostOption,
) -> None:
    """Snapshots of a VM, oldest first."""
    uri = on_host(uri, host_name)
    with connect(uri) as host:
        snaps = service.list_snapshots(Caller.local(), host, vm)
    if json_out:
        print_json(snaps)
        return
    if as_tree:
        for depth, snap in service.tree(snaps):
            mark = " *" if snap.current else ""
            info(f"{'  ' * depth}{snap.name} ({snap.kind.value}"
                 f"{', memory' if snap.memory else ''}){mark}")
        return
    print_table(
        ["Name", "Kind", "Memory", "State", "Created", "Parent", "Current", "Description"],
        [(s.name, s.kind.value, "yes" if s.memory else "no", s.state,
          s.created.strftime("%Y-%m-%d %H:%M:%S"), s.parent or "-",
          "*" if s.current else "", s.description or "") for s in snaps])


@app.command("info")
def info_cmd(
    vm: str = typer.Argument(..., help="VM name."),
    name: str = typer.Argument(..., help="Snapshot name."),
    json_out: bool = JsonOption,
    uri: str | None = UriOption,
    host_name: str | None = HostOption,
) -> None:
    """Details of one snapshot."""
    uri = on_host(uri, host_name)
    with connect(uri) as host:
        snap = service.info(Caller.local(), host, vm, name)
    if json_out:
        print_json(snap)
        return
    fields: list[tuple[str, object]] = [
        ("Name", snap.name), ("VM", snap.vm), ("Kind", snap.kind.value),
        ("Memory", "yes" if snap.memory else "no"), ("State", snap.state),
        ("Created", snap.created.isoformat()), ("Description", snap.description),
        ("Parent", snap.parent), ("Children", ", ".join(snap.children) or None),
        ("Current", "yes" if snap.current else "no"),
    ]
    for disk in snap.disks:
        text = disk.snapshot
        if disk.overlay:
            text += f", image {disk.image}, overlay {disk.overlay}"
        fields.append((f"Disk {disk.target}", text))
    print_fields(fields)


@app.command("revert")
def revert_cmd(
    vm: str = typer.Argument(..., help="VM name."),
    name: str = typer.Argument(..., help="Snapshot name."),
    running: bool = typer.Option(False, "--running", help="Run the VM after the revert."),
    paused: bool = typer.Option(False, "--paused", help="Leave the VM paused after it."),
    force: bool = typer.Option(False, "--force",
                               help="Allow losing a running VM's state (disk-only "
                                    "snapshot)."),
    json_out: bool = JsonOption,
    uri: str | None = UriOption,
    host_name: str | None = HostOption,
) -> None:
    """Return a VM to a snapshot (ends its backup chain: the next backup is a full)."""
    uri = on_host(uri, host_name)
    with connect(uri) as host:
        result = service.revert(Caller.local(), host, vm, name, running=running,
                                paused=paused, force=force, note=warn)
    if json_out:
        print_json(result)
        return
    info(f"VM '{vm}' reverted to snapshot '{name}'; it is {result.state}")
    for path in result.kept_overlays:
        info(f"  kept {path} (the abandoned state)")


@app.command("delete")
def delete_cmd(
    vm: str = typer.Argument(..., help="VM name."),
    name: str = typer.Argument(..., help="Snapshot name."),
    children: bool = typer.Option(False, "--children", help="Delete its children too."),
    json_out: bool = JsonOption,
    uri: str | None = UriOption,
    host_name: str | None = HostOption,
) -> None:
    """Delete a snapshot (an external one is merged into its image by a block commit)."""
    uri = on_host(uri, host_name)
    with connect(uri) as host:
        result = service.delete(Caller.local(), host, vm, name, children=children,
                                note=warn)
    if json_out:
        print_json(result)
        return
    info(f"deleted snapshot(s) {', '.join(result.deleted)} of VM '{vm}'")
    for path in result.removed_files:
        info(f"  merged and removed {path}")
