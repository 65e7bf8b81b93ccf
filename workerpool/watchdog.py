"""Kills a dead worker's script process groups and removes its working directories.

A worker starts one watchdog (``python -m workerpool.watchdog ROOT``) holding a pipe to it, and
keeps one file per running script process group in ``ROOT/.groups`` (named by its pgid). When
the pipe closes (the worker exited or was SIGKILLed), the watchdog kills every group still
listed there, and every process
that left its group but still carries one of the worker's step tokens or sits in one of its step
cgroups (``workerpool.containment``), so no script outlives its worker; then it removes ROOT, the
worker's directory of step working directories.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import sys
from pathlib import Path

from workerpool.containment import kill_worker_leftovers, needle, owner_tag

GROUPS_DIR = ".groups"


def is_own_group(pgid: int, owner: str) -> bool:
    """Whether *pgid* leads a group started by this worker: its leader carries one of the
    worker's step tokens. A step can write into ``.groups``; a file it made, or one left for
    a group whose number was reused, names no group of ours."""
    try:
        if os.getpgid(pgid) != pgid:
            return False
        with open(f"/proc/{pgid}/environ", "rb") as fh:
            return needle(owner + ".") in b"\0" + fh.read()
    except OSError:
        return False


def main() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    root = Path(sys.argv[1])
    while sys.stdin.buffer.read(65536):  # until the worker's end closes the pipe
        pass
    owner = owner_tag(root)
    with contextlib.suppress(FileNotFoundError):
        for entry in os.scandir(root / GROUPS_DIR):
            if entry.name.isdigit() and is_own_group(int(entry.name), owner):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(int(entry.name), signal.SIGKILL)
    kill_worker_leftovers(root)
    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
