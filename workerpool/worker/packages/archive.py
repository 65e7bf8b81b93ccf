"""The archive interface: formats read entries, ``SafeWriter`` writes them safely, within limits.

``SafeWriter`` is the one place files are created. It never follows a link while writing (every
parent must be a real directory, files are opened with O_NOFOLLOW), refuses names that could
leave the directory, and counts entries and bytes as it writes, so a lying header cannot
make it write more than the limits.
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

COPY_BUFFER = 1 << 20
DRIVE = re.compile(r"^[A-Za-z]:")
OPEN_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)

Read = Callable[[int], bytes]


@dataclass(frozen=True)
class Extracted:
    files: int
    bytes: int


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
    """Writes entries under *root*; the root and everything made in it are real directories."""

    def __init__(self, root: Path, max_bytes: int, max_entries: int) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.root = os.path.realpath(root)
        self.max_bytes = max_bytes
        self.max_entries = max_entries
        self.entries = 0
        self.files = 0
        self.written = 0
        self._dirs: set[str] = {""}
        self._links: list[tuple[str, str]] = []

    def count(self, name: str, declared_size: int = 0) -> None:
        """Count one entry; refuse the archive once it has too many, or claims too many bytes."""
        self.entries += 1
        if self.entries > self.max_entries:
            raise ArchiveError(f"archive bomb: more than {self.max_entries} entries (at "
                               f"{name!r}); raise the entry limit if the package is genuine")
        if self.written + declared_size > self.max_bytes:
            self._too_big(name)

    def _too_big(self, name: str) -> None:
        raise ArchiveError(f"archive bomb: entry {name!r} takes the extracted size past the "
                           f"{self.max_bytes}-byte limit; raise the limit if the package is "
                           "genuine")

    def directory(self, name: str) -> None:
        parts = relative_parts(name)
        if parts:
            self._make_dirs(name, parts)

    def file(self, name: str, read: Read, executable: bool) -> None:
        parts = relative_parts(name)
        if not parts:
            raise unsafe(name, "it names the target directory itself as a file")
        path = self._parent(name, parts)
        fd = self._create(name, path, 0o755 if executable else 0o644)
        with open(fd, "wb", buffering=0) as out:
            while chunk := read(COPY_BUFFER):
                self.written += len(chunk)
                if self.written > self.max_bytes:
                    self._too_big(name)
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
