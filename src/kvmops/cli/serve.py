"""``kvmops serve``: the REST API (and web UI, when installed) over uvicorn."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import typer

from kvmops.errors import ValidationError

DbOption = typer.Option(None, "--db", envvar="KVMOPS_DB", metavar="URL",
                        help="Database URL (default sqlite under the state dir; "
                             "postgresql://user@host/db for PostgreSQL).")


def register(root: typer.Typer) -> None:
    root.command("serve")(serve)


def serve(
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on."),
    port: int = typer.Option(8080, "--port", min=1, max=65535, help="TCP port."),
    db: str | None = DbOption,
    uri: str | None = typer.Option(None, "--connect", "-c", envvar="KVMOPS_URI",
                                   help="libvirt URI (default qemu:///system)."),
    allow_dir: list[Path] = typer.Option(
        [], "--allow-dir", metavar="DIR",
        help="Another image directory API callers may name disks, kernels, ISOs and "
             "restore targets in (repeatable; added to image_dirs of the configuration)."),
    backup_dir: list[Path] = typer.Option(
        [], "--backup-dir", metavar="DIR",
        help="Another directory API callers may keep backup repositories in (repeatable; "
             "added to backup_dirs)."),
    forwarded_allow_ips: str = typer.Option(
        "", "--forwarded-allow-ips", metavar="IPS",
        help="Comma-separated addresses of reverse proxies whose X-Forwarded-For/-Proto "
             "are believed (default none: the peer address is the client)."),
    max_body: int = typer.Option(1024 * 1024, "--max-body", min=4096, metavar="BYTES",
                                 help="Largest request body (guest pushes excepted)."),
    workers: int = typer.Option(4, "--workers", min=1, max=64, help="Job threads."),
    secure_cookies: bool | None = typer.Option(
        None, "--secure-cookies/--no-secure-cookies",
        help="Mark session cookies Secure (default: when the request came over https)."),
    access_log: bool = typer.Option(False, "--access-log", help="Log every request."),
    log_format: str | None = typer.Option(
        None, "--log-format", metavar="text|json",
        help="text (uvicorn's), or json: one object a line with time, level, logger, "
             "message and the request's fields, for a log shipper (default: log_format "
             "of the configuration, KVMOPS_LOG_FORMAT)."),
    login_attempts: int = typer.Option(
        5, "--login-attempts", min=1, max=1000,
        help="Failed log-ins allowed per user name and client address within "
             "--login-window; more are refused with 429 until the oldest ages out."),
    login_window: float = typer.Option(300.0, "--login-window", min=1.0, metavar="SECONDS",
                                       help="Window of the log-in throttle."),
) -> None:
    """Run the REST API server (OpenAPI docs at /docs)."""
    import uvicorn
    from uvicorn.config import LOGGING_CONFIG

    from kvmops import logs
    from kvmops.api import ApiSettings, create_app
    from kvmops.config import LOG_FORMATS
    from kvmops.config import settings as settings_now
    from kvmops.paths import policy
    from kvmops.services.database import prepare_for_server

    for option, directories, variable in (("--allow-dir", allow_dir, "KVMOPS_IMAGE_DIRS"),
                                          ("--backup-dir", backup_dir, "KVMOPS_BACKUP_DIRS")):
        for directory in directories:
            if not directory.is_absolute():
                raise ValidationError(f"{option} {directory} must be an absolute path")
        if directories:
            # One source of truth for this process and the backup workers it starts.
            configured = settings_now().image_dirs if variable == "KVMOPS_IMAGE_DIRS" \
                else settings_now().backup_dirs
            os.environ[variable] = os.pathsep.join(
                str(d) for d in dict.fromkeys([*configured, *directories]))
    policy()  # ConfigError (exit 78) when the state directory would be reachable
    log_format = log_format or settings_now().log_format
    if log_format not in LOG_FORMATS:
        raise ValidationError(f"--log-format {log_format}: not a log format",
                              hint=f"use one of {', '.join(LOG_FORMATS)}")
    logs.configure(log_format)
    proxies = [ip.strip() for ip in forwarded_allow_ips.split(",") if ip.strip()]
    settings = ApiSettings(db_url=db, uri=uri, workers=workers, secure_cookies=secure_cookies,
                           login_max_failures=login_attempts, login_window=login_window,
                           forwarded_allow_ips=proxies, max_body=max_body)
    database = prepare_for_server(db)
    password = database.initial_admin_password
    if password is not None:
        sys.stdout.write(
            "\n"
            "  First start on an empty database: created user 'admin' (role admin).\n"
            f"  One-time password: {password}\n"
            "  It is shown only now. Log in and change it (POST /api/v1/me/password), or\n"
            "  set one with: kvmops user passwd admin\n\n")
        sys.stdout.flush()
    started = (f"kvmops API on http://{host}:{port}/api/v1 (docs at /docs), "
               f"database {database.url}")
    if log_format == "json":
        logging.getLogger("kvmops.serve").info(started)
    else:
        sys.stdout.write(started + "\n")
        sys.stdout.flush()
    app = create_app(settings)
    config = uvicorn.Config(app, host=host, port=port, log_level="info",
                            access_log=access_log, timeout_graceful_shutdown=3,
                            server_header=False, proxy_headers=bool(proxies),
                            forwarded_allow_ips=",".join(proxies) or "",
                            log_config=logs.uvicorn_log_config(log_format) or LOGGING_CONFIG)
    uvicorn.Server(config).run()
