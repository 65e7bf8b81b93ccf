"""``printable``: every control character a terminal would act on is shown, not sent."""

from __future__ import annotations

from workerpool.core.printable import printable


def test_escape_sequences_become_visible_text():
    assert printable("\x1b[31mred\x1b[0m") == "\\x1b[31mred\\x1b[0m"
    assert printable("\x1b]52;c;cHduZWQ=\x07") == "\\x1b]52;c;cHduZWQ=\\x07"
    assert printable("\x1b[1A\x1b[2K") == "\\x1b[1A\\x1b[2K"


def test_carriage_returns_c1_del_and_bidi_overrides_are_shown():
    assert printable("Failed\rSuccess") == "Failed\\rSuccess"
    assert printable("\x9b31m\x9d0;t\x07") == "\\x9b31m\\x9d0;t\\x07"
    assert printable("a\x7fb\x00c") == "a\\x7fb\\x00c"
    assert printable("\u202eevil\u2066x\u2069") == "\\u202eevil\\u2066x\\u2069"


def test_tabs_newlines_and_ordinary_text_are_kept():
    text = "col1\tcol2\nnext line: caf\u00e9 \u4e2d\u6587 \\x1b stays a backslash"
    assert printable(text) == text


def test_exactly_the_controls_are_escaped_across_the_basic_plane():
    controls = {*range(0x00, 0x20), *range(0x7F, 0xA0), *range(0x202A, 0x202F),
                *range(0x2066, 0x206A)} - {0x09, 0x0A}
    changed = {c for c in range(0x10000) if not 0xD800 <= c < 0xE000
               and printable(chr(c)) != chr(c)}
    assert changed == controls
    assert [printable(chr(c)) for c in (0x00, 0x0B, 0x0C, 0x1F, 0x85, 0x2066)] == \
        ["\\x00", "\\x0b", "\\x0c", "\\x1f", "\\x85", "\\u2066"]


def test_output_holds_no_control_character_whatever_the_input():
    text = "".join(map(chr, range(0x3000)))
    shown = printable(text)
    assert [c for c in shown if ord(c) < 0x20 and c not in "\t\n"] == []
    assert [c for c in shown if 0x7F <= ord(c) < 0xA0 or ord(c) in (0x202E, 0x2067)] == []
    assert shown.count("\n") == 1 and shown.count("\t") == 1
