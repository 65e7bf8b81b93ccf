"""A worker's step working directories: one private directory per step attempt, under one
directory per worker instance (which the worker's watchdog removes when the worker ends)."""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
from pathlib import Path

from workerpool.core.errors import BadInput


def workdir_root(name: str, instance: str) -> Path:
    """The directory of one worker instance's step working directories (its watchdog removes
    it when the worker ends)."""
    base = "workerpool" if os.geteuid() == 0 else f"workerpool-{os.geteuid()}"
    return Path(tempfile.gettempdir()) / base / f"{name}-{instance[:8]}"


def make_root(name: str, instance: str) -> Path:
    """Create ``workdir_root``: it and the folder of all workers' roots are searchable but not
    listable (0711), so a script reaches its own working directory (0700, its user's) and no
    other. A folder of roots that is not a real directory of this user's (another user made
    it, or a link) is refused: nothing is created through it."""
    root = workdir_root(name, instance)
    base = root.parent
    try:
        os.mkdir(base, 0o711)
    except FileExistsError:
        info = os.lstat(base)
        if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid():
            raise BadInput(f"{base} is not a directory of this worker's user (it may have been "
                           "planted); remove it, or set TMPDIR to another folder") from None
        os.chmod(base, 0o711)
    os.mkdir(root, 0o711)
    os.chmod(root, 0o711)  # whatever the umask
    return root


def private_dir(path: Path) -> Path:
    """*path* as a directory only this worker's user may enter (0700): the worker's home (its
    package cache, keys, the embedded Redis's address), the staged package copies."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    if path.stat().st_uid == os.geteuid():
        os.chmod(path, 0o700)
    return path


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
