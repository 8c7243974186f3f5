"""`kvmops dev`: developer tools (the tiny test guest, a namespaced second host)."""

from __future__ import annotations

import time
from pathlib import Path

import typer

from kvmops.cli import output

app = typer.Typer(help="Developer tools: the tiny test guest, a second host.",
                  no_args_is_help=True)


@app.command("build-guest")
def build_guest_cmd(
    directory: Path = typer.Argument(
        ..., metavar="DIR", help="Where to write vmlinuz, initrd.img, data.ext4 and tools.ext4."
    ),
    force: bool = typer.Option(False, "--force", help="Rebuild even if the inputs are unchanged."),
    json_out: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Build the tiny test guest (Debian kernel + busybox + qemu-ga) into DIR.

    A second run with unchanged inputs returns at once unless --force.
    """
    from kvmops.devguest.build import build_guest

    started = time.monotonic()
    image = build_guest(directory, force=force, progress=None if json_out else output.info)
    result = {
        "kernel": str(image.kernel),
        "initrd": str(image.initrd),
        "data_disk": str(image.data_disk),
        "tools": str(image.tools),
        "seconds": round(time.monotonic() - started, 1),
    }
    if json_out:
        output.print_json(result)
    else:
        output.print_fields(result.items())


@app.command("fake-sriov")
def fake_sriov_cmd(
    directory: Path = typer.Argument(..., metavar="DIR",
                                     help="The simulated sysfs root (made if missing); "
                                          "use it with KVMOPS_SYSFS_ROOT=DIR."),
    pf: str = typer.Option(..., "--pf", help="PF (network interface) name to add."),
    vfs: int = typer.Option(..., "--vfs", help="Its VFs (sriov_totalvfs), 1..128."),
    driver: str = typer.Option("ixgbe", "--driver", help="PF driver: ixgbe, i40e, ..."),
    numvfs: int | None = typer.Option(None, "--numvfs",
                                      help="VFs made now (sriov_numvfs; default all)."),
    link: str = typer.Option("up", "--link", help="PF link state: up or down."),
    bus: int | None = typer.Option(None, "--bus", help="The PF's PCI bus 1..255 (default: "
                                   "the next free one from 3); VFs at BUS:10.0, ..."),
    json_out: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Write a simulated SR-IOV sysfs tree (a PF with VFs) for tests and demos."""
    from kvmops.services.sriov import write_fake_tree

    found = write_fake_tree(directory.absolute(), pf, vfs, driver, numvfs=numvfs, link=link,
                            bus=bus)
    if json_out:
        output.print_json(found)
    else:
        output.info(f"PF '{found.name}' ({found.driver}, PCI {found.pci}) with "
                    f"{found.numvfs}/{found.totalvfs} VFs in {directory.absolute()}")


second_host_app = typer.Typer(
    help="A second libvirtd in its own network namespace, for migration tests "
         "(qemu+tcp://10.250.0.2/system; unauthenticated: root and QEMU only).",
    no_args_is_help=True)
app.add_typer(second_host_app, name="second-host")

_NAME_OPTION = typer.Option("kvmops-h2", "--name",
                            help="Its name (network namespace, hostname): kvmops-...")


@second_host_app.command("up")
def second_host_up_cmd(
    name: str = _NAME_OPTION,
    index: int = typer.Option(0, "--index", min=0, max=63,
                              help="Use 10.250.INDEX.0/24 (several second hosts at once)."),
    ssh: bool = typer.Option(False, "--ssh",
                             help="Also an sshd on its address for qemu+ssh (a generated "
                                  "key; the qemu+ssh URI is printed last)."),
    json_out: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Start the second host; the last line printed is its libvirt URI.

    A network namespace with a veth 10.250.0.1 (here) <-> 10.250.0.2 (there), libvirtd
    listening on TCP 10.250.0.2 and on its unix socket, its own images directory.
    Already up: prints the same, starts nothing.
    """
    from kvmops.testing import secondhost

    host, started = secondhost.up(name, index, ssh=ssh)
    if json_out:
        output.print_json({**host.summary(), "started": started})
        return
    if not started:
        output.info(f"second host {host.name} is already up")
    output.print_fields([("netns", host.netns), ("address", host.tcp_address),
                         ("host address", host.host_address or secondhost.HOST_ADDRESS),
                         ("unix uri", host.unix_uri), ("images dir", host.images_dir)]
                        + ([("tcp uri", host.uri), ("ssh key", str(host.client_key)),
                            ("known hosts", str(host.known_hosts))] if ssh else []))
    typer.echo(host.ssh_uri if ssh else host.uri)


@second_host_app.command("down")
def second_host_down_cmd(name: str = _NAME_OPTION) -> None:
    """Remove the second host with everything on it.

    Its VMs (and their disks), networks, processes, namespace, veth, images directory
    and state.
    """
    from kvmops.testing import secondhost

    removed = secondhost.down(name)
    output.info(f"removed second host {name}" if removed else f"no second host {name}")


@second_host_app.command("status")
def second_host_status_cmd(
    json_out: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """The second hosts on this machine (test ones included), and whether they answer."""
    from kvmops.testing import secondhost

    hosts = [{**host.summary(), "answers": host.answers()} for host in secondhost.status()]
    if json_out:
        output.print_json(hosts)
        return
    output.print_table(["NAME", "URI", "ANSWERS", "IMAGES DIR"],
                       [(h["name"], h["uri"], "yes" if h["answers"] else "no",
                         h["images_dir"]) for h in hosts])
