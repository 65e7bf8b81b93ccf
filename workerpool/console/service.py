"""Serving the console from a thread of ``workerpool server`` (or ``up``): its own event loop,
its sockets bound before the thread starts (a port in use is said at once, in one line)."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import redis
from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets

from workerpool.client import Client
from workerpool.console.accounts import Accounts, LoginLimiter
from workerpool.console.app import Console, application
from workerpool.core.errors import BadInput
from workerpool.core.settings import Settings

COOKIE_SECRET = "workerpool:console:cookie-secret"  # shared by every server node


def cookie_secret(client: redis.Redis) -> str:
    """The key that signs session cookies: made once, kept in Redis where only an admin's
    login reaches it (a worker's or a runner's ACL user names no such key)."""
    client.set(COOKIE_SECRET, secrets.token_urlsafe(32), nx=True)
    return str(client.get(COOKIE_SECRET))


def accounts_from(settings: Settings) -> Accounts | None:
    """The users of ``WORKERPOOL_WEB_USERS``, or None when it is not set."""
    path = settings.web_users
    return None if path is None else Accounts.from_file(Path(path))


@dataclass
class ConsoleServer:
    port: int
    host: str
    console: Console
    _loop: asyncio.AbstractEventLoop | None = None
    _stopped: asyncio.Event | None = None
    _thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/"

    def stop(self) -> None:
        if self._loop is not None and self._stopped is not None:
            self._loop.call_soon_threadsafe(self._stopped.set)
        if self._thread is not None:
            self._thread.join(10)
        self.console.client.close()


def start(settings: Settings, redis_url: str, port: int, host: str, accounts: Accounts,
          flower_port: int | None = None) -> ConsoleServer:
    """Serve the console on *host*:*port* (0: any free port) from a daemon thread."""
    client = Client(redis_url, settings)
    try:
        sockets = bind_sockets(port, host)
    except OSError as exc:
        client.close()
        raise BadInput(f"cannot serve the console on {host}:{port} ({exc.strerror or exc}); "
                       "choose another --http-port or --http-host") from None
    flower = f"http://{host}:{flower_port}/" if flower_port else None
    console = Console(client, accounts, LoginLimiter(client.redis), flower)
    secret = client.guard(lambda: cookie_secret(client.redis))
    server = ConsoleServer(int(sockets[0].getsockname()[1]), host, console)
    started = threading.Event()

    async def serve() -> None:
        http = HTTPServer(application(console, secret), xheaders=False)
        http.add_sockets(sockets)
        server._loop, server._stopped = asyncio.get_running_loop(), asyncio.Event()
        started.set()
        await server._stopped.wait()
        http.stop()
        await http.close_all_connections()

    server._thread = threading.Thread(target=asyncio.run, args=(serve(),), name="console",
                                      daemon=True)
    server._thread.start()
    started.wait(10)
    return server


@contextlib.contextmanager
def serving(settings: Settings, redis_url: str, port: int | None, host: str,
            accounts: Accounts, flower_port: int | None = None
            ) -> Iterator[ConsoleServer | None]:
    """The console for the duration of a ``with`` block; nothing when *port* is None."""
    if port is None:
        yield None
        return
    server = start(settings, redis_url, port, host, accounts, flower_port)
    try:
        yield server
    finally:
        server.stop()
