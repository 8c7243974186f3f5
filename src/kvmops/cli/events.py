"""``kvmops events``: watch a VM's (or a hand-started QEMU's) QMP events, or with
``--lifecycle`` libvirt's VM life cycle events of one host or of every host."""

from __future__ import annotations

import json
import sys
from collections.abc import Set as AbstractSet
from pathlib import Path

import typer

from kvmops.cli.common import HostOption, UriOption, on_host
from kvmops.cli.qmp import SocketOption, TcpOption
from kvmops.errors import KvmopsError, OperationTimeoutError, ValidationError
from kvmops.services.caller import Caller
from kvmops.services.hostevents import HostEvent
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
    lifecycle: bool = typer.Option(
        False, "--lifecycle", help="libvirt's VM life cycle events (defined, started, "
                                   "stopped ...) of the host instead of one VM's QMP "
                                   "events; with --host all: of every host, each line "
                                   "naming its host."),
) -> None:
    """Print QMP events with their timestamps as QEMU sends them.

    With --event and no --follow it ends after the first matching event;
    otherwise it runs until Ctrl-C or --timeout. With --lifecycle: libvirt's life
    cycle events of the host (--host NAME, or all), a host lost or back as ``down`` /
    ``subscribed``.
    """
    if lifecycle:
        if vm is not None or socket is not None or tcp is not None:
            raise ValidationError("--lifecycle watches hosts, not one VM or QEMU",
                                  hint="drop the VM name / --socket / --tcp, or --lifecycle")
        _lifecycle(host_name, uri if host_name is None else on_host(uri, host_name,
                                                                     all_ok=True),
                   event, follow, timeout, json_out, quiet)
        return
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
                _say_listening(names, f"events from {channel.target}", timeout)
            for item in channel.events(names, timeout):
                sys.stdout.write(format_event(item, json_out) + "\n")
                sys.stdout.flush()
                matched += 1
                if stop_after_first:
                    break
    except KeyboardInterrupt:
        return
    if matched == 0 and timeout is not None:
        raise _nothing_matched(names, f"event from {target}", timeout)



def _say_listening(names: AbstractSet[str] | None, what: str, timeout: float | None) -> None:
    """The one stderr line before following: which events, from where, for how long."""
    which = ", ".join(sorted(names)) if names else "all"
    sys.stderr.write(f"listening for {which} {what}"
                     f"{f' for {timeout:g}s' if timeout else ''} (Ctrl-C to stop)\n")
    sys.stderr.flush()


def _nothing_matched(names: AbstractSet[str] | None, what: str, timeout: float) -> KvmopsError:
    which = " or ".join(sorted(names)) if names else "any"
    return OperationTimeoutError(
        f"no {which} {what} within {timeout:g}s",
        hint="nothing matching happened; check the event name or wait longer")

def format_lifecycle(event: HostEvent, as_json: bool) -> str:
    """One line: JSON or ``TIMESTAMP  HOST  EVENT  VM`` (a host's ``down``: the reason)."""
    if as_json:
        return json.dumps(event.to_dict(), separators=(",", ":"))
    stamp = event.time.astimezone().isoformat(sep=" ", timespec="milliseconds")
    what = event.vm if event.vm is not None else (event.error or "")
    return f"{stamp}  {event.host}  {event.event}  {what}".rstrip()


def _lifecycle(host: str | None, uri: str | None, event: list[str], follow: bool,
               timeout: float | None, json_out: bool, quiet: bool) -> None:
    import time

    from kvmops.services.hostevents import LIFECYCLE_NAMES, follow_lifecycle

    if timeout is not None and timeout <= 0:
        raise ValidationError(f"--timeout must be positive, got {timeout:g}")
    names = {e.strip().lower() for e in event if e.strip()} or None
    if names is not None and names - set(LIFECYCLE_NAMES):
        raise ValidationError(f"unknown life cycle event(s): "
                              f"{', '.join(sorted(names - set(LIFECYCLE_NAMES)))}",
                              hint=f"use {', '.join(LIFECYCLE_NAMES)}")
    stop_after_first = names is not None and not follow
    end = None if timeout is None else time.monotonic() + timeout
    matched = 0
    try:
        with follow_lifecycle(Caller.local(), host, local_uri=uri) as (next_event, hosts):
            if not quiet:
                _say_listening(names, f"life cycle events of {', '.join(hosts)}", timeout)
            while True:
                left = None if end is None else end - time.monotonic()
                if left is not None and left <= 0:
                    break
                item = next_event(left)
                if item is None:
                    continue
                if names is not None and item.event not in names:
                    continue
                sys.stdout.write(format_lifecycle(item, json_out) + "\n")
                sys.stdout.flush()
                matched += 1
                if stop_after_first:
                    break
    except KeyboardInterrupt:
        return
    if matched == 0 and timeout is not None:
        raise _nothing_matched(names, "life cycle event", timeout)


def register(app: typer.Typer) -> None:
    app.command("events")(events_cmd)
