"""The ``kvmops`` command: a thin shell over the service functions.

Expected failures are ``KvmopsError``: printed as one line on stderr with the
error's exit code. Anything else is a bug and keeps its traceback only with
``KVMOPS_DEBUG=1``.
"""

from __future__ import annotations

import os
import sys

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
    for extra in ("guest", "qmp", "events", "backup", "snapshot", "serve", "user"):
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


INTERNAL_ERROR_EXIT = 70  # EX_SOFTWARE from sysexits.h


def run() -> None:
    """Console-script entry point (Typer handles usage errors and exits itself)."""
    debug = os.environ.get("KVMOPS_DEBUG") == "1"
    try:
        app()
    except KvmopsError as err:
        if debug:
            raise
        _fail(str(err), err.exit_code)
    except KeyboardInterrupt:
        _fail("interrupted", 130)
    except BrokenPipeError:
        raise SystemExit(0) from None
    except Exception as err:  # a bug: one line for the user, the traceback on request
        if debug:
            raise
        detail = " ".join(str(err).split())[:300]
        _fail(f"internal error ({type(err).__name__}: {detail}); this is a bug in kvmops: "
              "rerun with KVMOPS_DEBUG=1 to see the traceback and report it", INTERNAL_ERROR_EXIT)


if __name__ == "__main__":
    run()
