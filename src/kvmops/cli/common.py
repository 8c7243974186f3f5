"""Options and helpers shared by the command modules."""

from __future__ import annotations

from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING

import typer

if TYPE_CHECKING:
    from kvmops.services.session import Connection

JsonOption = typer.Option(False, "--json", help="Print machine-readable JSON.")
UriOption = typer.Option(None, "--connect", "-c", envvar="KVMOPS_URI",
                         help="libvirt URI (default qemu:///system).")



def connect(uri: str | None) -> AbstractContextManager[Connection]:
    """A libvirt connection for the length of one command (libvirt loads only now)."""
    from kvmops.services.session import connect as open_for_command

    return open_for_command(uri)


def from_cwd(path: Path | None) -> Path | None:
    """A relative path names a file under the current directory, as in every Unix tool;
    the services take absolute paths only (and check them against the allowed directories)."""
    if path is None or path.is_absolute():
        return path
    return Path.cwd() / path


__all__ = ["JsonOption", "UriOption", "connect", "from_cwd"]
