"""Kills a dead worker's script process groups and removes its working directories.

A worker starts one watchdog (``python -m workerpool.worker.isolation.watchdog ROOT FD UIDS``)
holding a pipe to it, and lists its running script process groups in a ``GroupTable``: slots of
shared memory (a memfd the watchdog inherits as FD), written by the worker with no system call
and read by the watchdog only at the end. When the pipe closes (the worker exited or was
SIGKILLed), the watchdog kills every group still listed, every process of the worker's script
uids, and every process that left its group but still carries one of the worker's step tokens or
sits in one of its step cgroups (``containment.py``), so no script outlives its worker; then it
removes ROOT, the worker's directory of step working directories.
"""

from __future__ import annotations

import array
import contextlib
import logging
import mmap
import os
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

from workerpool.core.variables import without_settings
from workerpool.worker.isolation.containment import (
    kill_worker_leftovers,
    needle,
    owner_tag,
    read_environ,
)

log = logging.getLogger("workerpool.worker")

SLOTS = 1024  # running script groups a worker can list: over its largest concurrency (256)
SLOT_TYPE = "i"  # a pgid per slot, 0 when free


class GroupTable:
    """The worker's side: a slot per running script group, in memory the watchdog shares.

    Adding or removing a group is a store into the shared page, so it costs a step nothing
    measurable and never wakes the watchdog.
    """

    def __init__(self) -> None:
        self.fd = os.memfd_create("workerpool-groups", os.MFD_CLOEXEC)
        os.ftruncate(self.fd, SLOTS * array.array(SLOT_TYPE).itemsize)
        self._table = memoryview(mmap.mmap(self.fd, 0)).cast("i")
        self._lock = threading.Lock()
        self._free = list(range(SLOTS - 1, -1, -1))
        self._slot: dict[int, int] = {}

    def add(self, pgid: int) -> bool:
        """List *pgid*; False if every slot is taken (its step's token still finds it)."""
        with self._lock:
            if pgid in self._slot:
                return True
            if not self._free:
                return False
            slot = self._slot[pgid] = self._free.pop()
            self._table[slot] = pgid
            return True

    def remove(self, pgid: int) -> None:
        with self._lock:
            slot = self._slot.pop(pgid, None)
            if slot is not None:
                self._table[slot] = 0
                self._free.append(slot)


def read_groups(fd: int) -> list[int]:
    """The pgids listed in a ``GroupTable`` (the watchdog's side, or a test's)."""
    table = array.array(SLOT_TYPE)
    table.frombytes(os.pread(fd, SLOTS * table.itemsize, 0))
    return [pgid for pgid in table if pgid > 0]


def is_own_group(pgid: int, owner: str) -> bool:
    """Whether *pgid* leads a group started by this worker: its leader carries one of the
    worker's step tokens. A slot left for a group whose number was reused since, or written by
    anyone else, names no group of ours."""
    try:
        if os.getpgid(pgid) != pgid:
            return False
    except OSError:
        return False
    environ = read_environ(pgid)
    return environ is not None and needle(owner + ".") in b"\0" + environ


class Watchdog:
    """The child that kills this worker's script groups if the worker dies without doing so.

    It learns of the worker's end from its stdin (EOF); the groups running then are those in
    the ``GroupTable`` it shares with this process, so telling it of a group costs a step a
    store into shared memory, not a message that wakes it nor a file.
    """

    def __init__(self, root: Path, uids: list[int], locks: tuple[int, ...] = ()) -> None:
        self.groups = GroupTable()
        # The watchdog holds the script uids' locks too (*locks*, inherited), so no new worker
        # takes a uid while this one's watchdog may still be killing its processes.
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "workerpool.worker.isolation.watchdog", str(root),
             str(self.groups.fd), ",".join(map(str, uids))],
            stdin=subprocess.PIPE, start_new_session=True, text=True,
            pass_fds=(self.groups.fd, *locks), env=without_settings(os.environ))

    def tell(self, sign: str, pgid: int) -> None:
        if sign == "+":
            if not self.groups.add(pgid):
                log.warning("more script groups than the watchdog lists (%d); group %d is "
                            "found by its step token only", SLOTS, pgid)
        else:
            self.groups.remove(pgid)

    def close(self) -> None:
        assert self._proc.stdin is not None
        self._proc.stdin.close()
        self._proc.wait()


def main() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    root, groups = Path(sys.argv[1]), int(sys.argv[2])
    uids = tuple(int(uid) for uid in sys.argv[3].split(",") if uid)
    while sys.stdin.buffer.read(65536):  # until the worker's end closes the pipe
        pass
    owner = owner_tag(root)
    for pgid in read_groups(groups):
        if is_own_group(pgid, owner):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pgid, signal.SIGKILL)
    kill_worker_leftovers(root, uids)
    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
