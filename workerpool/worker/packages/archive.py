"""The archive interface: formats read entries, ``SafeWriter`` writes them safely, within limits.

``SafeWriter`` is the one place files are created. It never follows a link while writing (every
parent must be a real directory, files are opened with O_NOFOLLOW), refuses names that could
leave the directory, and counts entries and bytes as it writes, so a lying header cannot
make it write more than the limits: an absolute size, and a ratio to the compressed size (of the
whole archive, and of each zip entry), so a small archive cannot fill a disk.
"""

from __future__ import annotations

import os
import re
import stat
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from workerpool.core.errors import ArchiveError
from workerpool.core.settings import Settings

COPY_BUFFER = 1 << 20
DRIVE = re.compile(r"^[A-Za-z]:")
OPEN_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)

Read = Callable[[int], bytes]
RATIO_SETTING = "WORKERPOOL_EXTRACT_MAX_RATIO"
FLOOR_SETTING = "WORKERPOOL_EXTRACT_RATIO_FLOOR_BYTES"


@dataclass(frozen=True)
class Extracted:
    files: int
    bytes: int


@dataclass(frozen=True)
class Ratio:
    """How far compressed data may expand: ``times`` its size, and always up to ``floor`` bytes,
    so small genuine archives of very compressible files pass and a bomb gains at most that."""

    times: int = Settings.extract_max_ratio
    floor: int = Settings.extract_ratio_floor_bytes

    @classmethod
    def of(cls, settings: Settings) -> Ratio:
        return cls(settings.extract_max_ratio, settings.extract_ratio_floor_bytes)

    def allows(self, compressed: int) -> int:
        """The most bytes *compressed* bytes may expand to."""
        return max(self.floor, compressed * self.times)


DEFAULT_RATIO = Ratio()


class Limit:
    """A cap on bytes written, and the one line that refuses the entry that passes it."""

    def __init__(self, cap: int) -> None:
        self.cap = cap

    def refusal(self, name: str) -> ArchiveError:
        return ArchiveError(f"archive bomb: entry {name!r} takes the extracted size past the "
                            f"{self.cap}-byte limit; raise the limit if the package is genuine")


class ArchiveRatio(Limit):
    """The whole archive's bytes written against its file's size (compressed tars have no
    per-member compressed size, and zip entries may share or hide data)."""

    def __init__(self, ratio: Ratio, compressed: int) -> None:
        super().__init__(ratio.allows(compressed))
        self.ratio = ratio
        self.compressed = compressed

    def refusal(self, name: str) -> ArchiveError:
        return ArchiveError(f"archive bomb: entry {name!r} {self.passes()} {self.cap} bytes, "
                            f"the most {self.source()} may expand to ({RATIO_SETTING}="
                            f"{self.ratio.times} times, at least {FLOOR_SETTING}="
                            f"{self.ratio.floor}); raise {RATIO_SETTING} if the package is "
                            "genuine")

    def passes(self) -> str:
        return "takes the extracted size past"

    def source(self) -> str:
        return f"this {self.compressed}-byte archive"


class EntryRatio(ArchiveRatio):
    """One zip entry's bytes written against its own compressed size."""

    def passes(self) -> str:
        return "expands past"

    def source(self) -> str:
        return f"its {self.compressed} compressed bytes"


def unsafe(name: str, why: str) -> ArchiveError:
    return ArchiveError(f"unsafe entry {name!r}: {why}; refused, nothing written outside the "
                        "target directory")


def relative_parts(name: str) -> list[str]:
    """The path components of an entry name, or ArchiveError if it could leave the target."""
    if "\x00" in name:
        raise unsafe(name, "its name holds a NUL byte")
    if name.startswith(("/", "\\")):
        raise unsafe(name, "it is an absolute path")
    if DRIVE.match(name):
        raise unsafe(name, "it starts with a drive letter")
    parts = [part for part in re.split(r"[/\\]", name) if part not in ("", ".")]
    if ".." in parts:
        raise unsafe(name, "its path has a '..' component")
    return parts


