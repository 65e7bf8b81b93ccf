"""Keeping every process of a step within reach, so that none outlives its step.

A script runs in its own process group, and the group is killed when the step ends; but a process
can leave the group (``setsid``, a shell's job control). Each step's environment therefore
carries a token, ``WORKERPOOL_STEP_TOKEN=<owner>.<step>``, that every descendant inherits; when
the step ends, ``StepContainment.kill_all`` finds the processes still carrying it in ``/proc``
and kills them.

With ``WORKERPOOL_STEP_MAX_PROCESSES`` set, each step also runs in its own pids cgroup (v2, or
the v1 ``pids`` hierarchy) capped at that many processes and threads: a fork bomb hits the cap
instead of the machine, and everything in the cgroup is killed at the end, even a process that
cleared its environment. The cgroups of a worker live in one directory, ``workerpool-<owner>``,
which the worker's watchdog empties and removes if the worker dies.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from workerpool.core.errors import BadInput
from workerpool.worker.isolation.users import SETPRIV, ScriptUser, drop_to, setpriv_path

log = logging.getLogger(__name__)

TOKEN_VAR = "WORKERPOOL_STEP_TOKEN"
SCRIPT_UMASK = 0o077  # what a script creates is its own
KILL_ROUNDS_SECONDS = 5.0  # how long kill_all keeps finding and killing stragglers
PROBE_RANGE = 512  # up to this many new pids are probed one by one; beyond, /proc is listed
PROC = Path("/proc")
NO_CGROUP = ("WORKERPOOL_STEP_MAX_PROCESSES needs a pids cgroup this worker may create cgroups "
             "in (run it as root, or under systemd with Delegate=yes); unset it to run steps "
             "without a process limit")


def owner_tag(root: Path) -> str:
    """A worker's tag, from its working-directory root; each of its step tokens starts with it."""
    return hashlib.sha256(str(root).encode()).hexdigest()[:16]


def needle(prefix: str) -> bytes:
    return b"\0" + f"{TOKEN_VAR}={prefix}".encode()


_proc_files: dict[str, int] = {}  # /proc files read at every step, kept open


def _read_proc(name: str) -> bytes:
    """The current content of a small /proc file: one pread on a descriptor kept open (the
    kernel writes it afresh for each read at offset 0)."""
    path = f"{PROC}/{name}"
    fd = _proc_files.get(path)
    if fd is None:
        opened = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        fd = _proc_files.setdefault(path, opened)
        if fd != opened:  # another thread opened it first
            os.close(opened)
    size = 65536
    while len(data := os.pread(fd, size, 0)) == size:  # /proc/stat of a machine of many CPUs
        size *= 4
    return data


def last_pid() -> int | None:
    """The pid most recently allocated on this machine (in this pid namespace)."""
    try:
        return int(_read_proc("loadavg").split()[4])
    except (OSError, ValueError, IndexError):
        return None


def forks() -> int | None:
    """Processes and threads created on this machine since it booted (each took a pid)."""
    try:
        text = _read_proc("stat")
        start = text.index(b"\nprocesses ") + len(b"\nprocesses ")
        return int(text[start:text.index(b"\n", start)])
    except (OSError, ValueError):
        return None


def candidates(first_pid: int | None, forks_before: int | None = None) -> Iterator[int]:
    """Pids that may belong to a step whose first process got *first_pid*, *forks_before*
    being ``forks()`` just before it started. Pids are handed out in increasing order, so while
    fewer than ``PROBE_RANGE`` were handed out since (no wrap-around possible), its descendants
    have pids from *first_pid* to the latest one; otherwise (or if unknown) every live process
    is a candidate. Probing a few pids instead of listing every process keeps the end of a step
    cheap on a busy machine."""
    last, now = last_pid(), forks()
    if (first_pid is not None and last is not None and forks_before is not None
            and now is not None and first_pid <= last and now - forks_before < PROBE_RANGE):
        yield from range(first_pid, last + 1)
        return
    for entry in os.scandir(PROC):
        if entry.name.isdigit():
            yield int(entry.name)


