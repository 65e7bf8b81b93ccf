"""Running one script in its own process group: stream output, enforce timeout and cancel."""

from __future__ import annotations

import contextlib
import os
import selectors
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from workerpool.steplog import StepLog

CHUNK = 65536
STOP_TIMEOUT = "timeout"
STOP_CANCEL = "cancel"
STOP_ABORT = "abort"


@dataclass(frozen=True)
class ProcessOutcome:
    exit_code: int | None
    stopped: str | None  # None, or why workerpool stopped the script


class ScriptProcess:
    """A script's process group; ``run`` returns when the leader exits or it is stopped."""

    def __init__(self, argv: list[str], workdir: Path, env: dict[str, str], steplog: StepLog,
                 timeout: float, kill_grace: float) -> None:
        self.argv = argv
        self.workdir = workdir
        self.env = env
        self.log = steplog
        self.timeout = timeout
        self.kill_grace = kill_grace
        self._wake_r, self._wake_w = os.pipe()
        self._stop_reason: str | None = None
        self._buffers: dict[str, bytes] = {"stdout": b"", "stderr": b""}

    def stop(self, reason: str) -> None:
        """Ask the running script to stop (thread-safe); the first reason wins."""
        if self._stop_reason is None:
            self._stop_reason = reason
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"x")

    def run(self, watch: Callable[[str, int], None] = lambda sign, pgid: None) -> ProcessOutcome:
        """Start the script and supervise it; *watch* hears ``("+", pgid)`` and ``("-", pgid)``
        so a watchdog can kill the group should this process die first."""
        proc = subprocess.Popen(self.argv, cwd=self.workdir, env=self.env,
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, start_new_session=True)
        watch("+", proc.pid)
        try:
            return self._supervise(proc)
        finally:
            self._kill_group(proc.pid, signal.SIGKILL)
            proc.wait()
            watch("-", proc.pid)
            for fd in (self._wake_r, self._wake_w):
                os.close(fd)

    def _supervise(self, proc: subprocess.Popen[bytes]) -> ProcessOutcome:
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
                    self._terminate(proc)
                    self._drain(sel)
                    return ProcessOutcome(proc.returncode, self._stop_reason)
                if open_streams == 0 and proc.poll() is not None:
                    break
                for key, _ in sel.select(self._wait_for(deadline)):
                    if key.data == "wake":
                        os.read(self._wake_r, 64)
                    elif key.data == "exit":
                        sel.unregister(pidfd)
                        proc.wait()
                        self._drain(sel)
                        return ProcessOutcome(proc.returncode, None)
                    elif not self._read(key, sel):
                        open_streams -= 1
                if (due := self.log.due_in()) is not None and due <= 0:
                    self.log.flush()
        finally:
            os.close(pidfd)
            sel.close()
        return ProcessOutcome(proc.returncode, None)

    def _wait_for(self, deadline: float) -> float:
        remaining = max(0.0, deadline - time.monotonic())
        due = self.log.due_in()
        return remaining if due is None else min(remaining, due)

    def _read(self, key: selectors.SelectorKey, sel: selectors.BaseSelector) -> bool:
        """Read what is available on one stream; False once it reaches end of file."""
        data = os.read(key.fd, CHUNK)
        stream = str(key.data)
        if not data:
            sel.unregister(key.fileobj)
            self._emit(stream, self._buffers[stream], final=True)
            self._buffers[stream] = b""
            return False
        self._buffers[stream] = self._emit(stream, self._buffers[stream] + data, final=False)
        return True

    def _emit(self, stream: str, data: bytes, final: bool) -> bytes:
        *lines, rest = data.split(b"\n")
        for raw in lines:
            self.log.line(stream, raw.rstrip(b"\r").decode("utf-8", "replace"))
        if len(rest) > self.log.max_line_chars:  # a huge line with no newline yet
            self.log.line(stream, rest.decode("utf-8", "replace"))
            rest = b""
        if final and rest:
            self.log.line(stream, rest.rstrip(b"\r").decode("utf-8", "replace"))
            rest = b""
        return rest

    def _drain(self, sel: selectors.BaseSelector) -> None:
        """After the leader exits: take what is already in the pipes without waiting for
        children that may still hold them open (they are killed next)."""
        for key in list(sel.get_map().values()):
            if key.data not in ("stdout", "stderr"):
                continue
            os.set_blocking(key.fd, False)
            try:
                while self._read(key, sel):
                    pass
            except BlockingIOError:
                pass
            stream = str(key.data)
            if self._buffers[stream]:
                self._emit(stream, self._buffers[stream], final=True)
                self._buffers[stream] = b""

    def _terminate(self, proc: subprocess.Popen[bytes]) -> None:
        """SIGTERM the whole group, then SIGKILL it after the grace period."""
        self._kill_group(proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(self.kill_grace)
        self._kill_group(proc.pid, signal.SIGKILL)
        proc.wait()

    @staticmethod
    def _kill_group(pgid: int, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, sig)
