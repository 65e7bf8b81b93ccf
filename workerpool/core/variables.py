"""Step variables: masking of sensitive values, and the environment a script sees."""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping

MASK = "********"
_ENV_INVALID = re.compile(r"[^A-Za-z0-9_]")


class Masker:
    """Replaces every sensitive value in text with a fixed mask, longest values first.

    Occurrences that overlap in the text (``abcd`` and ``cdef`` in ``abcdef``) become one mask,
    so no part of any secret is left showing.
    """

    def __init__(self, secrets: Iterable[str]) -> None:
        values = sorted({s for s in secrets if s}, key=len, reverse=True)
        # A lookahead finds the longest secret starting at every position, overlaps included.
        self._pattern = (re.compile("(?=(" + "|".join(map(re.escape, values)) + "))")
                         if values else None)

    def __call__(self, text: str) -> str:
        if self._pattern is None:
            return text
        spans: list[list[int]] = []
        for match in self._pattern.finditer(text):
            start, end = match.span(1)
            if spans and start < spans[-1][1]:
                spans[-1][1] = max(spans[-1][1], end)
            else:
                spans.append([start, end])
        if not spans:
            return text
        pieces, done = [], 0
        for start, end in spans:
            pieces += [text[done:start], MASK]
            done = end
        return "".join(pieces) + text[done:]


def env_name(name: str) -> str:
    """A variable's environment name: characters outside ``[A-Za-z0-9_]`` become ``_``."""
    mapped = _ENV_INVALID.sub("_", name)
    return "_" + mapped if mapped[:1].isdigit() else mapped


def without_settings(env: Mapping[str, str]) -> dict[str, str]:
    """*env* without workerpool's own settings (``WORKERPOOL_*``: the Redis URL, keys): what a
    worker passes to anything it starts."""
    return {k: v for k, v in env.items() if not k.startswith("WORKERPOOL_")}


def script_environment(variables: Mapping[str, str], system: Mapping[str, str],
                       base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The worker's environment without workerpool's own settings, plus the step's variables."""
    env = without_settings(os.environ if base is None else base)
    env.update(system)
    env.update({env_name(k): v for k, v in variables.items()})
    return env