def tagged_processes(prefix: str, first_pid: int | None = None,
                     forks_before: int | None = None) -> Iterator[int]:
    """Pidfds of the live processes whose environment holds a token starting with *prefix*
    (among those started since *first_pid*, when given).

    The pidfd is opened before the environment is read, so a signal sent through it can only
    reach the process that was checked, never one that reused its pid meanwhile.
    """
    wanted = needle(prefix)
    for pid in candidates(first_pid, forks_before):
        try:
            pidfd = os.pidfd_open(pid)
        except OSError:
            continue
        environ = read_environ(pid)
        if environ is not None and wanted in b"\0" + environ:
            yield pidfd
        else:
            os.close(pidfd)


EXEC_SETTLE_SECONDS = 0.05  # how long an empty environment is read again (an exec under way)
PF_KTHREAD = 0x00200000  # /proc/PID/stat flags: a kernel thread


def read_environ(pid: int) -> bytes | None:
    """*pid*'s environment; None if it is gone, a zombie, or someone else's.

    A process in the middle of an exec shows an empty environment for a moment (its new
    memory is in place before its environment is): a step's ``sleep 300 &``, caught there,
    would pass for untagged and outlive its step. An empty one is read again for up to
    ``EXEC_SETTLE_SECONDS``, unless it belongs to a zombie or a kernel thread.
    """
    deadline = None
    while True:
        try:
            with open(f"{PROC}/{pid}/environ", "rb") as fh:
                environ = fh.read()
        except OSError:
            return None
        if environ:
            return environ
        stat = _stat(pid)
        if stat is None or stat[0] in (b"Z", b"X"):  # gone, or a zombie: no memory left
            return None
        if stat[1] & PF_KTHREAD:  # a kernel thread never has an environment
            return environ
        now = time.monotonic()
        deadline = deadline or now + EXEC_SETTLE_SECONDS
        if now >= deadline:
            return environ  # a process started with no environment at all (env -i)
        time.sleep(0.001)


def _stat(pid: int) -> tuple[bytes, int] | None:
    """(state, flags) of *pid*, or None if it is gone."""
    try:
        with open(f"{PROC}/{pid}/stat", "rb") as fh:
            fields = fh.read().rsplit(b")", 1)[1].split()
        return fields[0], int(fields[6])
    except (OSError, ValueError, IndexError):
        return None


def signal_tagged(prefix: str, sig: signal.Signals, first_pid: int | None = None,
                  forks_before: int | None = None) -> int:
    """Send *sig* to every process tagged with *prefix*; how many there were."""
    return _signal_all(tagged_processes(prefix, first_pid, forks_before), sig)


def real_uid(pid: int) -> int | None:
    """*pid*'s real uid (from ``status``, which a process cannot hide by making itself
    undumpable, unlike the owner of ``/proc/PID``); None if it is gone."""
    try:
        with open(f"{PROC}/{pid}/status", "rb") as fh:
            for line in fh:
                if line.startswith(b"Uid:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def user_processes(uid: int, first_pid: int | None = None,
                   forks_before: int | None = None) -> Iterator[int]:
    """Pidfds of the live processes whose real uid is *uid* (among those started since
    *first_pid*, when given); the pidfd is opened before the uid is read, as for tokens."""
    for pid in candidates(first_pid, forks_before):
        try:
            pidfd = os.pidfd_open(pid)
        except OSError:
            continue
        if real_uid(pid) == uid:
            yield pidfd
        else:
            os.close(pidfd)


def signal_user(uid: int, sig: signal.Signals, first_pid: int | None = None,
                forks_before: int | None = None) -> int:
    """Send *sig* to every process of *uid*; how many there were."""
    return _signal_all(user_processes(uid, first_pid, forks_before), sig)


def clear_users(uids: list[int]) -> None:
    """Kill every process of *uids*, uids only this worker's scripts use: whatever runs as them
    now was left by an earlier worker that died with its watchdog."""
    for _ in range(100):
        if not sum(signal_user(uid, signal.SIGKILL) for uid in uids):
            return
        time.sleep(0.01)


def _signal_all(pidfds: Iterator[int], sig: signal.Signals) -> int:
    count = 0
    for pidfd in pidfds:
        with contextlib.suppress(OSError):
            signal.pidfd_send_signal(pidfd, sig)
        os.close(pidfd)
        count += 1
    return count


