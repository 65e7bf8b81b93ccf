"""Running one script in its own process group: stream output, enforce timeout and cancel."""

from __future__ import annotations

import contextlib
import functools
import os
import selectors
import shutil
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from workerpool.worker.isolation.containment import Containment, StepContainment, forks
from workerpool.worker.isolation.users import ScriptUser
from workerpool.worker.step.servicemessages import PREFIX
from workerpool.worker.step.steplog import StepLog

CHUNK = 65536
DRAIN_CHUNKS = 16  # reads: more than a pipe holds (64 KiB by default, 1 MiB at most)
STOP_TIMEOUT = "timeout"
STOP_CANCEL = "cancel"
STOP_ABORT = "abort"
_PREFIX = PREFIX.encode()


@dataclass(frozen=True)
class ScriptOutcome:
    exit_code: int | None
    stopped: str | None  # None, or why workerpool stopped the script


def decode(raw: bytes) -> str:
    """A line of output as text: invalid UTF-8 and NUL bytes become U+FFFD."""
    return raw.decode("utf-8", "replace").replace("\x00", "\ufffd")


@functools.lru_cache(maxsize=64)
def find_program(name: str, path: str) -> str | None:
    """Where *name* is on *path* (a script's PATH), remembered: without it, each start would
    try to exec every PATH entry in turn until one holds the program."""
    return None if os.sep in name else shutil.which(name, path=path)


class OutputStream:
    """One of the script's pipes, cut into lines for the step log.

    Memory stays bounded whatever the script writes: a line longer than the log keeps is stored
    cut and the rest of it skipped, and once the log is full, lines are only counted (those
    that may be service messages are still read).
    """

    def __init__(self, name: str, steplog: StepLog) -> None:
        self.name = name
        self.log = steplog
        self._rest = b""
        self._skipping = False  # inside a line already stored cut

    def feed(self, data: bytes) -> None:
        if self._skipping:
            newline = data.find(b"\n")
            if newline < 0:
                return
            self._skipping = False
            data = data[newline + 1:]
        data = self._rest + data
        if self.log.full and _PREFIX not in data:
            self.log.skip(data.count(b"\n"))
            data = data[data.rfind(b"\n") + 1:]
        else:
            *lines, data = data.split(b"\n")
            for raw in lines:
                self.log.line(self.name, decode(raw.rstrip(b"\r")))
        if len(data) > self.log.max_line_chars:
            self.log.line(self.name, decode(data))
            data, self._skipping = b"", True
        self._rest = data

    def close(self) -> None:
        """End of the stream: a last line without a newline is still a line."""
        if self._rest:
            self.log.line(self.name, decode(self._rest.rstrip(b"\r")))
        self._rest, self._skipping = b"", False


