"""``kvmops user``: API users, roles and tokens in the kvmops database."""

from __future__ import annotations

import getpass
import sys

import typer

from kvmops.cli.common import JsonOption
from kvmops.cli.output import info, print_json, print_table
from kvmops.cli.serve import DbOption
from kvmops.errors import ValidationError
from kvmops.services import users as user_service
from kvmops.services.caller import Caller

app = typer.Typer(help="API users, roles (admin, operator, viewer) and tokens.",
                  no_args_is_help=True)

RoleOption = typer.Option(..., "--role", help="admin, operator or viewer.")
StdinOption = typer.Option(False, "--password-stdin",
                           help="Read the password from the first line of stdin.")


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="user")


def _read_password(from_stdin: bool) -> str:
    if from_stdin:
        line = sys.stdin.readline()
        password = line.rstrip("\r\n")
        if not password:
            raise ValidationError("no password on stdin")
        return password
    if not sys.stdin.isatty():
        raise ValidationError("no terminal to prompt for a password",
                              hint="use --password-stdin")
    first = getpass.getpass("Password: ")
    if first != getpass.getpass("Repeat: "):
        raise ValidationError("the passwords differ")
    return first


@app.command("add")
def add(name: str = typer.Argument(..., help="User name."), role: str = RoleOption,
        password_stdin: bool = StdinOption, db: str | None = DbOption) -> None:
    """Add a user (prompts for the password unless --password-stdin)."""
    user_service.check_new_user(name, role)
    password = _read_password(password_stdin)
    user_service.add(Caller.local(), db, name, role, password)
    info(f"user '{name}' added with role {role}")


@app.command("passwd")
def passwd(name: str = typer.Argument(..., help="User name."),
           password_stdin: bool = StdinOption, db: str | None = DbOption) -> None:
    """Set a user's password (ends the user's sessions)."""
    password = _read_password(password_stdin)
    user_service.set_password(Caller.local(), db, name, password)
    info(f"password of '{name}' changed")


@app.command("list")
def list_(json_out: bool = JsonOption, db: str | None = DbOption) -> None:
    """List users with their roles and token counts."""
    found = user_service.list_users(Caller.local(), db)
    if json_out:
        print_json([{"name": u.name, "role": u.role, "created_at": u.created_at.isoformat(),
                     "tokens": u.tokens} for u in found])
        return
    print_table(["NAME", "ROLE", "TOKENS", "CREATED"],
                [(u.name, u.role, u.tokens, u.created_at.strftime("%Y-%m-%d %H:%M"))
                 for u in found])


@app.command("delete")
def delete(name: str = typer.Argument(..., help="User name."), db: str | None = DbOption
           ) -> None:
    """Delete a user with its tokens and sessions."""
    user_service.delete(Caller.local(), db, name)
    info(f"user '{name}' deleted")


@app.command("token")
def token(name: str = typer.Argument(..., help="User name."), db: str | None = DbOption,
          revoke: bool = typer.Option(False, "--revoke-all",
                                      help="Revoke all tokens of the user instead.")) -> None:
    """Print a new API token for the user (its last line; shown only once)."""
    if revoke:
        count = user_service.revoke_tokens(Caller.local(), db, name)
        info(f"revoked {count} token(s) of '{name}'")
        return
    new = user_service.new_token(Caller.local(), db, name)
    sys.stderr.write(f"new API token for '{name}' (shown only once; send it as "
                     "'Authorization: Bearer TOKEN'):\n")
    sys.stdout.write(new + "\n")
    sys.stdout.flush()
