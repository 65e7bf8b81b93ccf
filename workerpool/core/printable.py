"""Text made safe to show on a terminal: every control character made visible.

Step output, pool descriptions and names are written by people and scripts that may be
hostile. On a terminal, ESC sequences move the cursor, erase lines, set the window title or
(OSC 52) write the clipboard; a carriage return lets a line overwrite the one before it (a fake
"Success"). ``printable`` shows each such character as an escape instead: C0 controls except tab
and newline, DEL and C1 as ``\\x1b``, ``\\x9b``...; a carriage return as ``\\r``; and the
Unicode bidirectional overrides and isolates (U+202A-U+202E, U+2066-U+2069), which reorder how
a line reads, as ``\\u202e``.
"""

from __future__ import annotations

import re

# A backslash is not escaped: this text is for people to read, not for programs to parse back;
# `--json` gives the exact text and `--raw` the bytes as written.
_CONTROLS = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")
_CODES = [*range(0x00, 0x09), *range(0x0B, 0x20), *range(0x7F, 0xA0), *range(0x202A, 0x202F),
          *range(0x2066, 0x206A)]
_SHOWN = {chr(c): f"\\x{c:02x}" if c < 0x100 else f"\\u{c:04x}" for c in _CODES} | {"\r": "\\r"}


def _shown(match: re.Match[str]) -> str:
    return _SHOWN[match[0]]


def printable(text: str) -> str:
    """*text* with every control character shown as an escape (see the module docstring).

    A regex with a table, not ``str.translate``: logs are large, and ``translate`` is several
    times slower on text that is not all ASCII."""
    if text.isprintable():  # every character the regex matches is unprintable to Python
        return text
    return _CONTROLS.sub(_shown, text)
