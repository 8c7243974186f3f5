"""The ``kvmops`` command: a thin shell over the service functions.

Expected failures are ``KvmopsError``: printed as one line on stderr with the
error's exit code. Anything else is a bug and keeps its traceback only with
``KVMOPS_DEBUG=1``.

Start-up is kept near ``virsh``'s (bench/cli_startup.py): the command modules (and what
they import: pydantic, lxml, rich, the API, the database) load only when their command
runs, and a group is built with only the sub-command that runs.
:data:`COMMANDS` names every sub-command with its one-line help, so ``kvmops --help``
and shell completion list them without importing any of them.
"""

from __future__ import annotations

import copy
import importlib
import os
import sys
from typing import Any

import click.exceptions
import typer
import typer.core
import typer.main

from kvmops import __version__
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
    "host": ("kvmops.cli.host:app", "Facts about this host."),
    "vm": ("kvmops.cli.vm:app", "Create, start, stop and inspect VMs."),
    "image": ("kvmops.cli.image:app", "Create, inspect, convert and snapshot disk images."),
    "dev": ("kvmops.cli.dev:app", "Developer tools: build the tiny test guest."),
    "guest": ("kvmops.cli.guest:app", "Talk to the guest agent (qemu-ga) inside a VM."),
    "backup": ("kvmops.cli.backup:app", "Online backups, restore, verify and retention."),
    "snapshot": ("kvmops.cli.snapshot:app",
                 "VM snapshots: internal (with memory) and external (disk-only)."),
    "user": ("kvmops.cli.user:app", "API users, roles (admin, operator, viewer) and tokens."),
    "job": ("kvmops.cli.job:app", "Jobs of every long operation, whoever started it."),
    "net": ("kvmops.cli.net:app",
            "Virtual networks: NAT, routed, isolated, host bridge, Open vSwitch."),
    "config": ("kvmops.cli.config:app",
               "The effective configuration and where each value comes from."),
    "completion": ("kvmops.cli.completion:register",
                   "Print the shell completion script for bash, zsh or fish."),
}


def load_command(name: str, only: str | None = None) -> Any:
    """Import the module behind ``name`` and build its click command (a group or one
    command), exactly as ``add_typer``/``command`` would have at start-up.

    ``only``: the sub-command about to run; a group is then built with just that one
    (building a group's every command is most of the time Typer takes), unless it has
    no sub-command of that name (the full group then says so, with suggestions)."""
    module_name, attr = COMMANDS[name][0].split(":")
    obj = getattr(importlib.import_module(module_name), attr)
    holder = typer.Typer()
    if isinstance(obj, typer.Typer):
        holder.add_typer(_only(obj, only) if only else obj, name=name)
    else:
        obj(holder)
    command = typer.main.get_group(holder).commands[name]
    if _CLICK_SUGGESTS:
        _no_second_suggestion(command)
    return command


def _only(group: typer.Typer, name: str) -> typer.Typer:
    """``group`` with only its sub-command (or sub-group) ``name``; ``group`` itself when
    it has none of that name."""
    commands = [c for c in group.registered_commands
                if (c.name or (c.callback and typer.main.get_command_name(c.callback.__name__)))
                == name]
    groups = [g for g in group.registered_groups if g.name == name]
    if not commands and not groups:
        return group
    trimmed = copy.copy(group)
    trimmed.registered_commands = commands
    trimmed.registered_groups = groups
    return trimmed


# Click 8.4+ names close matches of an unknown sub-command itself (NoSuchCommand); Typer's
# groups would add the same "Did you mean" a second time.
_CLICK_SUGGESTS = hasattr(click.exceptions, "NoSuchCommand")


def _no_second_suggestion(command: Any) -> None:
    if isinstance(command, typer.core.TyperGroup):
        command.suggest_commands = False
        for sub in command.commands.values():
            _no_second_suggestion(sub)


class LazyGroup(typer.core.TyperGroup):
    """The root group: sub-commands from :data:`COMMANDS`, imported on first use.

    Listing them (help, completion) uses stand-ins that carry only the help line."""

    _listing = False
    _next: str | None = None  # the word after the command being resolved, to run it

    def list_commands(self, ctx: Any) -> list[str]:
        return [*COMMANDS, *(n for n in self.commands if n not in COMMANDS)]

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        if cmd_name in self.commands or cmd_name not in COMMANDS:
            return self.commands.get(cmd_name)
        if self._listing:
            return typer.core.TyperCommand(cmd_name, help=COMMANDS[cmd_name][1])
        if self._next is not None:  # about to run: built with only that sub-command
            return load_command(cmd_name, self._next)
        self.commands[cmd_name] = command = load_command(cmd_name)
        return command

    def _listed(self, method: Any, *args: Any) -> Any:
        self._listing = True
        try:
            return method(*args)
        finally:
            self._listing = False

    def format_help(self, ctx: Any, formatter: Any) -> None:
        self._listed(super().format_help, ctx, formatter)

    def shell_complete(self, ctx: Any, incomplete: str) -> Any:
        return self._listed(super().shell_complete, ctx, incomplete)

    def resolve_command(self, ctx: Any, args: list[str]) -> Any:
        if len(args) > 1 and not ctx.resilient_parsing and not args[1].startswith("-"):
            self._next = args[1]
        try:
            # Click's own lookup (Typer's would suggest from loaded commands only)
            return super(typer.core.TyperGroup, self).resolve_command(ctx, args)
        except Exception as err:
            message = getattr(err, "message", None)
            if isinstance(message, str) and args:
                from difflib import get_close_matches

                matches = get_close_matches(args[0], self.list_commands(ctx))
                if matches:
                    err.message = (message.rstrip(".") + ". Did you mean "  # type: ignore
                                   + ", ".join(repr(m) for m in matches) + "?")
            raise
        finally:
            self._next = None


def _version(value: bool) -> None:
    if value:
        sys.stdout.write(f"kvmops {__version__}\n")
        raise typer.Exit()


app = typer.Typer(
    name="kvmops",
    cls=LazyGroup,
    help="Run and operate KVM/QEMU virtual machines.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    suggest_commands=False,
)


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", "-V", is_eager=True, callback=_version,
                                 help="Print the version and exit."),
) -> None:
    """Run and operate KVM/QEMU virtual machines."""


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


def run() -> None:
    """Console-script entry point: every failure is one line on stderr with its code."""
    debug = os.environ.get("KVMOPS_DEBUG") == "1"
    if os.environ.get("_KVMOPS_COMPLETE"):  # a completion script asks (kvmops completion)
        from typer.completion import completion_init  # type: ignore[attr-defined]

        completion_init()
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
