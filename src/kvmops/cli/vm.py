"""`kvmops vm` commands."""

import typer

app = typer.Typer(help="vm commands", no_args_is_help=True)