def _cgroup_path(line: str) -> tuple[str, str] | None:
    """``(controllers, path)`` of one ``/proc/self/cgroup`` line."""
    parts = line.rstrip("\n").split(":", 2)
    return (parts[1], parts[2]) if len(parts) == 3 else None


def _mounts() -> list[tuple[str, str, str, set[str]]]:
    """(mount point, root within its hierarchy, file system type, super options) of every
    cgroup file system."""
    found = []
    with contextlib.suppress(OSError), open(PROC / "self" / "mountinfo") as fh:
        for line in fh:
            before, _, after = line.partition(" - ")
            fields, rest = before.split(), after.split()
            if len(fields) >= 5 and len(rest) >= 3 and rest[0] in ("cgroup", "cgroup2"):
                found.append((fields[4], fields[3], rest[0], set(rest[2].split(","))))
    return found


def pids_cgroup() -> tuple[Path, int] | None:
    """This process's cgroup directory in a hierarchy with the pids controller, and the cgroup
    version (2 or 1); None when there is none this process could create cgroups in."""
    try:
        lines = (PROC / "self" / "cgroup").read_text().splitlines()
    except OSError:
        return None
    membership = [p for p in map(_cgroup_path, lines) if p is not None]
    for mount, root, fstype, options in _mounts():
        for controllers, path in membership:
            if fstype == "cgroup2":
                usable = controllers == ""
            else:
                usable = "pids" in options and "pids" in controllers.split(",")
            if not usable or not (path + "/").startswith(root.rstrip("/") + "/"):
                continue
            directory = Path(mount + path[len(root.rstrip("/")):].rstrip("/"))
            if (fstype == "cgroup" or _has_pids_v2(directory)) and os.access(directory, os.W_OK):
                return directory, 2 if fstype == "cgroup2" else 1
    return None


def _has_pids_v2(directory: Path) -> bool:
    """Whether children of *directory* get the pids controller (it is enabled for them)."""
    try:
        return "pids" in (directory / "cgroup.subtree_control").read_text().split()
    except OSError:
        return False


def require_pids_cgroup(max_processes: int | None) -> None:
    """BadInput, before a worker registers, if it was asked for a process limit it cannot
    enforce."""
    if max_processes is not None and pids_cgroup() is None:
        raise BadInput(NO_CGROUP)


class Containment:
    """How one worker keeps its steps' processes together (and, optionally, bounded)."""

    def __init__(self, root: Path, max_processes: int | None = None) -> None:
        self.owner = owner_tag(root)
        self.max_processes = max_processes
        self.cgroups: Path | None = None
        if max_processes is not None:
            self.cgroups = self._make_parent()

    def _make_parent(self) -> Path:
        found = pids_cgroup()
        if found is None:
            raise BadInput(NO_CGROUP)
        base, version = found
        parent = base / f"workerpool-{self.owner}"
        try:
            parent.mkdir(exist_ok=True)
            if version == 2:
                (parent / "cgroup.subtree_control").write_text("+pids")
        except OSError as exc:
            raise BadInput(f"WORKERPOOL_STEP_MAX_PROCESSES: cannot create cgroups in {base}: "
                           f"{exc.strerror}; unset it to run steps without a process limit"
                           ) from None
        return parent

    def step(self, user: ScriptUser | None = None) -> StepContainment:
        """A new token (and cgroup, with a process limit) for one step's processes, which run
        as *user* (None: the worker's own)."""
        unique = uuid.uuid4().hex
        cgroup = None
        if self.cgroups is not None:
            cgroup = self.cgroups / unique
            cgroup.mkdir()
            (cgroup / "pids.max").write_text(str(self.max_processes))
        return StepContainment(f"{self.owner}.{unique}", cgroup, user)


