"""Structured variable replacement: a variable named ``A:B:0:C`` replaces that key in JSON or YAML.

The file keeps its layout as far as its format allows: YAML goes through ruamel's round-trip
loader (comments, key order, quoting, indentation); JSON is re-serialised with the indent,
separators, byte-order mark, newline style and final newline it was read with.
"""

from __future__ import annotations

import io
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.constructor import DuplicateKeyError
from ruamel.yaml.error import YAMLError
from ruamel.yaml.scalarbool import ScalarBoolean
from ruamel.yaml.scalarstring import ScalarString

from workerpool.core.errors import BadInput

MAX_FILE_BYTES = 10 * 1024 * 1024
# Node count a YAML document may reach once its aliases are expanded (billion laughs).
MAX_YAML_NODES = 1_000_000
SEPARATOR = ":"
JSON_SUFFIXES = frozenset({".json"})
YAML_SUFFIXES = frozenset({".yaml", ".yml"})

_NUMBER = re.compile(r"-?(?:0|[1-9]\d*)(\.\d+)?([eE][+-]?\d+)?")
# Comment lines and a bare ``---`` before the first document: ruamel drops comments placed
# before ``---``, so this part of the file is kept verbatim.
_YAML_PREAMBLE = re.compile(r"\A(?:[ \t]*(?:#[^\n]*)?\r?\n)*---[ \t]*(?:#[^\n]*)?\r?\n")
_MISSING = object()


class _ParseError(Exception):
    """A parser's complaint, with its position, before the file's name is attached."""


class _Document:
    """A parsed file: its top-level values (one per YAML document) and how to write them back."""

    roots: list[Any]
    preamble: str = ""  # text kept verbatim before the rendered document

    def render(self) -> str:
        raise NotImplementedError


@dataclass
class _JsonDocument(_Document):
    roots: list[Any]
    indent: int | str | None
    separators: tuple[str, str]
    ensure_ascii: bool

    def render(self) -> str:
        return json.dumps(self.roots[0], indent=self.indent, separators=self.separators,
                          ensure_ascii=self.ensure_ascii)


@dataclass
class _YamlDocument(_Document):
    roots: list[Any]
    yaml: YAML
    preamble: str

    def render(self) -> str:
        out = io.StringIO()
        if len(self.roots) == 1:
            self.yaml.dump(self.roots[0], out)
        else:
            self.yaml.dump_all(self.roots, out)
        return out.getvalue()


def replace_structured(path: Path, variables: Mapping[str, str], *, name: str | None = None,
                       max_bytes: int = MAX_FILE_BYTES,
                       max_nodes: int = MAX_YAML_NODES) -> list[str]:
    """Replace the value of every key path named by a variable; return the names replaced.

    *name* is how the file is called in error messages (default: *path*). The file is
    rewritten only when at least one key was replaced.
    """
    label = name or str(path)
    size = path.stat().st_size
    if size > max_bytes:
        raise BadInput(f"{label} is {size} bytes; structured variable replacement reads files "
                       f"up to {max_bytes} bytes")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise BadInput(f"{label} is not UTF-8 text (byte {exc.start}); structured variable "
                       "replacement needs a UTF-8 JSON or YAML file") from None
    crlf = "\r\n" in text and "\n" not in text.replace("\r\n", "")
    text = text.replace("\r\n", "\n") if crlf else text
    document = _parse(text, path.suffix.lower(), label, max_nodes)
    replaced = _apply(document.roots, variables)
    if replaced:
        out = document.render().rstrip("\n") + ("\n" if text.endswith("\n") else "")
        out = document.preamble + out
        bom = "\ufeff" if raw.startswith(b"\xef\xbb\xbf") else ""
        path.write_bytes((bom + (out.replace("\n", "\r\n") if crlf else out)).encode())
    return replaced


def _parse(text: str, suffix: str, label: str, max_nodes: int) -> _Document:
    try:
        if suffix in JSON_SUFFIXES:
            return _parse_json(text)
        if suffix in YAML_SUFFIXES:
            return _parse_yaml(text, label, max_nodes)
    except _ParseError as exc:
        kind = "JSON" if suffix in JSON_SUFFIXES else "YAML"
        raise BadInput(f"{label} is not valid {kind}: {exc}") from None
    try:
        return _parse_json(text)
    except _ParseError as json_error:
        try:
            return _parse_yaml(text, label, max_nodes)
        except _ParseError as yaml_error:
            raise BadInput(f"{label} is neither valid JSON ({json_error}) nor valid YAML "
                           f"({yaml_error})") from None


def _parse_json(text: str) -> _JsonDocument:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise _ParseError(f"line {exc.lineno}, column {exc.colno}: {exc.msg}") from None
    except RecursionError:
        raise _ParseError("the document is nested too deeply") from None
    indent_match = re.search(r"\n([ \t]+)\S", text.strip())
    indent: int | str | None = None
    if indent_match is not None:
        lead = indent_match.group(1)
        indent = "\t" if lead.startswith("\t") else len(lead)
    key_separator = ": " if re.search(r'"[ \t]*:[ \t]', text) else ":"
    item_separator = "," if indent is not None or not re.search(r'["\]}\w],[ \t]', text) else ", "
    ensure_ascii = text.isascii() and "\\u" in text
    return _JsonDocument([data], indent, (item_separator, key_separator), ensure_ascii)


