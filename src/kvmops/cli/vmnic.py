"""``kvmops vm nic``: list, hot-plug and hot-unplug a VM's network interfaces."""

from __future__ import annotations

import typer

from kvmops.cli.common import HostOption, JsonOption, UriOption, connect, on_host
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


RATE_HELP = ("AVG[,PEAK[,BURST]]: rates in KiB/s (libvirt's unit) or with kbit/mbit/gbit "
             "(bits/s, e.g. 10mbit), burst in KiB (or 1m = 1 MiB)")
InboundOpt = typer.Option(None, "--inbound", help="Limit traffic to the guest: " + RATE_HELP
                          + "; 'none' removes the limit.")
OutboundOpt = typer.Option(None, "--outbound", help="Limit traffic from the guest: "
                           + RATE_HELP + "; 'none' removes the limit.")
VlanOpt = typer.Option(None, "--vlan", help="Access VLAN tag 1..4094 (Open vSwitch "
                       "network/bridge or SR-IOV VF only); 'none' removes the VLAN.")
TrunkOpt = typer.Option(None, "--trunk", help="Trunk VLAN tags, e.g. 10,20 (OVS/VF only).")
NativeOpt = typer.Option(None, "--native", help="With --trunk: the tag of untagged frames.")


def _rate(text: str | None, direction: str) -> object:
    """None: not given; 'none': remove the limit; else the parsed Rate."""
    from kvmops.services.nics import Rate

    if text is None:
        return None
    return "none" if text.strip().lower() == "none" else Rate.parse(text, direction)


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
             uri: str | None = UriOption,
             host_name: str | None = HostOption) -> None:
    """NICs with MAC, source, model, link state, host tap and where they are."""
    uri = on_host(uri, host_name)
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
    vf_pool: str | None = typer.Option(None, "--vf-pool", help="SR-IOV: one free VF of this "
                                       "pool (see 'kvmops sriov pool list'); --vlan sets "
                                       "its port VLAN."),
    rate: int | None = typer.Option(None, "--rate", help="With --vf-pool: the VF's "
                                    "max_tx_rate in Mbit/s (checked against the PF "
                                    "driver's range)."),
    spoofchk: str = typer.Option("on", "--spoofchk", help="With --vf-pool: MAC spoof "
                                 "check on|off."),
    trust: str = typer.Option("off", "--trust", help="With --vf-pool: trusted VF on|off "
                              "(may change its MAC, promiscuous multicast)."),
    model: str = typer.Option("virtio", "--model",
                              help="virtio (default), e1000 or rtl8139 (old guests)."),
    mac: str | None = typer.Option(None, "--mac",
                                   help="Unicast MAC, unique on the host (default: a free "
                                        "52:54:00:xx:xx:xx)."),
    inbound: str | None = InboundOpt,
    outbound: str | None = OutboundOpt,
    vlan: str | None = VlanOpt,
    trunk: str | None = TrunkOpt,
    native: int | None = NativeOpt,
    queues: int | None = typer.Option(None, "--queues", help="virtio multiqueue: queue "
                                      "pairs, usually the VM's vCPU count (virtio only)."),
    boot_order: int | None = typer.Option(None, "--boot-order", help="Network (PXE) boot "
                                          "position, 1 first (VMs with per-device boot "
                                          "order only)."),
    live_only: bool = LiveOnly,
    config_only: bool = ConfigOnly,
    json_out: bool = JsonOption,
    uri: str | None = UriOption,
    host_name: str | None = HostOption,
) -> None:
    """Add a NIC: hot-plugged into a running VM and kept in its definition."""
    uri = on_host(uri, host_name)
    from kvmops.services import nics
    from kvmops.services.nics import Rate, Vlan

    live, persistent = _scope(live_only, config_only)
    if vf_pool is not None:
        if any(v is not None for v in (network, bridge, inbound, outbound, trunk, native)):
            raise ValidationError("--vf-pool gives the NIC a VF: leave out --network, "
                                  "--bridge, --inbound, --outbound, --trunk and --native",
                                  hint="limit a VF with --rate MBPS")
        _add_vf(name, vf_pool, mac=mac, vlan=vlan, rate=rate, spoofchk=spoofchk,
                trust=trust, live=live, persistent=persistent, json_out=json_out, uri=uri)
        return
    if rate is not None:
        raise ValidationError("--rate is the max_tx_rate of an SR-IOV VF: it needs "
                              "--vf-pool", hint="limit other NICs with --outbound")
    rate_in, rate_out = (Rate.parse(inbound, "inbound") if inbound else None,
                         Rate.parse(outbound, "outbound") if outbound else None)
    tags = Vlan.parse(vlan, trunk, native)
    with connect(uri) as host:
        nic = nics.add(Caller.local(), host, name, network=network, bridge=bridge,
                       model=model, mac=mac, live=live, persistent=persistent,
                       inbound=rate_in, outbound=rate_out, vlan=tags, queues=queues,
                       boot_order=boot_order)
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
    host_name: str | None = HostOption,
) -> None:
    """Remove a NIC (hot-unplug from a running VM, and from its definition)."""
    uri = on_host(uri, host_name)
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
    host_name: str | None = HostOption,
) -> None:
    """Set a NIC's link up or down (live: the guest sees the carrier change)."""
    uri = on_host(uri, host_name)
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


