"""Reading YAML that users write (process files, variables files, templates), guarded.

A size limit, a depth limit (a document nested deeper than ``MAX_DEPTH`` is refused from its
event stream, before the recursive composer would run out of stack), a node limit on alias
expansion (a "billion laughs" document is refused before it is built), and one-line errors that
name the file, line and column.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import ruamel.yaml
from ruamel.yaml.error import MarkedYAMLError, YAMLError
from ruamel.yaml.events import CollectionEndEvent, CollectionStartEvent
from ruamel.yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from workerpool.core.errors import BadInput, one_line

MAX_FILE_BYTES = 1_000_000
# Nodes a document may hold once every alias is expanded; real files hold a few thousand.
MAX_NODES = 100_000
# Collections a document may nest; real files nest fewer than ten.
MAX_DEPTH = 100
_COMMENTED_REFERENCE = re.compile(r"[ \t]+#\{")


def read_yaml(path: Path, what: str = "file") -> Any:
    """Load one YAML document safely; BadInput ``PATH: ...`` on any problem, in one line."""
    try:
        size = path.stat().st_size
        with path.open("rb") as fh:  # bounded: a device or pipe has no size to check first
            data = fh.read(MAX_FILE_BYTES + 1)
        if size > MAX_FILE_BYTES or len(data) > MAX_FILE_BYTES:
            raise BadInput(f"{path}: the {what} is {max(size, len(data))}"
                           f"{'' if size > MAX_FILE_BYTES else ' or more'} bytes; the limit is "
                           f"{MAX_FILE_BYTES} (move large content into a package)")
        text = data.decode("utf-8")
    except OSError as exc:
        raise BadInput(f"{path}: cannot read the {what}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise BadInput(f"{path}: the {what} is not UTF-8 text") from None
    yaml = ruamel.yaml.YAML(typ="safe", pure=True)
    try:
        _check_depth(path, yaml, text, what)
        node = yaml.compose(text)
        if node is None:
            return None
        _check_nodes(path, text, node)
        return yaml.constructor.construct_document(node)
    except MarkedYAMLError as exc:
        raise BadInput(f"{path}: {_describe(exc)}") from None
    except YAMLError as exc:
        raise BadInput(f"{path}: not valid YAML: {one_line(str(exc))}") from None


def _check_depth(path: Path, yaml: ruamel.yaml.YAML, text: str, what: str) -> None:
    """Refuse a document nested deeper than ``MAX_DEPTH``, read as events (no recursion)."""
    depth = 0
    for event in yaml.parse(text):
        if isinstance(event, CollectionStartEvent):
            depth += 1
            if depth > MAX_DEPTH:
                mark = event.start_mark
                raise BadInput(f"{path}: line {mark.line + 1} column {mark.column + 1}: the "
                               f"{what} nests lists or mappings more than {MAX_DEPTH} deep; "
                               "flatten it")
        elif isinstance(event, CollectionEndEvent):
            depth -= 1


def _describe(exc: MarkedYAMLError) -> str:
    mark = exc.problem_mark or exc.context_mark
    where = f"line {mark.line + 1} column {mark.column + 1}: " if mark is not None else ""
    problem = one_line(" ".join(p for p in (exc.context, exc.problem) if p)) or "invalid YAML"
    if isinstance(exc, ruamel.yaml.constructor.DuplicateKeyError):
        return f"{where}{problem} (each key may appear once in a mapping)"
    return f"{where}{problem} (fix the YAML syntax there)"


def _check_nodes(path: Path, text: str, root: Node) -> None:
    """Count nodes as if every alias were expanded, without expanding; refuse past the limit.

    Also refuse a plain scalar cut short by `` #{``: YAML reads it as a comment, so
    ``script: echo #{Name}`` would silently run ``echo``.
    """
    sizes: dict[int, int] = {}
    active: set[int] = set()
    stack: list[tuple[Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        key = id(node)
        if children_done:
            active.discard(key)
            sizes[key] = 1 + sum(sizes[id(child)] for child in _children(node))
            if sizes[key] > MAX_NODES:
                raise BadInput(f"{path}: aliases expand to more than {MAX_NODES} nodes; "
                               "refusing a document that grows when expanded (an alias bomb)")
            continue
        if key in sizes:
            continue
        if key in active:
            raise BadInput(f"{path}: line {node.start_mark.line + 1}: an alias refers to a node "
                           "that contains it; recursive documents are not supported")
        active.add(key)
        if isinstance(node, ScalarNode) and node.style is None:
            _check_plain_scalar(path, text, node)
        stack.append((node, True))
        stack.extend((child, False) for child in _children(node) if id(child) not in sizes)


def _check_plain_scalar(path: Path, text: str, node: ScalarNode) -> None:
    end = node.end_mark
    match = _COMMENTED_REFERENCE.match(text, end.index)
    if match:
        column = end.column + (match.end() - 2 - end.index) + 1
        raise BadInput(f"{path}: line {end.line + 1} column {column}: ' #{{' starts a YAML "
                       "comment, so the rest of the line is dropped (quote the value, or write "
                       "it as a block: `script: |` with the text on the lines below)")


def _children(node: Node) -> list[Node]:
    if isinstance(node, SequenceNode):
        return list(node.value)
    if isinstance(node, MappingNode):
        return [part for pair in node.value for part in pair]
    return []
