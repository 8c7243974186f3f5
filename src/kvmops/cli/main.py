"""The ``kvmops`` command: a thin shell over the service functions.

Expected failures are ``KvmopsError``: printed as one line on stderr with the
error's exit code. Anything else is a bug and keeps its traceback only with
``KVMOPS_DEBUG=1``.

Start-up is kept near ``virsh``'s (bench/cli_startup.py): ``kvmops vm list``, ``vm info``
and ``guest exec`` in their plain forms run without Typer or Click
(:mod:`kvmops.cli.quick`); every other command line goes to the Typer app
(:mod:`kvmops.cli.tree`), whose command modules (and what they import: pydantic, lxml,
rich, the API, the database) load only when their command runs.
:data:`COMMANDS` names every sub-command with its one-line help, so ``kvmops --help``
and shell completion list them without importing any of them.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from kvmops.errors import KvmopsError

# name -> ("module:attr", one-line help). ``attr`` is a Typer app (a command group),
# or ``register``: a function that adds the module's command(s) to a Typer app.
# tests/unit/test_cli_imports.py checks that each help line is the command's own.
COMMANDS: dict[str, tuple[str, str]] = {
    "qmp": ("kvmops.cli.qmp:register",
            "Run one QMP command and print its return value as JSON (or HMP text with "
            "--hmp)."),
    "events": ("kvmops.cli.events:register",
               "Print QMP events with their timestamps as QEMU sends them."),
    "serve": ("kvmops.cli.serve:register", "Run the REST API server (OpenAPI docs at /docs)."),
    "top": ("kvmops.cli.top:register",
            "A live, sortable table of the VMs like virt-top: CPU %, memory, disk and "
            "network rates."),
    "exporter": ("kvmops.cli.exporter:register",
                 "Serve Prometheus metrics of the VMs of this host (or of every host kvmops "
                 "manages)."),
    "host": ("kvmops.cli.host:app", "Facts about this host; the hosts kvmops manages."),
    "vm": ("kvmops.cli.vm:app", "Create, start, stop and inspect VMs."),
    "image": ("kvmops.cli.image:app", "Create, inspect, convert and snapshot disk images."),
    "dev": ("kvmops.cli.dev:app", "Developer tools: the tiny test guest, a second host."),
    "guest": ("kvmops.cli.guest:app", "Talk to the guest agent (qemu-ga) inside a VM."),
    "backup": ("kvmops.cli.backup:app", "Online backups, restore, verify and retention."),
    "snapshot": ("kvmops.cli.snapshot:app",
                 "VM snapshots: internal (with memory) and external (disk-only)."),
    "user": ("kvmops.cli.user:app", "API users, roles (admin, operator, viewer) and tokens."),
    "job": ("kvmops.cli.job:app", "Jobs of every long operation, whoever started it."),
    "net": ("kvmops.cli.net:app",
            "Virtual networks: NAT, routed, isolated, host bridge, Open vSwitch."),
    "sriov": ("kvmops.cli.sriov:app",
              "SR-IOV: PFs, VF counts, VF pools for VM NICs, reconcile."),
    "pool": ("kvmops.cli.pool:app",
             "Storage pools: dir, fs, iscsi-direct, netfs, logical, rbd."),
    "volume": ("kvmops.cli.volume:app",
               "Volumes of storage pools: create, clone, resize, upload, download."),
    "config": ("kvmops.cli.config:app",
               "The effective configuration and where each value comes from."),
    "monitoring": ("kvmops.cli.monitoring:app",
                   "Print the shipped Prometheus alert rules and Grafana dashboard."),
    "completion": ("kvmops.cli.completion:register",
                   "Print the shell completion script for bash, zsh or fish."),
}


def __getattr__(name: str) -> Any:
    """The Typer side (``app``, ``LazyGroup``, ``load_command``; ``typer``), imported on
    first use."""
    if name == "typer":
        import typer.main

        return typer
    if name in ("app", "LazyGroup", "load_command"):
        from kvmops.cli import tree

        return getattr(tree, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _fail(message: str, code: int) -> None:
    sys.stderr.write(f"kvmops: error: {message}\n")
    sys.stderr.flush()
    raise SystemExit(code)


INTERNAL_ERROR_EXIT = 70  # EX_SOFTWARE from sysexits.h
INTERRUPTED_EXIT = 130  # 128 + SIGINT, as shells report it
USAGE_EXIT = 2


def _is_usage_error(err: BaseException) -> bool:
    """Click's exceptions, recognised by their interface (whatever module raised them)."""
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


def _is_libvirt_missing(err: ImportError) -> bool:
    return (err.name or "").split(".")[0] in ("libvirt", "libvirtmod", "libvirt_qemu",
                                              "libvirtmod_qemu") \
        or "libvirt" in str(err)


def libvirt_missing(err: ImportError) -> KvmopsError:
    """The one line for a host whose libvirt Python binding is missing or broken (pip
    builds libvirt-python from source: it needs libvirt-dev and pkg-config)."""
    from kvmops.errors import HostUnavailableError

    detail = " ".join(str(err).split())
    return HostUnavailableError(
        f"the libvirt Python binding cannot be loaded ({detail})",
        hint="install it: 'apt install libvirt-dev pkg-config gcc python3-dev' then "
             "'pip install libvirt-python' in kvmops' environment (or 'apt install "
             "python3-libvirt' for the system Python)")


def _run_typer(args: list[str]) -> Any:
    """Every command line but the quick ones: the Typer app."""
    import typer.main

    from kvmops.cli.tree import app

    if os.environ.get("_KVMOPS_COMPLETE"):  # a completion script asks (kvmops completion)
        from typer.completion import completion_init  # type: ignore[attr-defined]

        completion_init()
    command = typer.main.get_command(app)
    try:
        return command.main(args=args, prog_name="kvmops", standalone_mode=False)
    except typer.Abort:
        raise KeyboardInterrupt from None


def run() -> None:
    """Console-script entry point: every failure is one line on stderr with its code."""
    debug = os.environ.get("KVMOPS_DEBUG") == "1"
    args = sys.argv[1:]
    try:
        from kvmops.cli.quick import quick_command

        quick = None if os.environ.get("_KVMOPS_COMPLETE") else quick_command(args)
        result = quick() if quick is not None else _run_typer(args)
    except KvmopsError as err:
        if debug:
            raise
        _fail(str(err), err.exit_code)
    except KeyboardInterrupt:
        _fail("interrupted", INTERRUPTED_EXIT)
    except BrokenPipeError:
        raise SystemExit(0) from None
    except ImportError as err:
        if not _is_libvirt_missing(err):
            raise
        if debug:
            raise
        missing = libvirt_missing(err)
        _fail(str(missing), missing.exit_code)
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
