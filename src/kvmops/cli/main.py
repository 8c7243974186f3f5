"""The ``kvmops`` command: a thin shell over the service functions.

Expected failures are ``KvmopsError``: printed as one line on stderr with the
error's exit code. Anything else is a bug and keeps its traceback only with
``KVMOPS_DEBUG=1``.
"""

from __future__ import annotations

import os
import sys

import click
import typer

from kvmops.errors import KvmopsError

app = typer.Typer(
    name="kvmops",
    help="Run and operate KVM/QEMU virtual machines.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def _register() -> None:
    """Attach the command groups (imported here to keep start-up order obvious)."""
    from kvmops.cli import dev, host, image, vm

    app.add_typer(host.app, name="host")
    app.add_typer(vm.app, name="vm")
    app.add_typer(image.app, name="image")
    app.add_typer(dev.app, name="dev")
    for extra in ("guest", "qmp", "events", "backup", "snapshot"):
        _try_register(extra)


def _try_register(module: str) -> None:
    """Command groups added by later work register themselves through ``register(app)``."""
    import importlib

    try:
        mod = importlib.import_module(f"kvmops.cli.{module}")
    except ModuleNotFoundError as err:
        if err.name == f"kvmops.cli.{module}":
            return
        raise
    mod.register(app)


_register()


def _fail(message: str, code: int) -> None:
    sys.stderr.write(f"kvmops: error: {message}\n")
    sys.stderr.flush()
    raise SystemExit(code)


def run() -> None:
    """Console-script entry point."""
    debug = os.environ.get("KVMOPS_DEBUG") == "1"
    try:
        code = app(standalone_mode=False)
    except KvmopsError as err:
        if debug:
            raise
        _fail(str(err), err.exit_code)
    except click.exceptions.Abort:
        _fail("aborted", 130)
    except KeyboardInterrupt:
        _fail("interrupted", 130)
    except click.exceptions.Exit as err:
        raise SystemExit(err.exit_code) from None
    except click.ClickException as err:
        err.show()
        raise SystemExit(err.exit_code) from None
    except BrokenPipeError:
        raise SystemExit(0) from None
    if isinstance(code, int) and code:
        raise SystemExit(code)


if __name__ == "__main__":
    run()
