"""``kvmops top``: a live, sortable table of every VM (CPU %, memory, disk and network
rates, state, guest agent) in the style of virt-top; ``--once --json`` for scripts."""

from __future__ import annotations

import contextlib
import os
import select
import sys
import termios
import time
import tty
from collections.abc import Iterator
from typing import Any

import typer

from kvmops.services import top as service
from kvmops.services.caller import Caller

#: key -> sort name (virt-top's P, M, N and a few more); R turns the order round, q quits
KEYS = {"p": "cpu", "c": "cpu", "m": "memory", "r": "disk_read", "w": "disk_write",
        "x": "net_rx", "t": "net_tx", "n": "name", "s": "state", "h": "host", "a": "agent"}
HELP_LINE = ("P cpu  M mem  R/W disk  X/T net  N name  S state  H host  A agent  "
             "shift-R reverse  q quit")


def register(app: typer.Typer) -> None:
    app.command("top")(top_cmd)


def top_cmd(
    host: str | None = typer.Option(None, "--host", metavar="NAME|all",
                                    help="The host of 'kvmops host list' (default: the "
                                         "local host), or 'all'."),
    sort: str = typer.Option(service.DEFAULT_SORT, "--sort", metavar="COLUMN",
                             help="Sort by: " + ", ".join(service.SORT_KEYS) + "."),
    reverse: bool = typer.Option(False, "--reverse", help="The other way round."),
    delay: float = typer.Option(None, "--delay", "-d", metavar="S",
                                help="Seconds between refreshes (default 2; with --once "
                                     "between its two readings, default 1)."),
    once: bool = typer.Option(False, "--once",
                              help="Two readings --delay apart, print, exit."),
    json_out: bool = typer.Option(False, "--json", help="With --once: a JSON list."),
) -> None:
    """A live, sortable table of the VMs like virt-top: CPU %, memory, disk and network rates.

    CPU % is the share of the whole host (all its CPUs), as virt-top shows it; rates
    are per second. Keys sort the table (P cpu, M memory, R/W disk read/write, X/T
    network rx/tx, N name, S state, H host, A agent), shift-R reverses, q quits."""
    caller = Caller.local()
    if json_out and not once:
        from kvmops.errors import ValidationError

        raise ValidationError("--json needs --once", hint="kvmops top --once --json")
    if once:
        snap = service.once(caller, host, delay_s=delay if delay is not None else 1.0,
                            sort=sort, reverse=reverse)
        _print_once(snap, json_out)
        return
    _live(caller, host, sort, reverse, delay if delay is not None else 2.0)


def _print_once(snap: service.TopSnapshot, json_out: bool) -> None:
    from kvmops.cli import output

    for name, why in snap.errors.items():
        sys.stderr.write(f"kvmops: warning: host {name}: {why}\n")
    if json_out:
        output.print_json([row.model_dump(mode="json") for row in snap.rows])
        return
    output.console.print(_table(snap, "", False))


def _fmt_rate(value: float | None) -> str:
    return "-" if value is None else _fmt_bytes(value) + "/s"


def _fmt_bytes(value: float | None) -> str:
    if value is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(value) < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"  # pragma: no cover (the loop returns)


def _table(snap: service.TopSnapshot, sort: str, reverse: bool) -> Any:
    from rich.table import Table

    many_hosts = len({row.host for row in snap.rows} | set(snap.errors)) > 1
    table = Table(box=None, header_style="reverse", pad_edge=False, expand=False,
                  caption=time.strftime("%H:%M:%S", time.localtime(snap.at))
                  + (f"  {HELP_LINE}" if sort else ""), caption_justify="left")
    columns = [("NAME", "name", "left"), ("HOST", "host", "left"),
               ("STATE", "state", "left"), ("%CPU", "cpu", "right"),
               ("MEM", "memory", "right"), ("RD/s", "disk_read", "right"),
               ("WR/s", "disk_write", "right"), ("RX/s", "net_rx", "right"),
               ("TX/s", "net_tx", "right"), ("AGENT", "agent", "left")]
    for title, key, justify in columns:
        if key == "host" and not many_hosts:
            continue
        marker = (" ▲" if reverse else " ▼") if key == sort else ""
        table.add_column(title + marker, justify=justify)  # type: ignore[arg-type]
    for row in snap.rows:
        cells = [row.name] + ([row.host] if many_hosts else []) + [
            row.state, "-" if row.cpu_percent is None else f"{row.cpu_percent:.1f}",
            _fmt_bytes(row.memory_bytes), _fmt_rate(row.disk_read_bps),
            _fmt_rate(row.disk_write_bps), _fmt_rate(row.net_rx_bps),
            _fmt_rate(row.net_tx_bps), row.agent or "-"]
        table.add_row(*cells)
    for name, why in snap.errors.items():
        table.add_row(f"[red]host {name}: {why}[/red]")
    return table


@contextlib.contextmanager
def _keys() -> Iterator[int | None]:
    """stdin in cbreak mode (single key presses, no echo) when it is a terminal."""
    fd = sys.stdin.fileno() if sys.stdin is not None else -1
    if fd < 0 or not os.isatty(fd):
        yield None
        return
    saved = termios.tcgetattr(fd)
    try:
        tty.setcbreak(fd, termios.TCSANOW)
        yield fd
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def _wait_key(fd: int | None, timeout: float) -> str | None:
    if fd is None:
        time.sleep(timeout)
        return None
    ready, _, _ = select.select([fd], [], [], timeout)
    if not ready:
        return None
    data = os.read(fd, 16).decode(errors="replace")
    return data[:1] or "q"  # end of input quits


def _live(caller: Caller, host: str | None, sort: str, reverse: bool, delay: float) -> None:
    from rich.live import Live

    from kvmops.cli import output
    from kvmops.errors import ValidationError

    if not 0.1 <= delay <= 3600:
        raise ValidationError(f"--delay {delay:g}: out of range",
                              hint="give 0.1 to 3600 seconds")
    service.sort_rows([], sort)  # a bad --sort fails at once
    session = service.TopSession(caller, host)
    snap = session.refresh()  # no rates yet: the next refresh has them
    if not output.console.is_terminal:  # piped: one table per refresh, like virt-top --stream
        while True:
            time.sleep(delay)
            snap = session.refresh()
            snap.rows = service.sort_rows(snap.rows, sort, reverse=reverse)
            output.console.print(_table(snap, "", reverse))
            output.console.file.flush()
    with _keys() as fd, Live(_table(snap, sort, reverse), console=output.console,
                             auto_refresh=False, screen=fd is not None) as live:
        deadline = time.monotonic() + min(delay, 1.0)
        while True:
            key = _wait_key(fd, max(0.0, deadline - time.monotonic()))
            if key is not None:
                if key in ("q", "Q", "\x03", "\x04"):
                    return
                if key == "R":
                    reverse = not reverse
                elif key.lower() in KEYS:
                    sort = KEYS[key.lower()]
                snap.rows = service.sort_rows(snap.rows, sort, reverse=reverse)
                live.update(_table(snap, sort, reverse), refresh=True)
                continue
            snap = session.refresh()
            snap.rows = service.sort_rows(snap.rows, sort, reverse=reverse)
            live.update(_table(snap, sort, reverse), refresh=True)
            deadline = time.monotonic() + delay
