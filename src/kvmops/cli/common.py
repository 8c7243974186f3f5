"""Options and helpers shared by the command modules."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import typer

from kvmops.host.connection import Host

JsonOption = typer.Option(False, "--json", help="Print machine-readable JSON.")
UriOption = typer.Option(None, "--connect", "-c", envvar="KVMOPS_URI",
                         help="libvirt URI (default qemu:///system).")


@contextmanager
def connect(uri: str | None) -> Iterator[Host]:
    host = Host(uri)
    try:
        yield host
    finally:
        host.close()
