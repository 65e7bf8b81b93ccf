"""Kills a dead worker's script process groups and removes its working directories.

A worker starts one watchdog (``python -m workerpool.watchdog ROOT``) and tells it, over a pipe,
each script process group it starts (``+PGID``) and reaps (``-PGID``). When the pipe closes (the
worker exited or was SIGKILLed), the watchdog kills every group still listed, and every process
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

from workerpool.containment import kill_worker_leftovers


def main() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    groups: set[int] = set()
    for line in sys.stdin:
        sign, _, number = line.strip().partition(" ")
        if number.isdigit():
            (groups.add if sign == "+" else groups.discard)(int(number))
    for pgid in groups:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)
    if len(sys.argv) > 1:
        kill_worker_leftovers(Path(sys.argv[1]))
        shutil.rmtree(sys.argv[1], ignore_errors=True)


if __name__ == "__main__":
    main()
