"""``kvmops vm nmi|reset|screenshot|dump``: tools for a hung guest."""

from __future__ import annotations

from pathlib import Path

import typer

from kvmops.cli.common import HostOption, JsonOption, UriOption, connect, from_cwd, on_host
from kvmops.cli.output import LazyBar, info, print_json
from kvmops.services import diagnostics
from kvmops.services.caller import Caller

NameArg = typer.Argument(..., help="VM name.")
FORMAT_HELP = ("elf (QEMU's ELF core, the default), kdump-zlib, kdump-lzo, kdump-snappy "
               "(makedumpfile's compressed format, what crash(8) reads) or win-dmp (a "
               "Windows crash dump); all but elf need --memory-only, and QEMU must have "
               "been built with the compression.")


def nmi_cmd(name: str = NameArg, uri: str | None = UriOption,
            host_name: str | None = HostOption) -> None:
    """Inject a non-maskable interrupt into a VM.

    A Linux guest logs it; with kernel.unknown_nmi_panic=1 it panics (and kdumps)."""
    uri = on_host(uri, host_name)
    with connect(uri) as host:
        diagnostics.nmi(Caller.local(), host, name)
    info(f"NMI injected into VM '{name}'; see its kernel log (dmesg, serial console)")


def reset_cmd(name: str = NameArg, uri: str | None = UriOption,
              host_name: str | None = HostOption) -> None:
    """Hard-reset a VM (the reset button).

    No shutdown: the guest reboots at once and unsaved guest data is lost."""
    uri = on_host(uri, host_name)
    with connect(uri) as host:
        diagnostics.reset(Caller.local(), host, name)
    info(f"VM '{name}' reset")


def screenshot_cmd(name: str = NameArg,
                   file: Path = typer.Argument(..., help="The PNG file to write.",
                                               callback=from_cwd),
                   force: bool = typer.Option(False, "--force",
                                              help="Replace FILE if it exists."),
                   screen: int = typer.Option(0, "--screen", min=0,
                                              help="Which head of the video device."),
                   json_out: bool = JsonOption, uri: str | None = UriOption,
                   host_name: str | None = HostOption) -> None:
    """Save a VM's screen as a PNG.

    What a hung guest last showed: a panic, a stuck boot, a login prompt."""
    uri = on_host(uri, host_name)
    with connect(uri) as host:
        result = diagnostics.save_screenshot(Caller.local(), host, name, file, force=force,
                                             screen=screen)
    if json_out:
        print_json(result)
    else:
        info(f"screenshot of VM '{name}' written to {result.path} "
             f"({result.width}x{result.height})")


def dump_cmd(name: str = NameArg,
             file: Path = typer.Argument(..., help="The dump file to write (on the VM's "
                                                   "host: this machine).",
                                         callback=from_cwd),
             memory_only: bool = typer.Option(
                 False, "--memory-only",
                 help="Guest memory only (QEMU's dump-guest-memory): what crash(8), gdb "
                      "and WinDbg read. Without it: libvirt's whole-VM-state dump."),
             fmt: str = typer.Option("elf", "--format", metavar="FORMAT", help=FORMAT_HELP),
             live: bool = typer.Option(False, "--live",
                                       help="Do not pause the guest while dumping (the "
                                            "dump is then not consistent)."),
             force: bool = typer.Option(False, "--force", help="Replace FILE if it exists."),
             json_out: bool = JsonOption, uri: str | None = UriOption,
             host_name: str | None = HostOption) -> None:
    """Dump a VM's memory to a file, with progress.

    The guest pauses for the dump unless --live. FILE appears only once complete;
    Ctrl-C aborts the dump and removes the partial file."""
    uri = on_host(uri, host_name)
    with connect(uri) as host, LazyBar(f"dumping {name}") as bar:
        result = diagnostics.dump(Caller.local(), host, name, file, fmt=fmt,
                                  memory_only=memory_only, live=live, force=force,
                                  progress=None if json_out else bar.update)
    if json_out:
        print_json(result)
    else:
        info(f"VM '{name}' dumped to {result.path} ({result.size} bytes, {result.format}"
             f"{', memory only' if result.memory_only else ''}, {result.seconds:.1f} s)")


def register(app: typer.Typer) -> None:
    """Add the commands to the ``vm`` group."""
    app.command("nmi")(nmi_cmd)
    app.command("reset")(reset_cmd)
    app.command("screenshot")(screenshot_cmd)
    app.command("dump")(dump_cmd)
