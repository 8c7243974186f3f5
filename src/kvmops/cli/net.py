"""``kvmops net``: libvirt virtual networks (NAT, routed, isolated, host bridge, OVS)."""

from __future__ import annotations

import time

import typer

from kvmops.cli.common import HostOption, JsonOption, UriOption, connect, on_host
from kvmops.cli.output import info, print_fields, print_json, print_table
from kvmops.services import networks as service
from kvmops.services.caller import Caller

app = typer.Typer(help="Virtual networks: NAT, routed, isolated, host bridge, Open vSwitch.",
                  no_args_is_help=True)

NameArg = typer.Argument(..., help="Network name.")


def _yes(value: bool) -> str:
    return "yes" if value else "no"


@app.command("create")
def create_cmd(
    name: str = NameArg,
    mode: str = typer.Option("isolated", "--mode",
                             help="nat, route, isolated, bridge (an existing host bridge) "
                                  "or ovs (an existing Open vSwitch bridge)."),
    bridge: str | None = typer.Option(None, "--bridge",
                                      help="Bridge name (at most 15 characters); nat, route "
                                           "and isolated: default a free virbrN."),
    ipv4: str | None = typer.Option(None, "--ipv4",
                                    help="The network's IPv4 address and prefix, e.g. "
                                         "192.168.251.1/24."),
    dhcp: str | None = typer.Option(None, "--dhcp",
                                    help="IPv4 DHCP range START-END inside --ipv4's subnet."),
    ipv6: str | None = typer.Option(None, "--ipv6",
                                    help="The network's IPv6 address and prefix, e.g. "
                                         "fd00:251::1/64."),
    ipv6_mode: str | None = typer.Option(None, "--ipv6-mode",
                                         help="slaac (default: router advertisements, a /64),"
                                              " dhcpv6-stateful (addresses from a range) "
                                              "or dhcpv6-stateless (SLAAC + DHCPv6 for DNS)."),
    dhcp6: str | None = typer.Option(None, "--dhcp6",
                                     help="Stateful DHCPv6 range START-END (default "
                                          "PREFIX::1000-PREFIX::1fff)."),
    forward_dev: str | None = typer.Option(None, "--forward-dev",
                                           help="nat/route: forward only through this host "
                                                "interface."),
    autostart: bool = typer.Option(False, "--autostart",
                                   help="Start the network when libvirtd starts."),
    no_start: bool = typer.Option(False, "--no-start",
                                  help="Only define the network; do not start it."),
    create_bridge: bool = typer.Option(False, "--create-bridge",
                                       help="ovs: create the Open vSwitch bridge --bridge "
                                            "too (removed with the network)."),
    datapath: str | None = typer.Option(None, "--datapath",
                                        help="ovs with --create-bridge: system (the kernel's)"
                                             " or netdev (user space); default system where "
                                             "the kernel has it, else netdev."),
    uplink: str | None = typer.Option(None, "--uplink",
                                      help="bridge: create the host bridge (NAME, or "
                                           "--bridge) over this interface, moving its "
                                           "addresses and routes; checked and rolled back "
                                           "on loss (see 'net rollback')."),
    verify: str | None = typer.Option(None, "--verify",
                                      help="--uplink: the host (IP) that must answer after "
                                           "the change (default: this SSH session's client, "
                                           "else the default gateway)."),
    verify_timeout: float = typer.Option(10.0, "--verify-timeout",
                                         help="--uplink: seconds the next hop has to answer."),
    confirm_timeout: float | None = typer.Option(None, "--confirm-timeout",
                                                 help="--uplink: also wait this many seconds "
                                                      "for Enter on the terminal; none: "
                                                      "rolled back."),
    dry_run: bool = typer.Option(False, "--dry-run",
                                 help="--uplink: show the plan, change nothing."),
    no_define: bool = typer.Option(False, "--no-define",
                                   help="--uplink: create the bridge only, no libvirt network."),
    json_out: bool = JsonOption,
    uri: str | None = UriOption,
    host_name: str | None = HostOption,
) -> None:
    """Create (define and start) a network."""
    uplink_form = uplink is not None or verify or dry_run or no_define \
        or confirm_timeout is not None
    if host_name is not None and (uplink_form or create_bridge):
        from kvmops.errors import ValidationError

        raise ValidationError(
            f"--host cannot be used with {'--create-bridge' if create_bridge else '--uplink'}"
            " (it changes the network interfaces of the machine running kvmops)",
            hint="run kvmops on that host for its bridges, then 'net create --host NAME "
                 "--mode bridge --bridge BR' here")
    uri = on_host(uri, host_name)
    if uplink_form:
        from kvmops.cli import netbridge

        netbridge.create(name, mode=mode, uplink=uplink, bridge=bridge, verify=verify,
                         verify_timeout=verify_timeout, confirm_timeout=confirm_timeout,
                         dry_run=dry_run, no_define=no_define, autostart=autostart,
                         json_out=json_out, uri=uri,
                         conflicting={"--ipv4": ipv4, "--dhcp": dhcp, "--ipv6": ipv6,
                                      "--ipv6-mode": ipv6_mode, "--dhcp6": dhcp6,
                                      "--forward-dev": forward_dev, "--no-start": no_start})
        return
    spec = service.NetworkSpec(name=name, mode=mode, bridge=bridge, ipv4=ipv4, dhcp=dhcp,
                               ipv6=ipv6, ipv6_mode=ipv6_mode, dhcp6=dhcp6,
                               forward_dev=forward_dev, autostart=autostart)
    with connect(uri) as host:
        net = service.create(Caller.local(), host, spec, start=not no_start,
                             create_bridge=create_bridge, datapath=datapath)
    if json_out:
        print_json(net)
        return
    state = "active" if net.active else "defined, not started"
    info(f"network '{net.name}' created ({net.mode}, bridge {net.bridge or '-'}, {state})")


