"""Printing for people (tables) and machines (JSON)."""

from __future__ import annotations

import json
import signal
import threading
from collections.abc import Sequence
from datetime import datetime

import click

from workerpool.client import Client
from workerpool.core.printable import printable
from workerpool.core.settings import Settings


def client() -> Client:
    return Client(settings=Settings.from_env())


def echo(text: object = "", err: bool = False, raw: bool = False) -> None:
    """Print a line for people, its control characters made visible (``printable``): names,
    descriptions and step output may carry terminal escapes. *raw* prints it as it is, colours
    kept even when piped (click would strip them)."""
    if raw:
        click.echo(str(text), err=err, color=True)
    else:
        click.echo(printable(str(text)), err=err)


def emit_json(data: object) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=False))


def stop_on_signals() -> threading.Event:
    """An event that SIGINT (Ctrl-C) and SIGTERM set: a foreground command's warm stop."""
    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda signum, frame: stop.set())
    signal.signal(signal.SIGTERM, lambda signum, frame: stop.set())
    return stop


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    click.echo("\n".join(table_lines(headers, rows)))  # one write, not one per row


def table_lines(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> list[str]:
    """A table's lines: the headers, a rule, and the rows, their cells made printable."""
    cells = [[str(h) for h in headers]] + [["" if c is None else printable(str(c)) for c in r]
                                           for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
             for row in cells]
    return [lines[0], "  ".join("-" * w for w in widths), *lines[1:]]


def clock(timestamp: float | None) -> str:
    if not timestamp:
        return "-"
    return datetime.fromtimestamp(timestamp).strftime("%H:%M:%S")


def ago(timestamp: float | None, now: float) -> str:
    if not timestamp:
        return "never"
    return f"{max(0.0, now - timestamp):.1f}s ago"