class ScriptRun:
    """A script's process group; ``run`` returns when the leader exits or it is stopped.

    Whatever way the script ends, every process it started is killed before ``run`` returns:
    its process group, and (found by the step's token, or in its cgroup) those that left it.
    """

    def __init__(self, argv: list[str], workdir: Path, env: dict[str, str], steplog: StepLog,
                 timeout: float, kill_grace: float,
                 containment: Containment | None = None, user: ScriptUser | None = None) -> None:
        self.argv = argv
        self.workdir = workdir
        self.env = env
        self.log = steplog
        self.timeout = timeout
        self.kill_grace = kill_grace
        self.containment = containment
        self.user = user  # None: the worker's own
        self._wake_r, self._wake_w = os.pipe()
        self._wake_lock = threading.Lock()
        self._stop_reason: str | None = None
        self._streams = {name: OutputStream(name, steplog) for name in ("stdout", "stderr")}

    def stop(self, reason: str) -> None:
        """Ask the running script to stop (thread-safe); the first reason wins."""
        if self._stop_reason is None:
            self._stop_reason = reason
        with self._wake_lock, contextlib.suppress(OSError):
            if self._wake_w >= 0:  # closed once run() returns: the number may be reused
                os.write(self._wake_w, b"x")

    def run(self, watch: Callable[[str, int], None] = lambda sign, pgid: None,
            started: Callable[[], None] = lambda: None) -> ScriptOutcome:
        """Start the script and supervise it; *watch* hears ``("+", pgid)`` and ``("-", pgid)``
        so a watchdog can kill the group should this process die first; *started* is called
        once the script's process exists."""
        try:
            processes = (self.containment.step(self.user) if self.containment is not None
                         else StepContainment(uuid.uuid4().hex, None, self.user))
            try:
                return self._run(processes, watch, started)
            finally:
                processes.close()
        finally:
            with self._wake_lock:
                for fd in (self._wake_r, self._wake_w):
                    os.close(fd)
                self._wake_r = self._wake_w = -1

    def _run(self, processes: StepContainment, watch: Callable[[str, int], None],
             started: Callable[[], None]) -> ScriptOutcome:
        processes.forks_before = forks()
        (argv, options), env = processes.start(self.argv), {**self.env, **processes.env}
        program = find_program(argv[0], env.get("PATH", os.defpath))
        try:
            proc = self._start(argv, env, program, options)
        except FileNotFoundError:
            if program is None:
                raise
            find_program.cache_clear()  # moved since it was looked up: search the PATH again
            proc = self._start(argv, env, None, options)
        processes.first_pid = proc.pid
        try:
            watch("+", proc.pid)
            started()
            return self._supervise(proc, processes)
        finally:
            self._kill_group(proc.pid, signal.SIGKILL)
            proc.wait()
            processes.kill_all()  # those that left the group: setsid, job control
            watch("-", proc.pid)

    def _start(self, argv: list[str], env: dict[str, str], program: str | None,
               options: dict[str, Any]) -> subprocess.Popen[bytes]:
        return subprocess.Popen(argv, executable=program, cwd=self.workdir, env=env,
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, start_new_session=True, **options)

    def _supervise(self, proc: subprocess.Popen[bytes],
                   processes: StepContainment) -> ScriptOutcome:
        assert proc.stdout is not None and proc.stderr is not None
        sel = selectors.DefaultSelector()
        sel.register(proc.stdout, selectors.EVENT_READ, "stdout")
        sel.register(proc.stderr, selectors.EVENT_READ, "stderr")
        sel.register(self._wake_r, selectors.EVENT_READ, "wake")
        pidfd = os.pidfd_open(proc.pid)
        sel.register(pidfd, selectors.EVENT_READ, "exit")
        deadline = time.monotonic() + self.timeout
        open_streams = 2
        try:
            while True:
                if self._stop_reason is None and time.monotonic() >= deadline:
                    self._stop_reason = STOP_TIMEOUT
                if self._stop_reason is not None:
                    self._terminate(proc, processes)
                    self._drain(sel)
                    return ScriptOutcome(proc.returncode, self._stop_reason)
                if open_streams == 0 and proc.poll() is not None:
                    break
                for key, _ in sel.select(self._wait_for(deadline)):
                    if key.data == "wake":
                        os.read(self._wake_r, 64)
                    elif key.data == "exit":
                        sel.unregister(pidfd)
                        proc.wait()
                        self._drain(sel)
                        return ScriptOutcome(proc.returncode, None)
                    elif not self._read(key, sel):
                        open_streams -= 1
                if (due := self.log.due_in()) is not None and due <= 0:
                    self.log.flush()
        finally:
            os.close(pidfd)
            sel.close()
        return ScriptOutcome(proc.returncode, None)

    def _wait_for(self, deadline: float) -> float:
        remaining = max(0.0, deadline - time.monotonic())
        due = self.log.due_in()
        return remaining if due is None else min(remaining, due)

    def _read(self, key: selectors.SelectorKey, sel: selectors.BaseSelector) -> bool:
        """Read what is available on one stream; False once it reaches end of file."""
        data = os.read(key.fd, CHUNK)
        stream = self._streams[str(key.data)]
        if not data:
            sel.unregister(key.fileobj)
            stream.close()
            return False
        stream.feed(data)
        return True

    def _drain(self, sel: selectors.BaseSelector) -> None:
        """After the leader exits: take what is already in the pipes (at most a full pipe's
        worth) without waiting for processes that may still hold them open, or keep writing
        to them (they are killed next)."""
        for key in list(sel.get_map().values()):
            if key.data not in self._streams:
                continue
            os.set_blocking(key.fd, False)
            with contextlib.suppress(BlockingIOError):
                for _ in range(DRAIN_CHUNKS):
                    if not self._read(key, sel):
                        break
            self._streams[str(key.data)].close()

    def _terminate(self, proc: subprocess.Popen[bytes], processes: StepContainment) -> None:
        """SIGTERM the whole group (and the step's processes outside it), then SIGKILL the
        group after the grace period."""
        self._kill_group(proc.pid, signal.SIGTERM)
        processes.signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(self.kill_grace)
        self._kill_group(proc.pid, signal.SIGKILL)
        proc.wait()

    @staticmethod
    def _kill_group(pgid: int, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, sig)
