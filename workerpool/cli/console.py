"""``workerpool console-user``: add an account to the browser console's users file."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from workerpool.cli import cli
from workerpool.cli.output import echo
from workerpool.console.accounts import ROLES, check_name, save_user
from workerpool.core.errors import BadInput


@cli.command("console-user")
@click.argument("name")
@click.option("--role", required=True, type=click.Choice(ROLES),
              help="What the user may do: viewer reads, operator also acts, admin also "
                   "manages.")
@click.option("--file", "path", type=click.Path(dir_okay=False, path_type=Path),
              envvar="WORKERPOOL_WEB_USERS", show_envvar=True,
              help="The users file (the console's WORKERPOOL_WEB_USERS).")
@click.option("--password-stdin", is_flag=True,
              help="Read the password from the first line of stdin instead of a prompt.")
def console_user(name: str, role: str, path: Path | None, password_stdin: bool) -> None:
    """Add NAME to the console's users file, or give it a new role and password."""
    if path is None:
        raise BadInput("no console users file: set WORKERPOOL_WEB_USERS or pass --file PATH")
    check_name(name)  # before the password is typed, not after
    if password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = click.prompt("Password", hide_input=True, confirmation_prompt=True)
    save_user(path, name, role, password)
    echo(f"workerpool: user {name} ({role}) saved in {path}")
