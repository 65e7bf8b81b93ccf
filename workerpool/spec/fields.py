"""The fields of what users write in YAML: text values, name lists, known keys, packages."""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from workerpool.core.errors import BadInput
from workerpool.core.packageref import PackageRef

T = TypeVar("T")
PACKAGE_KEYS = ("name", "id", "version", "feed", "extract")


def text_value(raw: object, what: str) -> str:
    """A YAML scalar as text: strings as written, integers and booleans spelled out.

    Floats, dates and binary values are refused: YAML has already changed how they were
    written (``1.10`` -> ``1.1``), so the fix is to quote them.
    """
    if isinstance(raw, bool):
        return "true" if raw else "false"
    if isinstance(raw, str):
        return raw
    if isinstance(raw, int):
        return str(raw)
    if raw is None:
        raise BadInput(f"{what} has no value (write \"\" for an empty value)")
    if isinstance(raw, list | dict):
        kind = "list" if isinstance(raw, list) else "mapping"
        raise BadInput(f"{what} must be text, not a {kind}")
    raise BadInput(f"{what} is a {type(raw).__name__} in YAML; quote it so it keeps its exact "
                   "text (e.g. \"1.10\")")


def name_list(raw: object, what: str) -> tuple[str, ...]:
    """A name or a list of names, each non-empty text."""
    items = raw if isinstance(raw, list) else [raw]
    names = tuple(text_value(item, what).strip() for item in items)
    if not names or not all(names):
        raise BadInput(f"{what} must be a name or a non-empty list of names")
    return names


def check_keys(data: Mapping[str, Any], allowed: tuple[str, ...], what: str,
               nested: bool = False) -> None:
    """BadInput naming the first key of *data* not in *allowed*, with the allowed ones: as
    ``field 'KEY': ...``, or, for a mapping inside a field (*nested*), ``... key 'KEY' ...``."""
    for key in data:
        if key not in allowed:
            close = difflib.get_close_matches(str(key), allowed, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            where = f"unknown {what} key {key!r}" if nested else \
                f"field {key!r}: unknown {what} key"
            raise BadInput(f"{where} ({hint}allowed: {', '.join(allowed)})")


def parse_packages(raw: object) -> tuple[PackageRef, ...]:
    """A ``packages:`` list of ``{name, id, version, feed?, extract?}``; BadInput saying why."""
    if not isinstance(raw, list):
        raise BadInput("must be a list of {name, id, version, feed, extract} mappings")
    refs: list[PackageRef] = []
    for index, item in enumerate(raw, 1):
        refs.append(_package(item, f"package {index}"))
        if any(ref.name.lower() == refs[-1].name.lower() for ref in refs[:-1]):
            raise BadInput(f"package {index}: the name {refs[-1].name!r} is used twice; each "
                           "package needs its own name (it is the directory it extracts to)")
    return tuple(refs)


def _package(item: object, where: str) -> PackageRef:
    if not isinstance(item, dict):
        raise BadInput(f"{where} must be a mapping like {{name: db, id: Acme.Database, "
                       "version: 1.0.0}")
    unknown = [key for key in item if key not in PACKAGE_KEYS]
    if unknown:
        raise BadInput(f"{where}: unknown key {unknown[0]!r}; allowed: {', '.join(PACKAGE_KEYS)}")
    missing = [key for key in ("name", "id", "version") if item.get(key) in (None, "")]
    if missing:
        raise BadInput(f"{where} lacks {', '.join(missing)}; give name, id and version")
    extract = item.get("extract", True)
    if not isinstance(extract, bool):
        raise BadInput(f"{where}: extract must be true or false")
    try:
        return PackageRef(name=text_value(item["name"], "name"),
                          package_id=text_value(item["id"], "id"),
                          version=text_value(item["version"], "version"),
                          feed=text_value(item.get("feed", "builtin"), "feed"), extract=extract)
    except BadInput as exc:
        raise BadInput(f"{where}: {exc}") from None


def parse_field(data: Mapping[str, Any], key: str, parse: Callable[[Any], T], default: T) -> T:
    """``parse(data[key])`` with errors prefixed by the field, or *default* when absent."""
    if data.get(key) is None:
        return default
    try:
        return parse(data[key])
    except BadInput as exc:
        raise BadInput(f"field {key!r}: {exc}") from None
