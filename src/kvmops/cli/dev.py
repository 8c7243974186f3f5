"""`kvmops dev` commands (placeholder until implemented)."""

import typer

app = typer.Typer(help="dev commands", no_args_is_help=True)