class SafeWriter:
    """Writes entries under *root*; the root and everything made in it are real directories.

    With *archive_size* (the archive file's), the bytes written are also held to *ratio* of it,
    and each entry given a compressed size to *ratio* of that.
    """

    def __init__(self, root: Path, max_bytes: int, max_entries: int, ratio: Ratio = DEFAULT_RATIO,
                 archive_size: int | None = None) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.root = os.path.realpath(root)
        self.max_bytes = max_bytes
        self.max_entries = max_entries
        self.ratio = ratio
        self.limit = Limit(max_bytes)
        self.whole = None if archive_size is None else ArchiveRatio(ratio, archive_size)
        self.entries = 0
        self.files = 0
        self.written = 0
        self._dirs: set[str] = {""}
        self._links: list[tuple[str, str]] = []

    def count(self, name: str, declared_size: int = 0, compressed: int | None = None) -> None:
        """Count one entry; refuse the archive once it has too many, or claims too many bytes
        (before anything of a sparse or bomb entry is written)."""
        self.entries += 1
        if self.entries > self.max_entries:
            raise ArchiveError(f"archive bomb: more than {self.max_entries} entries (at "
                               f"{name!r}); raise the entry limit if the package is genuine")
        self._check(name, self.written + declared_size, declared_size, self._entry(compressed))

    def _entry(self, compressed: int | None) -> Limit | None:
        return None if compressed is None else EntryRatio(self.ratio, compressed)

    def _check(self, name: str, total: int, size: int, entry: Limit | None) -> None:
        """Refuse *name* if the archive's *total* or the entry's own *size* passes a limit; the
        absolute limit is named first, as raising the ratio would not lift it."""
        for limit, value in ((self.limit, total), (entry, size), (self.whole, total)):
            if limit is not None and value > limit.cap:
                raise limit.refusal(name)

    def directory(self, name: str) -> None:
        parts = relative_parts(name)
        if parts:
            self._make_dirs(name, parts)

    def file(self, name: str, read: Read, executable: bool, compressed: int | None = None) -> None:
        """Write one file from *read*, counting the bytes it really yields (headers may lie)."""
        parts = relative_parts(name)
        if not parts:
            raise unsafe(name, "it names the target directory itself as a file")
        entry = self._entry(compressed)
        path = self._parent(name, parts)
        fd = self._create(name, path, 0o755 if executable else 0o644)
        size = 0
        with open(fd, "wb", buffering=0) as out:
            while chunk := read(COPY_BUFFER):
                size += len(chunk)
                self.written += len(chunk)
                self._check(name, self.written, size, entry)
                out.write(chunk)
        self.files += 1

    def symlink(self, name: str, link: str) -> None:
        parts = relative_parts(name)
        if not link or "\x00" in link:
            raise unsafe(name, "it is a link with an empty or malformed target")
        if os.path.isabs(link) or DRIVE.match(link):
            raise unsafe(name, f"it is a link to the absolute path {link!r}")
        inside = os.path.normpath(os.path.join(*parts[:-1], link) if parts[:-1] else link)
        if not parts or inside == ".." or inside.startswith("../"):
            raise unsafe(name, f"it is a link pointing outside the target ({link!r})")
        path = self._parent(name, parts)
        self._clear(name, path)
        os.symlink(link, path)
        self._links.append((name, path))

    def hardlink(self, name: str, source: str) -> None:
        parts, source_parts = relative_parts(name), relative_parts(source)
        source_path = os.path.join(self.root, *source_parts)
        if not source_parts or not self._real_dirs(source_parts[:-1]) \
                or not stat.S_ISREG(_lstat_mode(source_path)):
            raise unsafe(name, f"it is a hard link to {source!r}, which is not a file extracted "
                         "before it")
        path = self._parent(name, parts)
        self._clear(name, path)
        os.link(source_path, path, follow_symlinks=False)
        self.files += 1

    def finish(self) -> Extracted:
        """Check that every link made resolves inside the target, now that all are in place."""
        for name, path in self._links:
            real = os.path.realpath(path)
            if real != self.root and not real.startswith(self.root + os.sep):
                os.unlink(path)
                raise unsafe(name, "it is a link that resolves outside the target through "
                             "other links")
        return Extracted(self.files, self.written)

    def _parent(self, name: str, parts: list[str]) -> str:
        self._make_dirs(name, parts[:-1])
        return os.path.join(self.root, *parts)

    def _make_dirs(self, name: str, parts: list[str]) -> None:
        for depth in range(1, len(parts) + 1):
            rel = "/".join(parts[:depth])
            if rel in self._dirs:
                continue
            path = os.path.join(self.root, rel)
            try:
                os.mkdir(path, 0o755)
            except FileExistsError:
                if not stat.S_ISDIR(_lstat_mode(path)):
                    raise unsafe(name, f"{rel!r} on its path is a link or a file, not a "
                                 "directory") from None
            self._dirs.add(rel)

    def _real_dirs(self, parts: list[str]) -> bool:
        return all(stat.S_ISDIR(_lstat_mode(os.path.join(self.root, *parts[:depth])))
                   for depth in range(1, len(parts) + 1))

    def _create(self, name: str, path: str, mode: int) -> int:
        try:
            return os.open(path, OPEN_FLAGS, mode)
        except FileExistsError:
            self._clear(name, path)
            return os.open(path, OPEN_FLAGS, mode)

    def _clear(self, name: str, path: str) -> None:
        """Remove a file or link a later entry replaces; never replace a directory."""
        mode = _lstat_mode(path)
        if stat.S_ISDIR(mode):
            raise unsafe(name, "a directory of the same name was extracted before it")
        if mode:
            os.unlink(path)


def _lstat_mode(path: str) -> int:
    try:
        return os.lstat(path).st_mode
    except FileNotFoundError:
        return 0


class ArchiveFormat(ABC):
    """One archive format: reads *archive*'s entries into *target* through its methods."""

    @abstractmethod
    def extract_into(self, archive: Path, target: SafeWriter) -> None:
        """Feed every entry to *target*; raise ArchiveError for entries it must refuse."""
