"""Configuration features a step switches on: ``#{...}`` substitution and structured replacement.

Globs are relative to the step's working directory and never reach outside it: patterns that
are absolute or climb with ``..`` are refused, and matches that resolve outside (through a
symbolic link) are skipped. Log lines carry file and variable names, never variable values.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path, PurePosixPath

from workerpool.core.errors import BadInput
from workerpool.core.substitution import Resolver, resolve_all
from workerpool.worker.step.structured import replace_structured

MAX_SUBSTITUTE_BYTES = 50 * 1024 * 1024
_BINARY_SNIFF = 8192
_BOM = b"\xef\xbb\xbf"

Log = Callable[[str], None]


def apply_features(workdir: Path, variables: Mapping[str, str], substitute_globs: Sequence[str],
                   structured_globs: Sequence[str], log: Log) -> list[Path]:
    """Run substitution, then structured replacement, on the matching files; return those changed.

    BadInput for a glob that leaves *workdir*, a variable cycle, or a structured file that does
    not parse; a glob matching nothing and a missing variable are warnings in the log.
    """
    if not substitute_globs and not structured_globs:
        return []
    changed: list[Path] = []
    resolver = Resolver(variables)
    for path, name in _matches(workdir, substitute_globs, log):
        if _substitute_file(path, name, resolver, log):
            _add_unique(changed, path)
    structured_files = list(_matches(workdir, structured_globs, log))
    resolved = resolve_all(variables) if structured_files else {}
    for path, name in structured_files:
        replaced = replace_structured(path, resolved, name=name)
        if replaced:
            noun = "variable" if len(replaced) == 1 else "variables"
            log(f"replaced {len(replaced)} structured {noun} in {name}: {', '.join(replaced)}")
            _add_unique(changed, path)
        else:
            log(f"no structured variables matched a key in {name}")
    return changed


def _matches(workdir: Path, globs: Sequence[str], log: Log) -> Iterator[tuple[Path, str]]:
    """Each regular file under *workdir* matching a glob once, as (path, relative name)."""
    root = workdir.resolve()
    seen: set[Path] = set()
    for pattern in _patterns(globs):
        found = False
        for path in sorted(workdir.glob(pattern)):
            name = path.relative_to(workdir).as_posix()
            target = path.resolve()
            if not target.is_relative_to(root):
                log(f"warning: skipped {name}: it links outside the working directory")
                continue
            if not target.is_file():
                continue
            found = True
            if target not in seen:
                seen.add(target)
                yield path, name
        if not found:
            log(f"warning: no files match {pattern!r}")


def _patterns(globs: Sequence[str]) -> list[str]:
    """The glob patterns, one per line, with ``\\`` as ``/``; BadInput for one leaving the root."""
    patterns: list[str] = []
    for entry in globs:
        for line in entry.splitlines():
            pattern = line.strip().replace("\\", "/")
            if not pattern:
                continue
            pure = PurePosixPath(pattern)
            if pure.is_absolute() or ".." in pure.parts or pattern[1:3] == ":/":
                raise BadInput(f"file glob {pattern!r} leaves the working directory; "
                               "write globs relative to it, e.g. 'config/**/*.json'")
            patterns.append(pattern)
    return patterns


def _substitute_file(path: Path, name: str, resolver: Resolver, log: Log) -> bool:
    """Substitute ``#{...}`` in one text file in place; False when it was skipped or unchanged."""
    read = _read_text(path, name, log)
    if read is None:
        return False
    text, bom = read
    result = resolver.substitute(text)
    for missing in result.missing:
        log(f"warning: {name}: no variable named {missing!r}; #{{{missing}}} left as written")
    if result.text == text:
        return False
    new = result.text
    if "\r\n" in text and "\n" not in text.replace("\r\n", ""):
        new = new.replace("\r\n", "\n").replace("\n", "\r\n")  # values keep the file's newlines
    path.write_bytes(bom + new.encode("utf-8"))
    noun = "replacement" if result.replacements == 1 else "replacements"
    log(f"substituted variables in {name} ({result.replacements} {noun})")
    return True


def _read_text(path: Path, name: str, log: Log) -> tuple[str, bytes] | None:
    """The file as UTF-8 text and its byte-order mark, or None after logging why it is skipped."""
    with path.open("rb") as handle:
        head = handle.read(_BINARY_SNIFF)
    if b"\x00" in head:
        log(f"skipped {name}: it is a binary file")
        return None
    size = path.stat().st_size
    if size > MAX_SUBSTITUTE_BYTES:
        raise BadInput(f"{name} is {size} bytes; variable substitution reads text files up to "
                       f"{MAX_SUBSTITUTE_BYTES} bytes (narrow the substitution glob)")
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8-sig"), _BOM if raw.startswith(_BOM) else b""
    except UnicodeDecodeError:
        log(f"skipped {name}: it is not UTF-8 text")
        return None


def _add_unique(paths: list[Path], path: Path) -> None:
    if path not in paths:
        paths.append(path)
