"""The ``kvmops`` command: a thin shell over the service functions.

Expected failures are ``KvmopsError``: printed as one line on stderr with the
error's exit code. Anything else is a bug and keeps its traceback only with
``KVMOPS_DEBUG=1``.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import typer
import typer.main

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
INTERRUPTED_EXIT = 130  # 128 + SIGINT, as shells report it
USAGE_EXIT = 2


def _is_usage_error(err: BaseException) -> bool:
    """Click's (Typer's vendored click's) exceptions, recognised by their interface so
    that no private module is imported."""
    return hasattr(err, "format_message") and hasattr(err, "exit_code")


def _usage_error(err: Any) -> None:
    """A bad command line in the one-line format (never Typer's boxes)."""
    if type(err).__name__ == "NoArgsIsHelpError":  # ``kvmops vm``: the help, and success
        sys.stdout.write(err.format_message().rstrip() + "\n")
        raise SystemExit(0)
    ctx = getattr(err, "ctx", None)
    where = f"{ctx.command_path} --help" if ctx is not None else "kvmops --help"
    message = " ".join(err.format_message().split()).rstrip(".")
    _fail(f"{message}; see '{where}'", getattr(err, "exit_code", USAGE_EXIT))


def run() -> None:
    """Console-script entry point: every failure is one line on stderr with its code."""
    debug = os.environ.get("KVMOPS_DEBUG") == "1"
    command = typer.main.get_command(app)
    try:
        result = command.main(args=sys.argv[1:], prog_name="kvmops", standalone_mode=False)
    except KvmopsError as err:
        if debug:
            raise
        _fail(str(err), err.exit_code)
    except (KeyboardInterrupt, typer.Abort):
        _fail("interrupted", INTERRUPTED_EXIT)
    except BrokenPipeError:
        raise SystemExit(0) from None
    except Exception as err:  # a bug: one line for the user, the traceback on request
        if _is_usage_error(err):
            _usage_error(err)
        if debug:
            raise
        detail = " ".join(str(err).split())[:300]
        _fail(f"internal error ({type(err).__name__}: {detail}); this is a bug in kvmops: "
              "rerun with KVMOPS_DEBUG=1 to see the traceback and report it", INTERNAL_ERROR_EXIT)
    if result == INTERRUPTED_EXIT:  # Typer turns a Ctrl-C inside a command into 130
        _fail("interrupted", INTERRUPTED_EXIT)
    raise SystemExit(result if isinstance(result, int) else 0)


if __name__ == "__main__":
    run()