@app.command("update")
def update_cmd(
    name: str = NameArg,
    mac: str = MacArg,
    inbound: str | None = InboundOpt,
    outbound: str | None = OutboundOpt,
    vlan: str | None = VlanOpt,
    trunk: str | None = TrunkOpt,
    native: int | None = NativeOpt,
    live_only: bool = LiveOnly,
    config_only: bool = ConfigOnly,
    json_out: bool = JsonOption,
    uri: str | None = UriOption,
    host_name: str | None = HostOption,
) -> None:
    """Change a NIC's bandwidth limits or VLAN (live: applied to the running VM at once)."""
    uri = on_host(uri, host_name)
    from kvmops.services import nics
    from kvmops.services.nics import Rate, Vlan

    live, persistent = _scope(live_only, config_only)
    changes: dict[str, Rate | Vlan | None] = {}
    for key, text in (("inbound", inbound), ("outbound", outbound)):
        if text is not None:
            value = _rate(text, key)
            changes[key] = value if isinstance(value, Rate) else None
    if vlan is not None and vlan.strip().lower() == "none":
        if trunk is not None or native is not None:
            raise ValidationError("--vlan none removes the VLAN: leave out --trunk/--native")
        changes["vlan"] = None
    elif vlan is not None or trunk is not None or native is not None:
        changes["vlan"] = Vlan.parse(vlan, trunk, native)
    if not changes:
        raise ValidationError("nothing to change",
                              hint="give --inbound, --outbound, --vlan or --trunk")
    with connect(uri) as host:
        nic = nics.update(Caller.local(), host, name, mac, live=live, persistent=persistent,
                          **changes)  # type: ignore[arg-type]
    if json_out:
        print_json(nic)
        return
    info(f"NIC {nic.mac} of VM '{name}': inbound {nic.inbound or 'unlimited'}, outbound "
         f"{nic.outbound or 'unlimited'}, VLAN {nic.vlan or 'none'} "
         f"({_where(nic.live, nic.config)})")


def _add_vf(name: str, pool: str, *, mac: str | None, vlan: str | None, rate: int | None,
            spoofchk: str, trust: str, live: bool, persistent: bool, json_out: bool,
            uri: str | None) -> None:
    """``vm nic add --vf-pool``: one VF of an SR-IOV pool (kvmops.services.sriov)."""
    from kvmops.network.sriov import parse_onoff
    from kvmops.services import sriov

    try:
        tag = int(vlan) if vlan is not None else None
    except ValueError:
        raise ValidationError(f"invalid VF VLAN '{vlan}'", hint="use a tag 1..4094") from None
    with connect(uri) as host:
        nic = sriov.allocate(Caller.local(), host, name, pool, mac=mac, vlan=tag, rate=rate,
                             spoofchk=bool(parse_onoff(spoofchk, "--spoofchk")),
                             trust=bool(parse_onoff(trust, "--trust")), live=live,
                             persistent=persistent)
    if json_out:
        print_json(nic)
        return
    info(f"NIC {nic.mac} (VF {nic.vf} of PF '{nic.pf}', pool '{nic.pool}', PCI {nic.source})"
         f" added to VM '{name}' ({_where(nic.live, nic.config)})")
