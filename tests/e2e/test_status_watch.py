"""``workerpool status --watch``: the real command under a pseudo-terminal and on a pipe, against
the tests' Redis, until Ctrl-C (SIGINT)."""

from __future__ import annotations

import fcntl
import os
import signal
import struct
import subprocess
import sys
import termios
import threading
from collections.abc import Iterator
from urllib.parse import urlparse

import pytest
from conftest import ADMIN_PASSWORD, wait_for
from netproxy import NetProxy

from workerpool.cli.watch import ERASE_BELOW, HOME

HEADER = "workerpool status, every 0.2s: "
WATCH = [sys.executable, "-m", "workerpool", "status", "--watch", "--interval", "0.2"]


class Output:
    """Everything a process writes on *fd* (a pseudo-terminal's master end or a pipe), read
    by a thread so the process never blocks on a full buffer."""

    def __init__(self, fd: int) -> None:
        self.fd, self.data = fd, bytearray()
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        while True:
            try:
                chunk = os.read(self.fd, 65536)
            except OSError:  # EIO: the terminal's other end is closed
                return
            if not chunk:
                return
            with self.lock:
                self.data += chunk

    def text(self) -> str:
        with self.lock:
            return self.data.decode(errors="replace")

    def views(self) -> list[str]:
        """The views seen so far, each from its header on."""
        return [HEADER + view for view in self.text().split(HEADER)[1:]]


def stopped_by_ctrl_c(proc: subprocess.Popen[bytes], output: Output) -> str:
    """Send SIGINT, as Ctrl-C does; the command exits 0 without a traceback. All it wrote."""
    proc.send_signal(signal.SIGINT)
    assert proc.wait(30) == 0
    output.thread.join(10)
    text = output.text()
    assert "Traceback" not in text and "KeyboardInterrupt" not in text, text[-2000:]
    return text


@pytest.fixture
def watched(env) -> Iterator[list[subprocess.Popen[bytes]]]:
    """The watch processes a test starts, killed if the test left one running."""
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_status_watch_redraws_in_place_on_a_terminal(client, env, watched):
    master, terminal = os.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    proc = subprocess.Popen(WATCH, env=env, stdin=terminal, stdout=terminal, stderr=terminal)
    watched.append(proc)
    os.close(terminal)
    output = Output(master)
    try:
        wait_for(lambda: len(output.views()) >= 2, 30, "two views")
        before = len(output.views())
        assert not any("Watched Pool" in view for view in output.views())
        client.pools.add("Watched Pool")
        wait_for(lambda: any("Watched Pool" in v for v in output.views()[before:]), 30,
                 "a pool added after the start in a later view")
        text = stopped_by_ctrl_c(proc, output)
    finally:
        os.close(master)
    views = text.split(HOME)[1:]
    assert len(views) >= 3 and all(HEADER in v and ERASE_BELOW in v for v in views)
    assert "POOL" in views[-2] and "built-in worker" in views[-2]


def test_status_watch_prints_view_after_view_when_not_a_terminal(client, env, watched):
    proc = subprocess.Popen(WATCH, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    watched.append(proc)
    assert proc.stdout is not None
    output = Output(proc.stdout.fileno())
    wait_for(lambda: len(output.views()) >= 3, 30, "three views")
    text = stopped_by_ctrl_c(proc, output)
    assert "\x1b" not in text
    assert text.startswith(HEADER) and f"\n\n{HEADER}" in text  # a blank line between views
    assert all("built-in worker" in view for view in output.views()[:-1])


def test_status_watch_shows_redis_unreachable_and_goes_on(client, env, redis_server, watched):
    with NetProxy(redis_server.port) as proxy:
        url = urlparse(env["WORKERPOOL_REDIS_URL"])
        via_proxy = url._replace(netloc=url.netloc.replace(f":{url.port}", f":{proxy.port}"))
        proc = subprocess.Popen(WATCH, env={**env, "WORKERPOOL_REDIS_URL": via_proxy.geturl()},
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT)
        watched.append(proc)
        assert proc.stdout is not None
        output = Output(proc.stdout.fileno())
        wait_for(lambda: "built-in worker" in output.text(), 30, "a view")
        proxy.cut()
        wait_for(lambda: "is unreachable" in output.text(), 30, "Redis unreachable in a view")
        cut_at = len(output.views())
        unreachable = next(v for v in output.views() if "is unreachable" in v)
        lines = [line for line in unreachable.splitlines() if line]
        assert len(lines) == 2 and lines[1].startswith("workerpool: error: Redis at"), lines
        assert ADMIN_PASSWORD not in output.text()
        proxy.restore()
        client.pools.add("Watched Pool")
        wait_for(lambda: any("Watched Pool" in v for v in output.views()[cut_at:]), 30,
                 "a view once Redis is back")
        stopped_by_ctrl_c(proc, output)