class StepContainment:
    """One step's processes: its token, its cgroup if the worker limits processes, and the user
    they run as; when only this step runs as that user, every process of it is the step's."""

    def __init__(self, token: str, cgroup: Path | None = None,
                 user: ScriptUser | None = None) -> None:
        self.token = token
        self.cgroup = cgroup
        self.user = user
        self.first_pid: int | None = None  # the script's leader, once started
        self.forks_before: int | None = None  # forks() just before the leader started

    @property
    def env(self) -> dict[str, str]:
        return {TOKEN_VAR: self.token}

    def start(self, argv: list[str]) -> tuple[list[str], dict[str, Any]]:
        """*argv*, and the ``Popen`` options, that start the script inside the step's cgroup
        (the shell moves itself while still the worker's user, then execs) and as its user."""
        user = self.user
        setpriv = setpriv_path()
        if self.cgroup is None:
            if user is None:
                return argv, {}
            if setpriv is None:  # Python changes the user itself, but then fork()s the worker
                return argv, {"user": user.uid, "group": user.gid, "extra_groups": [],
                              "umask": SCRIPT_UMASK}
            return [*drop_to(user, setpriv), *argv], {"umask": SCRIPT_UMASK}
        drop = [] if user is None else drop_to(user, setpriv or SETPRIV)
        return (["/bin/sh", "-c", 'echo 0 > "$0" && exec "$@"',
                 str(self.cgroup / "cgroup.procs"), *drop, *argv],
                {} if user is None else {"umask": SCRIPT_UMASK})

    def signal(self, sig: signal.Signals) -> None:
        """Send *sig* to every process of the step, in its process group or not."""
        kill_pids(self._cgroup_pids(), sig)
        signal_tagged(self.token, sig, self.first_pid, self.forks_before)
        if self.user is not None and self.user.exclusive:
            signal_user(self.user.uid, sig, self.first_pid, self.forks_before)

    def kill_all(self) -> bool:
        """SIGKILL every process of the step until none is left; False if some survived
        (a process that keeps forking faster than it can be found, without a cgroup)."""
        deadline = time.monotonic() + KILL_ROUNDS_SECONDS
        while time.monotonic() < deadline:
            if self.cgroup is not None and (self.cgroup / "cgroup.kill").exists():
                with contextlib.suppress(OSError):
                    (self.cgroup / "cgroup.kill").write_text("1")
            pids = self._cgroup_pids()
            kill_pids(pids, signal.SIGKILL)
            found = signal_tagged(self.token, signal.SIGKILL, self.first_pid, self.forks_before)
            if self.user is not None and self.user.exclusive:
                found += signal_user(self.user.uid, signal.SIGKILL, self.first_pid,
                                     self.forks_before)
            if not found and not pids:
                return True
            time.sleep(0.01)
        log.warning("processes of step token %s survived %gs of killing", self.token,
                    KILL_ROUNDS_SECONDS)
        return False

    def close(self) -> None:
        """Remove the step's cgroup (after ``kill_all``)."""
        if self.cgroup is not None:
            remove_cgroup(self.cgroup)

    def _cgroup_pids(self) -> list[int]:
        return cgroup_pids(self.cgroup) if self.cgroup is not None else []


def kill_pids(pids: list[int], sig: signal.Signals) -> None:
    """Send *sig* to each of *pids*, those already gone (or not ours) aside."""
    for pid in pids:
        with contextlib.suppress(OSError):
            os.kill(pid, sig)


def cgroup_pids(cgroup: Path) -> list[int]:
    try:
        return [int(p) for p in (cgroup / "cgroup.procs").read_text().split()]
    except (OSError, ValueError):
        return []


def remove_cgroup(cgroup: Path) -> None:
    """rmdir *cgroup* once its last (killed) process has left it."""
    deadline = time.monotonic() + KILL_ROUNDS_SECONDS
    while True:
        try:
            cgroup.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError as exc:
            if time.monotonic() > deadline:
                log.warning("could not remove cgroup %s: %s", cgroup, exc)
                return
            kill_pids(cgroup_pids(cgroup), signal.SIGKILL)
            time.sleep(0.01)


def kill_worker_leftovers(root: Path, uids: tuple[int, ...] = ()) -> None:
    """For a worker's watchdog: kill every process any of the worker's steps left (by token,
    by the worker's script uids, and by cgroup) and remove the worker's cgroups."""
    owner = owner_tag(root)
    for _ in range(100):
        killed = signal_tagged(owner + ".", signal.SIGKILL)
        killed += sum(signal_user(uid, signal.SIGKILL) for uid in uids)
        if not killed:
            break
        time.sleep(0.01)
    found = pids_cgroup()
    if found is None:
        return
    parent = found[0] / f"workerpool-{owner}"
    if not parent.is_dir():
        return
    for cgroup in parent.iterdir():
        if cgroup.is_dir():
            remove_cgroup(cgroup)
    remove_cgroup(parent)
