"""``kvmops events``: watch a VM's (or a hand-started QEMU's) QMP events."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer

from kvmops.cli.common import HostOption, UriOption, on_host
from kvmops.cli.qmp import SocketOption, TcpOption
from kvmops.errors import OperationTimeoutError, ValidationError
from kvmops.services.caller import Caller
from kvmops.services.monitor import MonitorEvent, normalize_event_names, open_monitor


def format_event(event: MonitorEvent, as_json: bool) -> str:
    """One line: JSON (``--json``) or ``TIMESTAMP  NAME  {data}``."""
    if as_json:
        return json.dumps(event.to_dict(), separators=(",", ":"))
    stamp = event.timestamp.astimezone().isoformat(sep=" ", timespec="microseconds")
    data = f"  {json.dumps(event.data, separators=(',', ':'))}" if event.data else ""
    return f"{stamp}  {event.name}{data}"


def events_cmd(
    vm: str | None = typer.Argument(None, help="VM name (not with --socket/--tcp)."),
    event: list[str] = typer.Option(
        [], "--event", "-e", help="Only this event (e.g. STOP, DEVICE_DELETED); repeatable. "
                                  "Without --follow, ends after the first match."),
    follow: bool = typer.Option(False, "--follow", "-f",
                                help="Keep printing matching events until Ctrl-C/--timeout."),
    timeout: float | None = typer.Option(
        None, "--timeout", help="Give up after this many seconds (an error if nothing matched)."),
    json_out: bool = typer.Option(False, "--json", help="One JSON object per line."),
    quiet: bool = typer.Option(False, "--quiet", "-q",
                               help="No 'listening' status line on stderr."),
    socket: Path | None = SocketOption,
    tcp: str | None = TcpOption,
    uri: str | None = UriOption,
    host_name: str | None = HostOption,
) -> None:
    """Print QMP events with their timestamps as QEMU sends them.

    With --event and no --follow it ends after the first matching event;
    otherwise it runs until Ctrl-C or --timeout.
    """
    uri = on_host(uri, host_name, socket=socket, tcp=tcp)
    if socket is not None and tcp is not None:
        raise ValidationError("give either --socket or --tcp, not both")
    if (vm is None) == (socket is None and tcp is None):
        raise ValidationError("give a VM name, or --socket PATH / --tcp HOST:PORT (not both)")
    if timeout is not None and timeout <= 0:
        raise ValidationError(f"--timeout must be positive, got {timeout:g}")
    names = normalize_event_names(event)
    stop_after_first = names is not None and not follow
    matched = 0
    target = ""
    try:
        with open_monitor(Caller.local(), vm, socket=socket, tcp=tcp, uri=uri) as channel:
            target = channel.target
            channel.listen()
            if not quiet:
                what = ", ".join(sorted(names)) if names else "all"
                sys.stderr.write(f"listening for {what} events from {channel.target}"
                                 f"{f' for {timeout:g}s' if timeout else ''} "
                                 f"(Ctrl-C to stop)\n")
                sys.stderr.flush()
            for item in channel.events(names, timeout):
                sys.stdout.write(format_event(item, json_out) + "\n")
                sys.stdout.flush()
                matched += 1
                if stop_after_first:
                    break
    except KeyboardInterrupt:
        return
    if matched == 0 and timeout is not None:
        what = " or ".join(sorted(names)) if names else "any"
        raise OperationTimeoutError(
            f"no {what} event from {target} within {timeout:g}s",
            hint="nothing matching happened; check the event name or wait longer")


def register(app: typer.Typer) -> None:
    app.command("events")(events_cmd)
