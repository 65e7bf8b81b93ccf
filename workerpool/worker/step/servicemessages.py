"""Service messages: ``##workerpool[setVariable name='X' value='Y']`` lines a script prints.

Values are quoted with single quotes; inside them ``||``, ``|'``, ``|]``, ``|n`` and ``|r``
stand for a pipe, a quote, a bracket, a newline and a carriage return.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

PREFIX = "##workerpool["
_MESSAGE = re.compile(
    r"^##workerpool\[(?P<kind>[A-Za-z]+)(?P<attrs>(?:\s+\w+='(?:[^|']|\|.)*')*)\s*\]\s*$")
_ATTR = re.compile(r"(\w+)='((?:[^|']|\|.)*)'")
_UNESCAPE = {"|": "|", "'": "'", "]": "]", "n": "\n", "r": "\r", "[": "["}


@dataclass(frozen=True)
class ServiceMessage:
    kind: str
    attributes: dict[str, str]


def unescape(text: str) -> str:
    return re.sub(r"\|(.)", lambda m: _UNESCAPE.get(m.group(1), m.group(1)), text)


def parse(line: str) -> ServiceMessage | None:
    """The message on *line*, or None when the line is ordinary output (or malformed)."""
    if not line.startswith(PREFIX):
        return None
    match = _MESSAGE.match(line)
    if match is None:
        return None
    attrs = {name: unescape(value) for name, value in _ATTR.findall(match.group("attrs"))}
    return ServiceMessage(match.group("kind"), attrs)
