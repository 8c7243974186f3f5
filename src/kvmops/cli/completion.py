"""``kvmops completion SHELL``: print the shell completion script.

The script asks ``kvmops`` itself for completions (Click's completion protocol, through
Typer), so sub-commands, options and choices always match the installed version::

    kvmops completion bash > /etc/bash_completion.d/kvmops
    kvmops completion zsh > "${fpath[1]}/_kvmops"
    kvmops completion fish > ~/.config/fish/completions/kvmops.fish
"""

from __future__ import annotations

import enum
import sys

import typer

PROG = "kvmops"
COMPLETE_VAR = "_KVMOPS_COMPLETE"


class Shell(enum.StrEnum):
    bash = "bash"
    zsh = "zsh"
    fish = "fish"


def script(shell: str) -> str:
    """The completion script for ``shell``."""
    from typer.completion import get_completion_script  # type: ignore[attr-defined]

    return get_completion_script(prog_name=PROG, complete_var=COMPLETE_VAR, shell=shell)


def completion_cmd(shell: Shell = typer.Argument(..., help="bash, zsh or fish.")) -> None:
    """Print the shell completion script for bash, zsh or fish."""
    sys.stdout.write(script(shell.value).rstrip("\n") + "\n")


def register(root: typer.Typer) -> None:
    root.command("completion")(completion_cmd)
