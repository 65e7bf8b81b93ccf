"""Local HTTP for tests: a directory server that counts requests, a server that answers with
chosen statuses and records requests, a GET helper, and a ``workerpool`` command run in the
background."""

from __future__ import annotations

import base64
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, SimpleHTTPRequestHandler
from pathlib import Path


@dataclass
class Server:
    url: str
    counts: Counter[str]

    def gets(self, suffix: str) -> int:
        return sum(n for path, n in self.counts.items() if path.endswith(suffix))


class CountingHandler(SimpleHTTPRequestHandler):
    counts: Counter[str]
    delay: float
    lock: threading.Lock

    def do_GET(self) -> None:
        with self.lock:
            self.counts[self.path] += 1
        if self.delay and self.path.endswith((".zip", ".nupkg", ".tgz", ".tar.gz", ".tar")):
            time.sleep(self.delay)  # so concurrent fetches overlap with the download
        super().do_GET()

    def log_message(self, format: str, *args: object) -> None:
        pass


class Recorder(BaseHTTPRequestHandler):
    """Answers each request with the next status from the server's script; records bodies."""

    def _answer(self) -> None:
        server = self.server
        length = int(self.headers.get("Content-Length") or 0)
        server.requests.append((self.command, self.path, self.rfile.read(length),  # type: ignore[attr-defined]
                                self.headers.get("Content-Type")))
        statuses = server.statuses  # type: ignore[attr-defined]
        status = statuses.pop(0) if len(statuses) > 1 else statuses[0]
        body = b"ready" if status == 200 else b"channel_not_found"
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = _answer

    def log_message(self, *args: object) -> None:
        pass


def fetch(url: str, auth: str | None = None, method: str = "GET") -> tuple[int, str]:
    """(status, body) of a GET (or an empty-bodied *method*); HTTP errors are answers too."""
    request = urllib.request.Request(url, data=b"" if method != "GET" else None, method=method)
    if auth is not None:
        request.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def running(args: list[str], env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A ``workerpool`` command in the background; Ctrl-C (SIGINT) at the end must stop it with
    exit code 0."""
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "workerpool", *args], env=env,
                                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
    try:
        yield proc
        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == 0, log.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
