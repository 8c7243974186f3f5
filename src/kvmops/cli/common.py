"""Options and helpers shared by the command modules."""

from __future__ import annotations

import typer

from kvmops.services.session import connect

JsonOption = typer.Option(False, "--json", help="Print machine-readable JSON.")
UriOption = typer.Option(None, "--connect", "-c", envvar="KVMOPS_URI",
                         help="libvirt URI (default qemu:///system).")

__all__ = ["JsonOption", "UriOption", "connect"]
