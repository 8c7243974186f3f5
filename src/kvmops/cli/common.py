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
#: ``--host NAME``: the host of ``kvmops host list`` a command acts on (see on_host).
HostOption = typer.Option(None, "--host", metavar="NAME",
                          help="Act on this host of 'kvmops host list' (default: the "
                               "local host); not with --connect.")
#: The same for commands that also read or write files: those stay on this machine.
HostFilesOption = typer.Option(None, "--host", metavar="NAME",
                               help="Act on this host of 'kvmops host list' (default: the "
                                    "local host); not with --connect. File paths are on "
                                    "the machine running kvmops.")


def on_host(uri: str | None, host: str | None, *, socket: object = None,
            tcp: object = None, all_ok: bool = False, option: str = "--host") -> str | None:
    """The libvirt URI a command opens: ``--host NAME``'s (one function resolves it:
    kvmops.services.hosts.uri_of), else ``--connect``/KVMOPS_URI's (None: the configured
    one). ``--host`` with ``--connect`` on the command line, or with a hand-started
    QEMU's ``--socket``/``--tcp`` (a socket on this machine), is a usage error;
    KVMOPS_URI is a default that ``--host`` overrides."""
    from kvmops.cli.quick import host_uri

    local_only = "--socket" if socket else "--tcp" if tcp else None
    return host_uri(uri, host, connect_given=_connect_given(), local_only=local_only,
                    all_ok=all_ok, option=option)


def _connect_given() -> bool:
    """Whether ``--connect``/``-c`` was on the command line (not from KVMOPS_URI)."""
    import click
    from click.core import ParameterSource

    ctx = click.get_current_context(silent=True)
    if ctx is None:
        return False
    for param in ctx.command.params:
        if "--connect" in getattr(param, "opts", ()) and param.name:
            return ctx.get_parameter_source(param.name) is ParameterSource.COMMANDLINE
    return False



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


__all__ = ["HostFilesOption", "HostOption", "JsonOption", "UriOption", "connect", "from_cwd",
           "on_host"]
