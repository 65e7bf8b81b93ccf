"""``--watch``: a view printed again every few seconds, redrawn in place on a terminal."""

from __future__ import annotations

import math
import os
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import click

HOME = "\x1b[H"  # the cursor to the screen's top left
ERASE_LINE = "\x1b[K"  # from the cursor to the line's end
ERASE_BELOW = "\x1b[J"  # from the cursor to the screen's end
DEFAULT_INTERVAL = 2.0
LONGEST_INTERVAL = 86400.0  # a day; time.sleep overflows far beyond


class Interval(click.types.FloatParamType):
    """Seconds between two views: a number above 0, at most a day."""

    name = "seconds"

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> float:
        try:
            seconds = float(value)
        except (TypeError, ValueError):
            seconds = math.nan
        if not 0 < seconds <= LONGEST_INTERVAL:  # also false for nan
            self.fail(f"{value!r} is not a number of seconds above 0 and at most "
                      f"{LONGEST_INTERVAL:g}", param, ctx)
        return seconds


def frame(lines: Sequence[str], terminal: bool, first: bool, rows: int = 24,
          columns: int = 80) -> str:
    """One view's text. On a terminal it is drawn from the screen's top, each line erased to
    its end and the screen below it, so it replaces the last view without a flicker; it is
    cut to the screen (*rows*, *columns*) so that it never scrolls. Elsewhere (a pipe, a file)
    it follows the last view, a blank line between."""
    if not terminal:
        return ("" if first else "\n") + "".join(f"{line}\n" for line in lines)
    rows, columns = max(rows, 3), max(columns, 1)
    if len(lines) >= rows:
        hidden = len(lines) - (rows - 2)
        lines = [*lines[:rows - 2], f"... {hidden} more lines: a taller terminal shows them"]
    return HOME + "".join(f"{line[:columns]}{ERASE_LINE}\n" for line in lines) + ERASE_BELOW


def watch(view: Callable[[], list[str]], interval: float) -> None:
    """Print *view()* every *interval* seconds until Ctrl-C, then return (exit 0)."""
    terminal = sys.stdout.isatty()
    first = True
    try:
        while True:
            began = time.monotonic()
            size = shutil.get_terminal_size()
            click.echo(frame(view(), terminal, first, size.lines, size.columns), nl=False)
            first = False
            time.sleep(max(0.0, interval - (time.monotonic() - began)))
    except KeyboardInterrupt:
        return
    except BrokenPipeError:  # `status --watch | head`: the reader has gone, and so do we
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
