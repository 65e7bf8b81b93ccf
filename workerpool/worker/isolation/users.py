"""Who a step's script runs as: never the worker's own user when the worker runs as root.

Three modes (``WORKERPOOL_SCRIPT_USER``, ``worker start --script-user``):

- per-slot users (the default for a root worker): each slot of the worker's concurrency, and
  its health check, has a uid of its own from ``WORKERPOOL_SCRIPT_UIDS`` (61000-61999), taken
  with a lock file under ``/run/workerpool/uids`` so no other worker on the machine uses it
  while this one lives. A script cannot read the worker (another uid: ``/proc/PID/environ``
  and memory are closed to it), nor a concurrent step's private working directory, and every
  process of its uid belongs to its step, so all of them are killed when the step ends, even
  one that left its group and cleared its environment. The uids need no passwd entry: the
  script gets ``HOME`` (its working directory), ``USER`` and ``LOGNAME``. They share one group
  (the first uid of the range), so files the scripts must read (a pool's tool credentials) can
  be given to it: ``chgrp 61000 FILE; chmod 0640 FILE``.
- a named user (``--script-user deploy``): every step runs as that user, with its home; steps
  of one worker share it, so they are not kept from each other.
- ``same``: scripts run as the worker's own user, as before; a script can then read what the
  worker holds (say so at start-up; docs/security.md).
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import functools
import os
import pwd
import shutil
import stat
import sys
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

from workerpool.core.errors import BadInput

SAME = "same"
SETPRIV = "setpriv"  # util-linux: drops to the script's user after a cgroup move
LOCK_DIRS = (Path("/run/workerpool/uids"), Path(tempfile.gettempdir()) / "workerpool-uids")


@dataclass(frozen=True)
class ScriptUser:
    """A user a script runs as; *exclusive* when only this worker's one slot runs as it, so
    every process of the uid belongs to the step running there."""

    uid: int
    gid: int
    name: str
    home: str | None = None  # None: the step's working directory
    exclusive: bool = False

    def env(self, workdir: Path) -> dict[str, str]:
        return {"HOME": self.home or str(workdir), "USER": self.name, "LOGNAME": self.name}


def named_user(name: str) -> ScriptUser:
    """A user by name or number; BadInput if the machine has no such user."""
    try:
        entry = pwd.getpwuid(int(name)) if name.isdigit() else pwd.getpwnam(name)
    except (KeyError, OverflowError):
        raise BadInput(f"--script-user {name!r}: no such user on this machine; create it "
                       "(useradd --system deploy), or leave it unset for per-slot users") from None
    if entry.pw_uid == 0:
        raise BadInput(f"--script-user {name!r} is root; scripts must not run as root (use "
                       "'same' to run them as the worker's own user)")
    return ScriptUser(entry.pw_uid, entry.pw_gid, entry.pw_name, entry.pw_dir)


class ScriptUsers:
    """The users this worker's scripts run as: one per running step, handed out and taken
    back. ``None`` from ``take`` means the worker's own user."""

    def __init__(self, choice: str | None, slots: int, uids: range) -> None:
        self.mode = _mode(choice)
        self._lock = threading.Lock()
        self._locks: list[int] = []
        self._free: list[ScriptUser] = []
        self._all: list[ScriptUser] = []
        self.fixed: ScriptUser | None = None
        self.health: ScriptUser | None = None
        if self.mode == "slots":
            taken = self._claim(uids, slots + 1)
            group = uids.start
            users = [ScriptUser(uid, group, f"workerpool-{uid}", None, True) for uid in taken]
            self._all = users
            self.health, self._free = users[0], users[1:][::-1]
        elif self.mode == "user":
            assert choice is not None
            self.fixed = self.health = named_user(choice)

    @property
    def locks(self) -> tuple[int, ...]:
        """The open lock files that keep this worker's uids from other workers."""
        return tuple(self._locks)

    @property
    def uids(self) -> list[int]:
        """The uids only this worker's scripts use (its watchdog kills their processes)."""
        return [u.uid for u in self._all]

    def take(self) -> ScriptUser | None:
        if self.mode != "slots":
            return self.fixed
        with self._lock:
            return self._free.pop()  # one is free: Celery runs at most `slots` steps at once

    def give_back(self, user: ScriptUser | None) -> None:
        if user is not None and self.mode == "slots":
            with self._lock:
                self._free.append(user)

    def describe(self) -> str:
        """One line for the worker's start-up: who scripts run as, and what that means."""
        if self.mode == "slots":
            uids = ", ".join(map(str, self.uids))
            return (f"scripts run as users of their own (uids {uids}; group {self._all[0].gid}), "
                    "not as this worker's user: they cannot read its credentials or each "
                    "other's working directories")
        if self.mode == "user" and self.fixed is not None:
            return (f"scripts run as user {self.fixed.name} (uid {self.fixed.uid}); concurrent "
                    "steps of this worker share it")
        if os.geteuid() == 0:
            return ("WARNING: scripts run as root, this worker's own user (--script-user "
                    "same): a script can read this worker's Redis credentials and keys; see "
                    "docs/security.md")
        return ("WARNING: scripts run as this worker's own user (it is not root, so it cannot "
                "give them another): a script can read this worker's Redis credentials and "
                "keys; run the worker as root to isolate them (docs/security.md)")

    def close(self) -> None:
        for fd in self._locks:
            os.close(fd)
        self._locks = []

    def _claim(self, uids: range, count: int) -> list[int]:
        """*count* uids of *uids* that no other live worker on this machine holds, each held
        by a lock file until this process ends."""
        directory = _lock_dir()
        taken: list[int] = []
        for uid in uids:
            if len(taken) == count:
                break
            fd = os.open(directory / f"{uid}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            self._locks.append(fd)
            taken.append(uid)
        if len(taken) < count:
            self.close()
            raise BadInput(f"WORKERPOOL_SCRIPT_UIDS {uids.start}-{uids.stop - 1} has {len(taken)} "
                           f"free uids and this worker needs {count} (its concurrency and a "
                           "health check); widen the range or stop other workers")
        return taken


def isolate(choice: str | None, slots: int, uids: range,
            max_processes: int | None) -> ScriptUsers:
    """The users a worker of *slots* slots gives its scripts, after what it needs is checked
    (refused with BadInput before the worker registers). Isolated scripts cannot gain
    privileges again (``forbid_new_privileges``)."""
    users = ScriptUsers(choice, slots, uids)
    if users.mode == "same":
        return users
    if max_processes is not None and shutil.which(SETPRIV) is None:
        users.close()
        raise BadInput("WORKERPOOL_STEP_MAX_PROCESSES with scripts as other users needs "
                       f"{SETPRIV} (util-linux) on the PATH")
    forbid_new_privileges()
    return users


@functools.cache
def setpriv_path() -> str | None:
    """Where ``setpriv`` is, found once: scripts start through it to change user. Python can
    change the user of a child itself, but only by fork()ing the whole worker (no vfork once a
    uid is to be set), which costs several milliseconds more at each step's start."""
    return shutil.which(SETPRIV)


def drop_to(user: ScriptUser, setpriv: str) -> list[str]:
    """The argv prefix that runs the rest as *user*: its uid and gid (real, effective and
    saved) and no supplementary groups."""
    return [setpriv, f"--reuid={user.uid}", f"--regid={user.gid}", "--clear-groups", "--"]


def python_for_scripts(users: ScriptUsers) -> str | None:
    """The interpreter Python steps run: this worker's own, unless the script users cannot
    reach it (it lives under a folder others may not enter, such as /root): then the first
    ``python3`` they can reach, saying so; None (no Python steps) if there is none."""
    if users.mode == "same" or reachable_by_others(sys.executable):
        return sys.executable
    for candidate in (shutil.which("python3"), "/usr/local/bin/python3", "/usr/bin/python3"):
        if candidate and os.path.exists(candidate) and reachable_by_others(candidate):
            print(f"python steps run {candidate}: the script users cannot reach this worker's "
                  f"interpreter {sys.executable}", flush=True)
            return candidate
    print(f"WARNING: python steps cannot run here: the script users cannot reach "
          f"{sys.executable}, nor any python3; install workerpool where others can read it "
          "(e.g. /opt/workerpool)", flush=True)
    return None


def _mode(choice: str | None) -> str:
    if choice == SAME:
        return "same"
    if choice:
        return "user"
    return "slots" if os.geteuid() == 0 else "same"


def _lock_dir() -> Path:
    for directory in LOCK_DIRS:
        with contextlib.suppress(OSError):
            directory.mkdir(parents=True, mode=0o700, exist_ok=True)
            if directory.stat().st_uid == os.geteuid():
                return directory
    raise BadInput(f"cannot create {LOCK_DIRS[0]} to hold this worker's script uids; set "
                   "WORKERPOOL_SCRIPT_USER=same or give the worker a writable /run")


PR_SET_NO_NEW_PRIVS = 38


def forbid_new_privileges() -> None:
    """From now on nothing this process starts gains privileges by exec (setuid binaries, file
    capabilities): a script cannot become root again through ``sudo`` or ``su``. The worker
    itself keeps what it has (it still starts scripts as their users)."""
    if ctypes.CDLL(None, use_errno=True).prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS) failed")


def hand_over(directory: Path, user: ScriptUser | None) -> None:
    """Give *user* everything in *directory* (the step's working directory, as the worker
    prepared it: the script, extracted packages), so the script owns its own copy."""
    if user is None:
        return
    os.chown(directory, user.uid, user.gid)
    for top, dirs, files in os.walk(directory):
        for name in (*dirs, *files):
            os.chown(os.path.join(top, name), user.uid, user.gid, follow_symlinks=False)


def reachable_by_others(path: str) -> bool:
    """Whether a user other than the owner (nor in its group) can reach and run *path*: every
    directory on the way is searchable by others, and the file readable and executable."""
    target = Path(os.path.realpath(path))
    for directory in target.parents:
        if not os.stat(directory).st_mode & stat.S_IXOTH:
            return False
    mode = os.stat(target).st_mode
    return bool(mode & stat.S_IROTH and mode & stat.S_IXOTH)
