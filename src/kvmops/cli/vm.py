"""``kvmops vm``: VM life cycle."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer

from kvmops.cli import quick, vmconfig, vmdisk, vmnic, vmtag
from kvmops.cli.common import (
    HostFilesOption,
    HostOption,
    JsonOption,
    UriOption,
    connect,
    from_cwd,
    on_host,
)
from kvmops.cli.output import (
    info,
    percent_progress,
    print_json,
    warn,
)
from kvmops.errors import StateError
from kvmops.services import vms
from kvmops.services.caller import Caller
from kvmops.services.vms import Accelerator
from kvmops.sizes import parse_memory

if TYPE_CHECKING:
    from kvmops.services.vms import DiskRequest

app = typer.Typer(help="Create, start, stop and inspect VMs.", no_args_is_help=True)

NameArg = typer.Argument(..., help="VM name.")


def _disk_from_cwd(disk: DiskRequest) -> DiskRequest:
    """``--disk path=FILE`` with a relative FILE names a file under the current directory."""
    return disk.model_copy(update={"path": from_cwd(disk.path)}) if disk.path else disk


@app.command("create")
def create_cmd(
    name: str = NameArg,
    memory: str = typer.Option("512M", "--memory", "-m",
                               help="Memory, e.g. 256M or 2G; a bare number is MiB."),
    vcpus: int = typer.Option(1, "--vcpus", help="Number of vCPUs."),
    sockets: int | None = typer.Option(None, help="CPU sockets (topology)."),
    cores: int | None = typer.Option(None, help="Cores per socket (topology)."),
    threads: int | None = typer.Option(None, help="Threads per core (topology)."),
    disk: list[str] = typer.Option(
        [], "--disk", help="size=64M (new qcow2) or path=FILE[,format=qcow2]; repeatable. "
                           "An existing image is read as the format named, else the one "
                           "kvmops recorded, else raw (never guessed). From a storage "
                           "pool: pool=NAME,size=64M[,format=raw] (a new volume) or "
                           "pool=NAME,volume=VOL."),
    kernel: Path | None = typer.Option(None, help="Kernel for direct kernel boot.",
                                          callback=from_cwd),
    initrd: Path | None = typer.Option(None, help="Initrd for direct kernel boot.",
                                          callback=from_cwd),
    cmdline: str | None = typer.Option(None, help="Kernel command line."),
    cdrom: Path | None = typer.Option(None, help="ISO image to attach as CD-ROM.",
                                         callback=from_cwd),
    network: str | None = typer.Option(None, help="libvirt network for a virtio NIC."),
    bridge: str | None = typer.Option(None, help="Host bridge for a virtio NIC."),
    mac: str | None = typer.Option(None, help="MAC address of the NIC."),
    nic: list[str] = typer.Option(
        [], "--nic", help="network=NAME or bridge=BR, then ,model=virtio|e1000|rtl8139, "
                          ",mac=52:54:00:.. and ,vlan=N (Open vSwitch); repeatable (after "
                          "the NIC of --network/--bridge)."),
    no_agent: bool = typer.Option(False, "--no-agent", help="Do not add a guest agent channel."),
    images_dir: Path | None = typer.Option(None, help="Where new disk images go.",
                                               callback=from_cwd),
    accel: Accelerator | None = typer.Option(None, "--accel", help="Force kvm or tcg."),
    start: bool = typer.Option(False, "--start", help="Start the VM once defined."),
    force: bool = typer.Option(False, "--force",
                               help="Create it although its memory is more than the host "
                                    "has or its new disks more than the free space."),
    json_out: bool = JsonOption,
    uri: str | None = UriOption,
    host_name: str | None = typer.Option(
        None, "--host", metavar="NAME|auto",
        help="Create it on this host of 'kvmops host list' (default: the local host); "
             "auto: on the host with the most room that has what the VM needs (memory, "
             "vCPUs, pool space, its networks), saying why. Not with --connect. File "
             "paths are on the machine running kvmops."),
) -> None:
    """Define a new VM (new disks are qcow2 with metadata preallocation)."""
    from kvmops.services import placement

    auto = host_name == placement.AUTO
    uri = on_host(uri, "local" if auto else host_name)  # auto: checked as a name is
    from kvmops.services.vms import CreateRequest, DiskRequest, NicSpec

    request = CreateRequest(
        name=name, memory=parse_memory(memory), vcpus=vcpus,
        sockets=sockets, cores=cores, threads=threads,
        disks=[_disk_from_cwd(DiskRequest.parse(d)) for d in disk], kernel=kernel,
        initrd=initrd,
        cmdline=cmdline, cdrom=cdrom, network=network, bridge=bridge, mac=mac,
        nics=[NicSpec.parse(n) for n in nic],
        agent=not no_agent, images_dir=images_dir, accelerator=accel, start=start, force=force,
    )
    placed = None
    if auto:
        placed, uri = placement.place_request(Caller.local(), request)
        if not json_out:
            info(f"placed on {placed.host}: {placed.reason}")
            for line in placed.lines():
                info(f"  {line}")
    with connect(uri) as host:
        result = vms.create(Caller.local(), host, request,
                            progress=None if json_out else info, note=warn)  # stdout: JSON
    if json_out:  # auto: where and why, as POST /api/v1/vms?host=auto answers
        print_json(result if placed is None else
                   {**vars(result), "host": placed.host, "placement": placed})
    else:
        info(f"VM '{name}' defined ({result.accelerator}, {result.state}); "
             f"disks: {', '.join(d.source or '-' for d in result.disks) or 'none'}")


@app.command("list")
def list_cmd(json_out: bool = JsonOption, uri: str | None = UriOption,
             host_name: str | None = typer.Option(
                 None, "--host", metavar="NAME",
                 help="List this host's VMs (a name of 'kvmops host list'; default: the "
                      "local host); 'all': every host's, with a HOST column, hosts not "
                      "answering in time named on stderr.")) -> None:
    """All defined VMs with state, vCPUs, memory, accelerator and autostart."""
    quick.vm_list(json_out, on_host(uri, host_name, all_ok=True), host_name)


@app.command("info")
def info_cmd(name: str = NameArg, json_out: bool = JsonOption,
             uri: str | None = UriOption, host_name: str | None = HostOption) -> None:
    """State, accelerator, guest agent, disks and NICs of one VM."""
    quick.vm_info(name, json_out, on_host(uri, host_name))


@app.command("start")
def start_cmd(
    name: str = NameArg,
    paused: bool = typer.Option(False, "--paused", help="Start with vCPUs paused."),
    discard_managed_save: bool = typer.Option(
        False, "--discard-managed-save", help="Drop a stale managed-save image and boot afresh."),
    wait_agent: float | None = typer.Option(
        None, "--wait-agent", help="Wait up to this many seconds for the guest agent."),
    uri: str | None = UriOption,
    host_name: str | None = HostOption,
) -> None:
    """Start a VM."""
    uri = on_host(uri, host_name)
    with connect(uri) as host:
        vms.start(Caller.local(), host, name, paused=paused,
                  discard_managed_save=discard_managed_save, wait_agent=wait_agent)
    info(f"VM '{name}' started{' paused' if paused else ''}")


@app.command("shutdown")
def shutdown_cmd(
    name: str = NameArg,
    agent: bool = typer.Option(False, "--agent", help="Ask the guest agent instead of ACPI."),
    timeout: float = typer.Option(60.0, help="Seconds to wait for the VM to stop."),
    no_wait: bool = typer.Option(False, "--no-wait", help="Send the request and return."),
    uri: str | None = UriOption,
    host_name: str | None = HostOption,
) -> None:
    """Shut a VM down gracefully and wait until it is off."""
    uri = on_host(uri, host_name)
    with connect(uri) as host:
        vms.shutdown(Caller.local(), host, name, mode="agent" if agent else "acpi",
                     timeout=timeout, wait=not no_wait)
    info(f"VM '{name}' {'shutdown requested' if no_wait else 'shut off'}")


def _simple(action: str, fn_name: str, done: str, help_text: str) -> None:
    def command(name: str = NameArg, uri: str | None = UriOption,
                host_name: str | None = HostOption) -> None:
        uri = on_host(uri, host_name)
        with connect(uri) as host:
            getattr(vms, fn_name)(Caller.local(), host, name)
        info(f"VM '{name}' {done}")

    command.__doc__ = help_text
    app.command(action)(command)


_simple("destroy", "destroy", "destroyed (forced off)",
        "Force a VM off at once (like pulling the plug).")
_simple("suspend", "suspend", "suspended", "Pause a running VM's vCPUs.")
_simple("resume", "resume", "resumed", "Resume a paused VM.")


@app.command("reboot")
def reboot_cmd(name: str = NameArg,
               agent: bool = typer.Option(False, "--agent", help="Reboot through the guest agent."),
               uri: str | None = UriOption,
               host_name: str | None = HostOption) -> None:
    """Reboot a VM (ACPI by default)."""
    uri = on_host(uri, host_name)
    with connect(uri) as host:
        vms.reboot(Caller.local(), host, name, mode="agent" if agent else "acpi")
    info(f"VM '{name}' reboot requested")


@app.command("undefine")
def undefine_cmd(
    name: str = NameArg,
    remove_storage: bool = typer.Option(False, "--remove-storage",
                                        help="Also delete the VM's disk images."),
    uri: str | None = UriOption,
    host_name: str | None = HostOption,
) -> None:
    """Remove a shut-off VM's definition (and with --remove-storage its disks)."""
    uri = on_host(uri, host_name)
    with connect(uri) as host:
        result = vms.undefine(Caller.local(), host, name, remove_storage=remove_storage)
    for kept in result.kept:
        warn(f"kept {kept['path']}: {kept['reason']}")
    info(f"VM '{name}' undefined"
         + (f"; removed {', '.join(result.removed)}" if result.removed else ""))


