"""``kvmops serve``: the REST API (and web UI, when installed) over uvicorn."""

from __future__ import annotations

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
        help="Directory API requests may name paths in (repeatable; default the images "
             "directory and /var/lib/kvmops)."),
    workers: int = typer.Option(4, "--workers", min=1, max=64, help="Job threads."),
    secure_cookies: bool | None = typer.Option(
        None, "--secure-cookies/--no-secure-cookies",
        help="Mark session cookies Secure (default: when the request came over https)."),
    access_log: bool = typer.Option(False, "--access-log", help="Log every request."),
    login_attempts: int = typer.Option(
        5, "--login-attempts", min=1, max=1000,
        help="Failed log-ins allowed per user name and client address within "
             "--login-window; more are refused with 429 until the oldest ages out."),
    login_window: float = typer.Option(300.0, "--login-window", min=1.0, metavar="SECONDS",
                                       help="Window of the log-in throttle."),
) -> None:
    """Run the REST API server (OpenAPI docs at /docs)."""
    import uvicorn

    from kvmops.api import ApiSettings, create_app
    from kvmops.api.settings import default_allowed_dirs
    from kvmops.store import Store, users
    from kvmops.store.db import safe_url

    for directory in allow_dir:
        if not directory.is_absolute():
            raise ValidationError(f"--allow-dir {directory} must be an absolute path")
    settings = ApiSettings(db_url=db, uri=uri, workers=workers, secure_cookies=secure_cookies,
                           allowed_dirs=list(allow_dir) or default_allowed_dirs(),
                           login_max_failures=login_attempts, login_window=login_window)
    store = Store(db)
    try:
        store.migrate()
        password = users.ensure_initial_admin(store)
    finally:
        store.close()
    if password is not None:
        sys.stdout.write(
            "\n"
            "  First start on an empty database: created user 'admin' (role admin).\n"
            f"  One-time password: {password}\n"
            "  It is shown only now. Log in and change it (POST /api/v1/me/password), or\n"
            "  set one with: kvmops user passwd admin\n\n")
        sys.stdout.flush()
    sys.stdout.write(f"kvmops API on http://{host}:{port}/api/v1 (docs at /docs), "
                     f"database {safe_url(store.url)}\n")
    sys.stdout.flush()
    app = create_app(settings)
    config = uvicorn.Config(app, host=host, port=port, log_level="info",
                            access_log=access_log, timeout_graceful_shutdown=3,
                            server_header=False)
    uvicorn.Server(config).run()
