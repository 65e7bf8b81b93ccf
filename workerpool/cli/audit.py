"""``workerpool audit``: the audit trail, newest first (who did what, from where)."""

from __future__ import annotations

from datetime import datetime

import click

from workerpool.cli import cli
from workerpool.cli.output import client, emit_json, table
from workerpool.core import audit
from workerpool.core.printable import printable


@cli.command("audit")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(min=1),
              help="Show at most this many entries.")
@click.option("--json", "as_json", is_flag=True)
def audit_command(limit: int, as_json: bool) -> None:
    """The latest audit entries, newest first: console logins and changes."""
    c = client()
    entries = c.guard(lambda: audit.read(c.redis, limit))
    if as_json:
        emit_json([audit.to_json(entry) for entry in entries])
        return
    table(["TIME", "WHO", "ROLE", "ACTION", "TARGET", "OUTCOME", "DETAIL"],
          [[_when(e.time), *map(_cell, (e.who, e.role, e.action, e.target, e.outcome,
                                         e.detail))]
           for e in entries])


def _cell(text: str) -> str:
    """*text* on one line, its control characters shown: a newline in a value must not make
    what looks like another entry."""
    return printable(text).replace("\n", "\\n").replace("\t", "\\t")


def _when(timestamp: float) -> str:
    if not timestamp:
        return "-"
    return datetime.fromtimestamp(timestamp).strftime("%Y-%m-%d %H:%M:%S")