@app.command("console")
def console_cmd(
    name: str = NameArg,
    force: bool = typer.Option(False, "--force",
                               help="Take the console over from another session."),
    uri: str | None = UriOption,
    host_name: str | None = HostOption,
) -> None:
    """Attach to a running VM's serial console, like 'virsh console'; Ctrl-] leaves."""
    uri = on_host(uri, host_name)
    from kvmops.cli.terminal import attach

    reason = attach(uri, name, force=force)
    if reason is not None:
        raise StateError(reason)


@app.command("autostart")
def autostart_cmd(name: str = NameArg,
                  state: str = typer.Argument(..., help="on or off"),
                  uri: str | None = UriOption,
                  host_name: str | None = HostOption) -> None:
    """Start the VM when libvirtd starts (on) or not (off)."""
    uri = on_host(uri, host_name)
    if state not in ("on", "off"):
        raise typer.BadParameter("use 'on' or 'off'", param_hint="STATE")
    with connect(uri) as host:
        vms.set_autostart(Caller.local(), host, name, state == "on")
    info(f"VM '{name}' autostart {state}")


@app.command("dumpxml")
def dumpxml_cmd(name: str = NameArg,
                inactive: bool = typer.Option(False, "--inactive",
                                              help="The persistent definition, not the live one."),
                uri: str | None = UriOption,
                host_name: str | None = HostOption) -> None:
    """Print the VM's libvirt domain XML."""
    uri = on_host(uri, host_name)
    with connect(uri) as host:
        xml = vms.dumpxml(Caller.local(), host, name, inactive=inactive)
    typer.echo(xml.rstrip("\n"))


