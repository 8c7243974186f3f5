"""``kvmops qmp``: one QMP or HMP command to a VM's QEMU (or a hand-started QEMU)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import typer

from kvmops.cli.common import HostOption, UriOption, on_host
from kvmops.errors import ValidationError
from kvmops.services.caller import Caller
from kvmops.services.monitor import open_monitor, parse_command

SocketOption = typer.Option(None, "--socket", help="QMP unix socket of a QEMU started by hand.")
TcpOption = typer.Option(None, "--tcp", help="QMP TCP monitor HOST:PORT of a QEMU started by hand.")


def split_words(words: list[str], has_endpoint: bool, needs_command: bool
                ) -> tuple[str | None, str | None]:
    """``[VM] [COMMAND]`` -> (vm, command); with --socket/--tcp there is no VM word."""
    expected = (0 if has_endpoint else 1) + (1 if needs_command else 0)
    if len(words) != expected:
        if has_endpoint:
            usage = "kvmops qmp --socket PATH '<json>'" if needs_command else \
                "no VM name together with --socket/--tcp"
        else:
            usage = "kvmops qmp VM '<json>'" if needs_command else "kvmops qmp VM --hmp/--list"
        got = " ".join(repr(w) for w in words) or "nothing"
        raise ValidationError(f"wrong arguments ({got})", hint=f"use {usage}")
    vm = None if has_endpoint else words[0]
    command = words[-1] if needs_command else None
    return vm, command


def qmp_cmd(
    words: list[str] | None = typer.Argument(
        None, metavar="[VM] [COMMAND]",
        help="VM name (not with --socket/--tcp), then the QMP command as JSON, "
             "e.g. '{\"execute\":\"query-status\"}', or just its name."),
    hmp: str | None = typer.Option(None, "--hmp", help="Run an HMP command line instead, "
                                                       "e.g. 'info block'."),
    list_commands: bool = typer.Option(False, "--list", help="List the QMP command names."),
    raw: bool = typer.Option(False, "--raw", help="One-line compact JSON output."),
    socket: Path | None = SocketOption,
    tcp: str | None = TcpOption,
    uri: str | None = UriOption,
    host_name: str | None = HostOption,
) -> None:
    """Run one QMP command and print its return value as JSON (or HMP text with --hmp)."""
    uri = on_host(uri, host_name, socket=socket, tcp=tcp)
    if hmp is not None and list_commands:
        raise ValidationError("give either --hmp or --list, not both")
    if socket is not None and tcp is not None:
        raise ValidationError("give either --socket or --tcp, not both")
    has_endpoint = socket is not None or tcp is not None
    needs_command = hmp is None and not list_commands
    vm, text = split_words(list(words or []), has_endpoint, needs_command)
    parsed = parse_command(text) if text is not None else None  # bad JSON fails before connecting
    with open_monitor(Caller.local(), vm, socket=socket, tcp=tcp, uri=uri) as channel:
        if hmp is not None:
            output = channel.hmp(hmp)
            sys.stdout.write(output if output.endswith("\n") or not output else output + "\n")
            return
        result: Any
        if list_commands:
            result = channel.command_names()
            if not raw:
                sys.stdout.write("".join(f"{name}\n" for name in result))
                return
        else:
            assert parsed is not None
            result = channel.execute(*parsed)
    if raw:
        sys.stdout.write(json.dumps(result, separators=(",", ":")) + "\n")
    else:
        sys.stdout.write(json.dumps(result, indent=2) + "\n")
    sys.stdout.flush()


def register(app: typer.Typer) -> None:
    app.command("qmp")(qmp_cmd)