def _parse_yaml(text: str, label: str, max_nodes: int) -> _YamlDocument:
    preamble_match = _YAML_PREAMBLE.match(text)
    preamble = preamble_match.group(0) if preamble_match else ""
    yaml = YAML(typ="rt")
    yaml.preserve_quotes = True
    yaml.width = 1 << 16  # never re-wrap long lines
    mapping, sequence, offset = _yaml_indent(text)
    yaml.indent(mapping=mapping, sequence=sequence, offset=offset)
    try:
        roots = list(yaml.load_all(text[len(preamble):]))
        nodes = _expanded_size(roots)
    except DuplicateKeyError as exc:
        found = re.search(r'duplicate key "(.*?)"', str(exc.problem))
        key = f" {found.group(1)!r}" if found else ""
        raise _ParseError(f"{_position(exc, preamble)}: duplicate key{key}") from None
    except YAMLError as exc:
        problem = getattr(exc, "problem", None) or (str(exc).splitlines() or ["unreadable"])[0]
        raise _ParseError(f"{_position(exc, preamble)}: {problem}") from None
    except RecursionError:
        raise _ParseError("the document is nested too deeply") from None
    except (ValueError, TypeError) as exc:  # a tag such as !!int on a value that is not one
        raise _ParseError(f"a tagged value cannot be read: {exc}") from None
    if nodes is not None and nodes > max_nodes:
        raise BadInput(f"{label} expands its YAML aliases to more than {max_nodes} nodes; "
                       "refusing it as a possible alias bomb (billion laughs)")
    return _YamlDocument(roots, yaml, preamble)


def _position(exc: YAMLError, preamble: str) -> str:
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    if mark is None:
        return "position unknown"
    line = mark.line + 1 + preamble.count("\n")
    return f"line {line}, column {mark.column + 1}"


def _yaml_indent(text: str) -> tuple[int, int, int]:
    """Guess (mapping indent, sequence indent, dash offset) from the first nested blocks."""
    mapping: int | None = None
    offset: int | None = None
    sequence = 2
    parent: int | None = None  # indent of the previous line when it is a bare ``key:``
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        indent = len(line) - len(line.lstrip(" "))
        if parent is not None and indent > parent:
            if stripped == "-" or stripped.startswith("- "):
                if offset is None:
                    rest = stripped[1:]
                    offset = indent - parent
                    sequence = max(offset + 1 + len(rest) - len(rest.lstrip(" ")), offset + 2)
            elif mapping is None:
                mapping = indent - parent
        is_key_only = stripped.endswith(":") and not stripped.startswith(("-", "?"))
        parent = indent if is_key_only else None
        if mapping is not None and offset is not None:
            break
    offset = offset or 0
    return mapping or 2, max(sequence, offset + 2), offset


def _expanded_size(roots: list[Any]) -> int | None:
    """Node count with aliases expanded, or None when no collection is reached twice."""
    sizes: dict[int, int] = {}
    shared = False

    def size(node: Any) -> int:
        nonlocal shared
        if isinstance(node, dict):
            children = [*node.values()]
            own = 1 + len(node)
        elif isinstance(node, list):
            children, own = node, 1
        else:
            return 1
        if id(node) in sizes:
            shared = True
            return sizes[id(node)]
        sizes[id(node)] = 1 << 62  # a collection that contains itself expands without end
        total = own + sum(size(child) for child in children)
        sizes[id(node)] = total
        return total

    total = sum(size(root) for root in roots)
    return total if shared else None


def _apply(roots: list[Any], variables: Mapping[str, str]) -> list[str]:
    """Replace every key path named by a variable, shallow paths first so deeper ones win."""
    replaced: list[str] = []
    ordered = sorted(variables.items(), key=lambda item: item[0].count(SEPARATOR))
    for variable, value in ordered:
        segments = variable.split(SEPARATOR)
        for root in roots:
            found = _find(root, segments)
            if found is None:
                continue
            container, key = found
            container[key] = _typed(container[key], value)
            if variable not in replaced:
                replaced.append(variable)
    return replaced


def _find(node: Any, segments: list[str]) -> tuple[Any, Any] | None:
    """The container and key at the end of *segments*, or None when the path does not exist."""
    for position, segment in enumerate(segments):
        key = _child_key(node, segment)
        if key is _MISSING:
            return None
        if position == len(segments) - 1:
            return node, key
        node = node[key]
    return None


def _child_key(node: Any, segment: str) -> Any:
    if isinstance(node, dict):
        folded = segment.casefold()
        keys = list(node)
        exact = [key for key in keys if str(key) == segment]
        loose = [key for key in keys if str(key).casefold() == folded]
        return (exact or loose or [_MISSING])[0]
    if isinstance(node, list) and segment.isascii() and segment.isdigit():
        return int(segment) if int(segment) < len(node) else _MISSING
    return _MISSING


def _typed(old: Any, value: str) -> Any:
    """What to write: a JSON object/array as a subtree, else the old value's type when it fits."""
    stripped = value.strip()
    if stripped[:1] in ("{", "["):
        try:
            structure = json.loads(stripped)
        except (json.JSONDecodeError, RecursionError):
            structure = None
        if isinstance(structure, dict | list):
            return structure
    if isinstance(old, bool | ScalarBoolean):
        if stripped.casefold() in ("true", "false"):
            return stripped.casefold() == "true"
        return value
    if isinstance(old, int | float) and _NUMBER.fullmatch(stripped):
        if not any(mark in stripped for mark in ".eE"):
            return int(stripped)
        if math.isfinite(number := float(stripped)):  # 1e999 would be written as Infinity
            return number
    if isinstance(old, ScalarString):
        return type(old)(value)  # keep the quoting or block style the file used
    return value