@app.command("list")
def list_cmd(json_out: bool = JsonOption, uri: str | None = UriOption,
             host_name: str | None = HostOption) -> None:
    """Every libvirt network, active or not."""
    uri = on_host(uri, host_name)
    with connect(uri) as host:
        nets = service.list_networks(Caller.local(), host)
    if json_out:
        print_json(nets)
        return
    print_table(["Name", "Mode", "State", "Autostart", "Persistent", "Bridge", "IPv4", "IPv6"],
                [(n.name, n.mode, "active" if n.active else "inactive", _yes(n.autostart),
                  _yes(n.persistent), n.bridge or "-", n.ipv4 or "-", n.ipv6 or "-")
                 for n in nets])


@app.command("info")
def info_cmd(name: str = NameArg, json_out: bool = JsonOption,
             uri: str | None = UriOption,
             host_name: str | None = HostOption) -> None:
    """One network: mode, bridge, addresses, DHCP, and the VMs that use it."""
    uri = on_host(uri, host_name)
    with connect(uri) as host:
        net = service.info(Caller.local(), host, name)
    if json_out:
        print_json(net)
        return
    print_fields([
        ("Name", net.name), ("UUID", net.uuid), ("Mode", net.mode),
        ("State", "active" if net.active else "inactive"),
        ("Persistent", _yes(net.persistent)), ("Autostart", _yes(net.autostart)),
        ("Bridge", net.bridge), ("Forward device", net.forward_dev),
        ("IPv4", net.ipv4), ("DHCP", net.dhcp), ("IPv6", net.ipv6),
        ("IPv6 mode", net.ipv6_mode), ("DHCPv6", net.dhcp6),
        ("Used by", ", ".join(net.used_by or []) or "-"),
    ])


@app.command("start")
def start_cmd(name: str = NameArg, uri: str | None = UriOption,
              host_name: str | None = HostOption) -> None:
    """Start a defined network."""
    uri = on_host(uri, host_name)
    with connect(uri) as host:
        net = service.start(Caller.local(), host, name)
    info(f"network '{net.name}' started (bridge {net.bridge or '-'})")


@app.command("stop")
def stop_cmd(name: str = NameArg, uri: str | None = UriOption,
             host_name: str | None = HostOption) -> None:
    """Stop a network (refused while a running VM uses it)."""
    uri = on_host(uri, host_name)
    with connect(uri) as host:
        service.stop(Caller.local(), host, name)
    info(f"network '{name}' stopped")


@app.command("delete")
def delete_cmd(name: str = NameArg, uri: str | None = UriOption,
               host_name: str | None = HostOption) -> None:
    """Stop and remove a network (refused while a VM uses it, naming the VMs)."""
    uri = on_host(uri, host_name)
    with connect(uri) as host:
        service.delete(Caller.local(), host, name)
    info(f"network '{name}' deleted")


@app.command("autostart")
def autostart_cmd(
    name: str = NameArg,
    disable: bool = typer.Option(False, "--disable",
                                 help="Do not start it with libvirtd (e.g. 'default')."),
    uri: str | None = UriOption,
    host_name: str | None = HostOption,
) -> None:
    """Start a network when libvirtd starts (or, with --disable, no longer)."""
    uri = on_host(uri, host_name)
    with connect(uri) as host:
        service.set_autostart(Caller.local(), host, name, not disable)
    info(f"network '{name}' autostart {'disabled' if disable else 'enabled'}")


@app.command("leases")
def leases_cmd(name: str = NameArg, json_out: bool = JsonOption,
               uri: str | None = UriOption,
               host_name: str | None = HostOption) -> None:
    """The DHCP leases (IPv4 and DHCPv6) of an active network."""
    uri = on_host(uri, host_name)
    with connect(uri) as host:
        found = service.leases(Caller.local(), host, name)
    if json_out:
        print_json(found)
        return
    print_table(["IP", "Prefix", "MAC", "Hostname", "Client ID", "Expires"],
                [(lease.ip, lease.prefix, lease.mac or "-", lease.hostname or "-",
                  lease.client_id or "-",
                  time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(lease.expires))
                  if lease.expires else "-") for lease in found])


@app.command("rollback")
def rollback_cmd(bridge: str = typer.Argument(..., help="The bridge 'net create --uplink' made."),
                 json_out: bool = JsonOption) -> None:
    """Undo an unfinished 'net create --uplink' (after a crash): restore the uplink, remove
    the bridge."""
    from kvmops.cli import netbridge

    netbridge.rollback(bridge, json_out)


@app.command("unbridge")
def unbridge_cmd(
    bridge: str = typer.Argument(..., help="The host bridge to remove (its only port stays)."),
    verify: str | None = typer.Option(None, "--verify",
                                      help="The host (IP) that must answer after the change "
                                           "(default: this SSH session's client, else the "
                                           "default gateway)."),
    verify_timeout: float = typer.Option(10.0, "--verify-timeout",
                                         help="Seconds the next hop has to answer."),
    confirm_timeout: float | None = typer.Option(None, "--confirm-timeout",
                                                 help="Also wait this many seconds for Enter "
                                                      "on the terminal; none: rolled back."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Show the plan, change nothing."),
    json_out: bool = JsonOption,
    uri: str | None = UriOption,
) -> None:
    """Remove a host bridge, moving its addresses and routes back to its uplink; checked
    and rolled back like 'net create --uplink'."""
    from kvmops.cli import netbridge

    netbridge.unbridge(bridge, verify=verify, verify_timeout=verify_timeout,
                       confirm_timeout=confirm_timeout, dry_run=dry_run, json_out=json_out,
                       uri=uri)
