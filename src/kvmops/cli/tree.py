"""The Typer app behind ``kvmops``: the root group whose sub-commands
(:data:`kvmops.cli.main.COMMANDS`) are imported on first use.

Apart from :mod:`kvmops.cli.main` so that the quick commands (:mod:`kvmops.cli.quick`)
run without Typer or Click.
"""

from __future__ import annotations

import copy
import importlib
import sys
from typing import Any

import click.exceptions
import typer
import typer.core
import typer.main

from kvmops import __version__
from kvmops.cli.main import COMMANDS


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


