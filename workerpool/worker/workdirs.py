"""A worker's step working directories: one private directory per step attempt, under one
directory per worker instance (which the worker's watchdog removes when the worker ends)."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path


def workdir_root(name: str, instance: str) -> Path:
    """The directory of one worker instance's step working directories (its watchdog removes
    it when the worker ends)."""
    return Path(tempfile.gettempdir()) / "workerpool" / f"{name}-{instance[:8]}"


def make_workdir(root: Path, step_id: str, attempt: str) -> Path:
    """A new private working directory for one attempt of a step, named after it."""
    path = root / f"{step_id}-{attempt}"
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:  # left by an earlier worker with this root: never reuse one
        return Path(tempfile.mkdtemp(prefix=f"{step_id}-{attempt}-", dir=root))
    return path


def remove_workdir(path: Path) -> None:
    """Remove a step's working directory: one holding only files (a script and what it wrote)
    takes an unlink each and a rmdir; one with a directory in it, ``shutil.rmtree``."""
    try:
        with os.scandir(path) as it:
            entries = list(it)
        flat = not any(entry.is_dir(follow_symlinks=False) for entry in entries)
    except OSError:
        flat = False
    if flat:
        try:
            for entry in entries:
                os.unlink(entry.path)
            os.rmdir(path)
            return
        except OSError:  # something appeared or could not go: rmtree does the rest
            pass
    shutil.rmtree(path, ignore_errors=True)
