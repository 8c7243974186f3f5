"""``kvmops vm nic``: list, hot-plug and hot-unplug a VM's network interfaces."""

from __future__ import annotations

import typer

from kvmops.cli.common import JsonOption, UriOption, connect
from kvmops.cli.output import info, print_json, print_table
from kvmops.errors import ValidationError
from kvmops.services.caller import Caller

# The NIC services (lxml) are imported inside the commands: this module loads with every
# ``kvmops vm`` command.

app = typer.Typer(help="List, add (hot-plug) and remove a VM's network interfaces.",
                  no_args_is_help=True)

NameArg = typer.Argument(..., help="VM name.")
MacArg = typer.Argument(..., help="The NIC's MAC address (see 'kvmops vm nic list').")
LiveOnly = typer.Option(False, "--live", "--live-only",
                        help="Only the running VM, not its persistent definition.")
ConfigOnly = typer.Option(False, "--config-only",
                          help="Only the persistent definition (takes effect at next start).")


def _scope(live_only: bool, config_only: bool) -> tuple[bool, bool]:
    if live_only and config_only:
        raise ValidationError("give either --live or --config-only, not both")
    return not config_only, not live_only


def _where(live: bool, config: bool) -> str:
    if live and config:
        return "running VM and definition"
    return "running VM only" if live else "definition only"


@app.command("list")
def list_cmd(name: str = NameArg, json_out: bool = JsonOption,
             uri: str | None = UriOption) -> None:
    """NICs with MAC, source, model, link state, host tap and where they are."""
    from kvmops.services import nics

    with connect(uri) as host:
        found = nics.list_nics(Caller.local(), host, name)
    if json_out:
        print_json(found)
        return
    print_table(
        ["MAC", "Type", "Source", "Model", "Link", "Host device", "In"],
        [(n.mac, n.type, n.source, n.model, n.link, n.host_device or "-",
          _where(n.live, n.config)) for n in found])


@app.command("add")
def add_cmd(
    name: str = NameArg,
    network: str | None = typer.Option(None, "--network", help="libvirt network to join."),
    bridge: str | None = typer.Option(None, "--bridge", help="Host bridge to join."),
    model: str = typer.Option("virtio", "--model",
                              help="virtio (default), e1000 or rtl8139 (old guests)."),
    mac: str | None = typer.Option(None, "--mac",
                                   help="Unicast MAC, unique on the host (default: a free "
                                        "52:54:00:xx:xx:xx)."),
    live_only: bool = LiveOnly,
    config_only: bool = ConfigOnly,
    json_out: bool = JsonOption,
    uri: str | None = UriOption,
) -> None:
    """Add a NIC: hot-plugged into a running VM and kept in its definition."""
    from kvmops.services import nics

    live, persistent = _scope(live_only, config_only)
    with connect(uri) as host:
        nic = nics.add(Caller.local(), host, name, network=network, bridge=bridge,
                       model=model, mac=mac, live=live, persistent=persistent)
    if json_out:
        print_json(nic)
        return
    info(f"NIC {nic.mac} ({nic.model} on {nic.type} '{nic.source}') added to VM '{name}' "
         f"({_where(nic.live, nic.config)})")


@app.command("remove")
def remove_cmd(
    name: str = NameArg,
    mac: str = MacArg,
    timeout: float = typer.Option(30.0, "--timeout",
                                  help="Seconds to wait for the guest to release the NIC."),
    live_only: bool = LiveOnly,
    config_only: bool = ConfigOnly,
    json_out: bool = JsonOption,
    uri: str | None = UriOption,
) -> None:
    """Remove a NIC (hot-unplug from a running VM, and from its definition)."""
    from kvmops.services import nics

    live, persistent = _scope(live_only, config_only)
    with connect(uri) as host:
        result = nics.remove(Caller.local(), host, name, mac, live=live,
                             persistent=persistent, timeout=timeout)
    if json_out:
        print_json(result)
        return
    info(f"NIC {result.mac} removed from VM '{name}' ({_where(result.live, result.config)})")


@app.command("set-link")
def set_link_cmd(
    name: str = NameArg,
    mac: str = MacArg,
    state: str = typer.Argument(..., help="up or down"),
    live_only: bool = LiveOnly,
    config_only: bool = ConfigOnly,
    json_out: bool = JsonOption,
    uri: str | None = UriOption,
) -> None:
    """Set a NIC's link up or down (live: the guest sees the carrier change)."""
    from kvmops.services import nics

    if state not in ("up", "down"):
        raise ValidationError(f"invalid link state '{state}'", hint="use up or down")
    live, persistent = _scope(live_only, config_only)
    with connect(uri) as host:
        nic = nics.set_link(Caller.local(), host, name, mac, "up" if state == "up" else "down",
                            live=live, persistent=persistent)
    if json_out:
        print_json(nic)
        return
    info(f"NIC {nic.mac} of VM '{name}': link {nic.link}")
