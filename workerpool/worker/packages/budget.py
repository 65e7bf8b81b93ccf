"""The disk budget of a worker's staged package copies: a spare is an optimisation, so it is
staged only while the worker's working directories (step trees, staged copies) stay within
``WORKERPOOL_WORKDIR_MAX_BYTES`` (0: no such budget) and the file system keeps
``WORKERPOOL_WORKDIR_MIN_FREE_BYTES`` free after it. Otherwise nothing is staged and steps
extract inline, as without spares.

The check runs in the staging helper (``stager.py``), not the worker: measuring the working
directories is a walk of their trees, CPU a starting step must not wait for.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from workerpool.core.settings import Settings
from workerpool.worker.packages.archive import Extracted

BLOCK = 4096  # a file takes at most this much more on disk than its bytes (its last block)
MAX_SETTING = "WORKERPOOL_WORKDIR_MAX_BYTES"
FREE_SETTING = "WORKERPOOL_WORKDIR_MIN_FREE_BYTES"


class NoRoom(OSError):
    """Staging a spare would break the disk budget: nothing is staged (not a failure)."""


def footprint(placed: Extracted) -> int:
    """What a copy of *placed* takes on disk, at most: its bytes and a block per file."""
    return placed.bytes + placed.files * BLOCK


def free_bytes(path: Path) -> int:
    """Bytes an unprivileged user may still write on *path*'s file system."""
    info = os.statvfs(path)
    return info.f_bavail * info.f_frsize


def disk_usage(root: Path) -> int:
    """Bytes the tree under *root* takes on disk, as ``du`` counts them: allocated blocks, each
    inode once, no link followed; entries that vanish or cannot be read count nothing."""
    seen: set[tuple[int, int]] = set()
    folders, total = [str(root)], 0
    while folders:
        total += _scan(folders.pop(), seen, folders)
    return total


def _scan(folder: str, seen: set[tuple[int, int]], folders: list[str]) -> int:
    total = 0
    try:
        with os.scandir(folder) as entries:
            for entry in entries:
                info = entry.stat(follow_symlinks=False)
                if (info.st_dev, info.st_ino) not in seen:
                    seen.add((info.st_dev, info.st_ino))
                    total += info.st_blocks * 512
                if entry.is_dir(follow_symlinks=False):
                    folders.append(entry.path)
    except OSError:  # a step's tree removed meanwhile: what is gone takes no room
        pass
    return total


@dataclass(frozen=True)
class DiskBudget:
    """``max_bytes`` for a worker's working-directory root (0: none), ``min_free`` bytes left
    free on its file system."""

    max_bytes: int = Settings.workdir_max_bytes
    min_free: int = Settings.workdir_min_free_bytes

    @classmethod
    def of(cls, settings: Settings) -> DiskBudget:
        return cls(settings.workdir_max_bytes, settings.workdir_min_free_bytes)

    def check(self, root: Path, size: int) -> None:
        """NoRoom (one line: what, and the setting) if *size* more bytes under *root* break it."""
        left = free_bytes(root) - size
        if left < self.min_free:
            raise NoRoom(f"its {size} bytes would leave {left} bytes free on the file system of "
                         f"{root}, under {FREE_SETTING}={self.min_free}; free disk space, or "
                         f"lower {FREE_SETTING} to stage it")
        used = disk_usage(root) if self.max_bytes else 0
        if self.max_bytes and used + size > self.max_bytes:
            raise NoRoom(f"its {size} bytes and the {used} bytes the working directories take "
                         f"would pass {MAX_SETTING}={self.max_bytes}; raise {MAX_SETTING} to "
                         "stage it")
