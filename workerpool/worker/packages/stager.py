"""The staging helper: a child process of the worker that writes spare package copies.

``spares.py`` decides what to stage; this process does the writing, because extraction is
CPU-bound Python: in a thread of the worker it would hold the worker's GIL and delay the steps
that start meanwhile. It runs at a lower priority than scripts, and the worker stops it
(SIGSTOP) while a step starts, so a staging copy never competes with a step's start.

Protocol: ``main()`` runs with the worker's pid as its argument; one job per line on stdin (JSON:
archive, target, extract, max_bytes, max_entries, max_ratio, ratio_floor, and room: the disk
budget to check first, ``budget.py``), one reply per line on stdout (``{"ok": true}``,
``{"error": "..."}``, or ``{"error": "...", "no_room": true}`` when the budget left no room). It
ends at the end of its input, and is killed when the worker dies (PR_SET_PDEATHSIG with
SIGKILL, which also ends a stopped process).
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from workerpool.core.errors import ArchiveError
from workerpool.worker.packages.archive import DEFAULT_RATIO, Ratio
from workerpool.worker.packages.budget import DiskBudget, NoRoom
from workerpool.worker.packages.formats import place

NICE = 10  # scripts come first
POLL = 0.05  # seconds between checks, while a job runs, whether a pause is over
# Not ``-m``: the package imports this module, and runpy warns about running it again.
CHILD = "from workerpool.worker.packages.stager import main; main()"


class Stager:
    """The worker's handle on its staging helper process."""

    def __init__(self) -> None:
        # Its own session: a Ctrl-C meant for the worker does not reach it mid-copy.
        self._proc = subprocess.Popen(
            [sys.executable, "-c", CHILD, str(os.getpid())],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, start_new_session=True)
        self._pidfd = os.pidfd_open(self._proc.pid)  # signals never reach a reused pid
        self._lock = threading.Lock()
        self._busy = False
        self._paused = False

    @property
    def pid(self) -> int:
        return self._proc.pid

    def alive(self) -> bool:
        return self._proc.poll() is None

    def write(self, job: dict[str, object], resume_at: Callable[[], float]) -> None:
        """Have the helper write one spare; OSError (with its reason) if it could not. While it
        works, a pause (``pause()``) is lifted once ``resume_at()`` (monotonic) has passed."""
        stdin, stdout = self._proc.stdin, self._proc.stdout
        assert stdin is not None and stdout is not None
        line = ""
        with self._lock:
            self._busy = True
        if resume_at() > time.monotonic():
            self.pause()  # a step is starting: the job waits until its start is over
        try:
            stdin.write(json.dumps(job) + "\n")
            stdin.flush()
            while not select.select([stdout], [], [], POLL)[0]:
                if resume_at() <= time.monotonic():
                    self.resume()
            line = stdout.readline()
        except OSError:
            pass
        finally:
            with self._lock:
                self._busy = False
            self.resume()
        if not line:
            raise OSError("the staging helper exited")
        _raise_for(line)

    def pause(self) -> None:
        """Stop the helper mid-job (a step is starting); ``write()`` resumes it."""
        with self._lock:
            if self._busy and not self._paused:
                self._paused = True
                self._signal(signal.SIGSTOP)

    def resume(self) -> None:
        with self._lock:
            if self._paused:
                self._paused = False
                self._signal(signal.SIGCONT)

    def kill(self) -> None:
        """Stop it now, even mid-copy or paused: what it was writing is discarded."""
        self._signal(signal.SIGKILL)
        self._proc.wait()

    def _signal(self, sig: signal.Signals) -> None:
        with contextlib.suppress(OSError):  # it has exited: nothing to signal
            signal.pidfd_send_signal(self._pidfd, sig)

    def close(self) -> None:
        """Kill it and close its pipes; only once no thread waits on it."""
        self.kill()
        if self._pidfd >= 0:
            os.close(self._pidfd)
            self._pidfd = -1
        for pipe in (self._proc.stdin, self._proc.stdout):
            if pipe is not None:
                with contextlib.suppress(OSError):
                    pipe.close()


def _raise_for(line: str) -> None:
    """OSError for a reply that is not ``ok`` (NoRoom for the budget's)."""
    try:
        reply = json.loads(line)
        error, no_room = reply.get("error"), reply.get("no_room")
    except (ValueError, AttributeError):
        raise OSError(f"the staging helper replied {line!r}") from None
    if error:
        raise NoRoom(error) if no_room else OSError(error)


# -- the helper process ------------------------------------------------------------------------

def write(job: dict[str, object]) -> None:
    """One spare, if the budget has room: the archive extracted or copied, by the same
    ``place()`` a step runs."""
    room = job.get("room")
    if isinstance(room, dict):
        DiskBudget(_int(room, "max_bytes"), _int(room, "min_free")).check(
            Path(str(room["root"])), _int(room, "size"))
    ratio = Ratio(_int(job, "max_ratio", DEFAULT_RATIO.times),
                  _int(job, "ratio_floor", DEFAULT_RATIO.floor))
    place(Path(str(job["archive"])), Path(str(job["target"])), bool(job["extract"]),
          _int(job, "max_bytes"), _int(job, "max_entries"), ratio)


def _int(fields: dict[str, object], key: str, default: int | None = None) -> int:
    value = fields.get(key, default)
    if value is None:
        raise KeyError(key)
    return int(str(value))


def main() -> None:
    from workerpool.core.children import die_with_parent

    die_with_parent(signal.SIGKILL)
    if os.getppid() != int(sys.argv[1]):
        return  # the worker died before the line above took effect
    os.nice(NICE)
    for line in sys.stdin:
        try:
            write(json.loads(line))
            reply: dict[str, object] = {"ok": True}
        except NoRoom as exc:
            reply = {"error": str(exc), "no_room": True}
        except (ArchiveError, OSError, ValueError, KeyError) as exc:
            reply = {"error": str(exc) or type(exc).__name__}
        print(json.dumps(reply), flush=True)