@app.command("clone")
def clone_cmd(source: str = NameArg,
              new_name: str = typer.Argument(..., help="Name of the copy."),
              images_dir: Path | None = typer.Option(None, help="Where the copied disks go.",
                                                  callback=from_cwd),
              json_out: bool = JsonOption,
              uri: str | None = UriOption,
              host_name: str | None = HostFilesOption) -> None:
    """Copy a shut-off VM with its disks (new UUID and MACs)."""
    uri = on_host(uri, host_name)
    with connect(uri) as host, percent_progress() as progress:
        tasks: dict[str, object] = {}

        def report(label: str, pct: float) -> None:
            if label not in tasks:
                tasks[label] = progress.add_task(f"copying {label}", total=100)
            progress.update(tasks[label], completed=pct)  # type: ignore[arg-type]

        result = vms.clone(Caller.local(), host, source, new_name, images_dir=images_dir,
                           progress=report)
    if json_out:
        print_json(result)
    else:
        info(f"VM '{new_name}' cloned from '{source}'")


app.add_typer(vmdisk.app, name="disk")
app.add_typer(vmnic.app, name="nic")
app.add_typer(vmtag.app, name="tag")
vmconfig.register(app)

from kvmops.cli import migrate as _migrate  # noqa: E402  (vm migrate)

_migrate.register(app)

from kvmops.cli import diagnostics as _diagnostics  # noqa: E402  (vm nmi/reset/screenshot/dump)

_diagnostics.register(app)
