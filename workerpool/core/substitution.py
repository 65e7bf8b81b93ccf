"""Octopus-style ``#{Name}`` substitution: case-insensitive names, ``##{...}`` escapes, nesting.

A variable's value may itself refer to other variables; those references are resolved first,
once per variable (memoised), with cycle detection and a depth limit so that a bad variable set
fails with a message instead of looping or exhausting memory.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from workerpool.core.errors import BadInput

MAX_DEPTH = 32
# Guards against values that double at every level (A = #{B}#{B}, B = #{C}#{C}, ...).
MAX_CHARS = 50_000_000

# The escape alternative comes first so that ``##{X}`` is consumed whole, never as ``#`` + ``#{X}``.
_REFERENCE = re.compile(r"##\{[^}\n]*\}|#\{([^}\n]*)\}")


@dataclass(frozen=True)
class Substitution:
    """The substituted text, how many references were replaced, and the names not found."""

    text: str
    replacements: int
    missing: tuple[str, ...]


@dataclass(frozen=True)
class _Resolved:
    value: str
    missing: tuple[str, ...]
    chain: tuple[str, ...]  # the longest chain of references below this variable, itself first


class Resolver:
    """Substitutes text against one variable set; resolved values are cached between calls."""

    def __init__(self, variables: Mapping[str, str]) -> None:
        # Later names win over earlier ones that differ only in case, as in a dict update.
        self._index = {name.strip().casefold(): (name, value) for name, value in variables.items()}
        self._resolved: dict[str, _Resolved] = {}

    def substitute(self, text: str) -> Substitution:
        """Replace every ``#{Name}`` in *text*; BadInput on a cycle or runaway nesting."""
        missing: list[str] = []
        result, count, _ = self._expand(text, [], missing, "the substituted text")
        return Substitution(result, count, tuple(missing))

    def value(self, name: str) -> str | None:
        """The fully resolved value of variable *name*, or None when there is no such variable."""
        resolved = self._resolve(name.strip(), [])
        return None if resolved is None else resolved.value

    def _expand(self, text: str, stack: list[str], missing: list[str],
                what: str) -> tuple[str, int, tuple[str, ...]]:
        pieces: list[str] = []
        done = count = size = 0
        deepest: tuple[str, ...] = ()
        for match in _REFERENCE.finditer(text):
            replacement = match.group(0)
            name = (match.group(1) or "").strip()
            if match.group(1) is None:
                replacement = replacement[1:]
            elif name:
                resolved = self._resolve(name, stack)
                if resolved is None:
                    _add_unique(missing, name)
                else:
                    replacement, count = resolved.value, count + 1
                    for inner in resolved.missing:
                        _add_unique(missing, inner)
                    deepest = max(deepest, resolved.chain, key=len)
            pieces += [text[done:match.start()], replacement]
            size += match.start() - done + len(replacement)
            done = match.end()
            if size > MAX_CHARS:
                raise BadInput(f"{what} expands to more than {MAX_CHARS} characters; "
                               "check for variables that repeat other variables many times")
        pieces.append(text[done:])
        return "".join(pieces), count, deepest

    def _resolve(self, name: str, stack: list[str]) -> _Resolved | None:
        key = name.casefold()
        entry = self._index.get(key)
        if entry is None:
            return None
        declared, raw = entry
        names = [self._index[k][0] for k in stack]
        if key in stack:
            cycle = [*names[stack.index(key):], declared]
            raise BadInput(f"variable cycle: {' -> '.join(cycle)}; "
                           "change one of these values so it no longer refers back")
        cached = self._resolved.get(key)
        if cached is not None:
            _check_depth([*names, *cached.chain])
            return cached
        _check_depth([*names, declared])
        stack.append(key)
        inner_missing: list[str] = []
        value, _, below = self._expand(raw, stack, inner_missing, f"variable {declared!r}")
        stack.pop()
        resolved = _Resolved(value, tuple(inner_missing), (declared, *below))
        self._resolved[key] = resolved
        return resolved


def _add_unique(names: list[str], name: str) -> None:
    if name not in names:
        names.append(name)


def _check_depth(chain: list[str]) -> None:
    if len(chain) <= MAX_DEPTH:
        return
    shown = chain if len(chain) <= 6 else [*chain[:3], "...", *chain[-2:]]
    raise BadInput(f"variable references nest deeper than {MAX_DEPTH} levels "
                   f"({len(chain)}: {' -> '.join(shown)}); make the values refer less deeply")


def substitute(text: str, variables: Mapping[str, str]) -> tuple[str, list[str]]:
    """Replace ``#{Name}`` in *text*; return the text and the names not found (left as written).

    ``##{Name}`` is an escape for the literal ``#{Name}``. Names are case-insensitive and trimmed.
    """
    result = Resolver(variables).substitute(text)
    return result.text, list(result.missing)


def resolve_all(variables: Mapping[str, str]) -> dict[str, str]:
    """Every variable with the references in its value resolved; BadInput on a cycle."""
    resolver = Resolver(variables)
    resolved: dict[str, str] = {}
    for name in variables:
        value = resolver.value(name)
        assert value is not None  # every name is in the resolver's index
        resolved[name] = value
    return resolved
