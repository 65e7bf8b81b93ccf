"""Child processes that end with their parent (the stack's workers, a worker's stager), and
stopping one."""

from __future__ import annotations

import ctypes
import signal
import subprocess
from typing import Any

PR_SET_PDEATHSIG = 1


def die_with_parent(sig: signal.Signals = signal.SIGTERM) -> None:
    """``preexec_fn`` for children (or called by the child itself): the kernel sends it *sig*
    if its parent dies."""
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, sig)


def stop(process: subprocess.Popen[Any] | None, timeout: float = 10.0) -> None:
    """SIGTERM *process* if it runs, and SIGKILL it if it has not exited *timeout* seconds
    later; return once it exited."""
    if process is None or process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
