"""``kvmops exporter``: a standalone Prometheus exporter (no server, no authentication).

For hosts without ``kvmops serve``: the same series as the server's ``GET /metrics``
(without the API latency histogram), served by prometheus-client's own HTTP server on
``--listen`` (``HOST:PORT``, ``[V6]:PORT`` or ``:PORT`` for every address). Each scrape
asks every covered host at once, each within ``--deadline`` seconds.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from typing import Any

import typer

from kvmops.errors import StateError, ValidationError


def register(root: typer.Typer) -> None:
    root.command("exporter")(exporter)


def parse_listen(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:PORT``, ``:PORT``: every address) as (address, port)."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValidationError(f"--listen '{text}' is not ADDRESS:PORT",
                              hint="e.g. --listen 127.0.0.1:9177 or --listen :9177")
    host = host.strip("[]") or "0.0.0.0"  # ":PORT": every address
    return host, int(port)


def exporter(
    listen: str = typer.Option("127.0.0.1:9177", "--listen", metavar="ADDR:PORT",
                               help="Address and port to serve /metrics on (no "
                                    "authentication: keep it on a trusted network)."),
    host: str = typer.Option("all", "--host", metavar="NAME|all",
                             help="The host to export, or all the hosts kvmops manages."),
    deadline: float = typer.Option(5.0, "--deadline", min=0.5, max=120.0, metavar="S",
                                   help="How long a scrape waits for each host."),
    db: str | None = typer.Option(None, "--db", envvar="KVMOPS_DB", metavar="URL",
                                  help="Database with the hosts and jobs (default sqlite "
                                       "under the state dir)."),
) -> None:
    """Serve Prometheus metrics of the VMs of this host (or of every host kvmops manages)."""
    from prometheus_client import start_http_server

    from kvmops.services.caller import Caller
    from kvmops.services.metrics import MetricsSource, registry

    address, port = parse_listen(listen)
    store = _open_store(db)
    source = MetricsSource(Caller.local(), hosts=None if host == "all" else [host],
                           deadline_s=deadline, db=store if store is not None else db,
                           store=lambda: store)
    if host != "all":
        from kvmops.services.hosts import validate_name

        validate_name(host)
    try:
        started = start_http_server(port, address, registry=registry(source))
    except OSError as err:
        raise StateError(f"cannot listen on {listen}: {err.strerror or err}",
                         hint="is another exporter using that port? pick another with "
                              "--listen ADDR:PORT") from err
    print(f"serving metrics on http://{listen}/metrics (hosts: {host}, deadline "
          f"{deadline:g} s)", flush=True)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    if isinstance(started, tuple):  # (server, thread) since prometheus-client 0.17
        started[0].shutdown()
    sys.exit(0)


def _open_store(db: str | None) -> Any:
    """The database (migrated) for the host list and the job series; None when there is
    none to be had (the exporter then covers this machine without job series)."""
    from kvmops.config import settings
    from kvmops.services.database import open_database

    with contextlib.suppress(Exception):
        store = open_database(db or settings().db)
        if not store.at_head():
            store.migrate()
        return store
    return None
