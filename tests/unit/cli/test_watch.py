"""``status --watch``: a view redrawn in place on a terminal, views one after another
elsewhere; the interval's checks."""

from __future__ import annotations

import click
import pytest

from workerpool.cli.watch import ERASE_BELOW, ERASE_LINE, HOME, Interval, frame


def test_views_follow_each_other_a_blank_line_between_when_not_a_terminal():
    first = frame(["header", "", "POOL  QUEUED"], terminal=False, first=True)
    later = frame(["header"], terminal=False, first=False)
    assert first == "header\n\nPOOL  QUEUED\n"
    assert later == "\nheader\n"
    assert "\x1b" not in first + later


def test_a_terminal_view_is_drawn_from_the_top_and_erases_the_last_one():
    drawn = frame(["one", "two"], terminal=True, first=False, rows=24, columns=80)
    assert drawn == f"{HOME}one{ERASE_LINE}\ntwo{ERASE_LINE}\n{ERASE_BELOW}"


def test_a_terminal_view_is_cut_to_the_screen_so_it_never_scrolls():
    drawn = frame([f"line {n} " + "x" * 100 for n in range(30)], terminal=True, first=True,
                  rows=10, columns=40)
    lines = drawn.removeprefix(HOME).removesuffix(ERASE_BELOW).split("\n")
    assert lines[-1] == ""  # the view ends with a newline ...
    shown = [line.removesuffix(ERASE_LINE) for line in lines[:-1]]
    assert len(shown) == 9  # ... on the screen's last row, so nothing scrolls
    assert shown[-1].startswith("... 22 more lines: a taller")
    assert all(len(line) <= 40 for line in shown)


@pytest.mark.parametrize("text, seconds", [("0.2", 0.2), ("2", 2.0), ("86400", 86400.0)])
def test_an_interval_is_a_number_of_seconds(text, seconds):
    assert Interval().convert(text, None, None) == seconds


@pytest.mark.parametrize("text", ["0", "-1", "abc", "", "nan", "inf", "1e9", "0x10"])
def test_a_bad_interval_is_refused(text):
    with pytest.raises(click.BadParameter, match="is not a number of seconds above 0"):
        Interval().convert(text, None, None)
