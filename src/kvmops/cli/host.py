"""`kvmops host` commands."""

import typer

app = typer.Typer(help="host commands", no_args_is_help=True)
