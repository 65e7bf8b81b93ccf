"""Supervising a local stack: the embedded Redis, the built-in worker and pool workers.

Used by ``workerpool up``, ``server`` and ``demo``. Children run in their own sessions (so a
terminal's Ctrl-C reaches only the supervisor, which then stops them in order) and get SIGTERM
from the kernel if the supervisor itself dies.
"""

from __future__ import annotations

import contextlib
import functools
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TypeVar

import redis

from workerpool.core import credentials, keys
from workerpool.core.children import die_with_parent
from workerpool.core.connection import connect, guarded, validate_url
from workerpool.core.errors import BadInput, Infrastructure, PoolConflict
from workerpool.core.leases import Leases
from workerpool.core.pools import PoolRegistry, slugify
from workerpool.core.sealing import Keyring, ensure_keys, ensure_local_key
from workerpool.core.settings import Settings
from workerpool.core.snapshot import all_pools, read_snapshot
from workerpool.core.store import StepStore
from workerpool.core.workers import HEALTHY
from workerpool.server.embedded import EmbeddedRedis, clear_state, publish_state
from workerpool.server.orchestrator import Orchestrator

T = TypeVar("T")
# What the server holds and its workers are never given: the admin's master key, and where the
# console's accounts are.
SERVER_ONLY = ("WORKERPOOL_SECRET_KEY", "WORKERPOOL_WEB_USERS")


def parse_pool_counts(spec: str) -> dict[str, int]:
    """``"Database Worker Pool=2,Kubernetes Worker Pool=1"`` -> {name: workers}."""
    counts: dict[str, int] = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        name, sep, number = part.rpartition("=")
        if not sep:
            name, number = part, "1"
        number = number.strip()
        if not name.strip() or not (number.isascii() and number.isdigit()) or int(number) < 1:
            raise BadInput(f"--pools entry {part!r} must be NAME or NAME=COUNT with COUNT >= 1")
        counts[name.strip()] = int(number)
    return counts


@dataclass
class Stack:
    """Starts what is missing, waits until every worker consumes, and stops it all in order."""

    settings: Settings
    pools: dict[str, int] = field(default_factory=dict)
    builtin: bool = True
    loglevel: str = "WARNING"
    descriptions: dict[str, str] = field(default_factory=dict)
    log_dir: Path | None = None  # worker output goes here instead of the terminal
    orchestrate: bool = False  # run deployments (workerpool server / up)
    deployment_cap: int = 5
    redis_server: EmbeddedRedis | None = None
    children: list[subprocess.Popen[bytes]] = field(default_factory=list)
    url: str = ""
    _warned: bool = False  # that workers share the stack's own URL
    orchestrator: threading.Thread | None = None  # its thread, while it orchestrates
    _orchestrator_stop: threading.Event = field(default_factory=threading.Event)

    def __enter__(self) -> Stack:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def connect(self) -> redis.Redis:
        """A new Redis client for the stack's Redis."""
        return connect(self.url, self.settings)

    def guard(self, action: Callable[[], T]) -> T:
        return guarded(action, self.url)

    def start(self, ready_timeout: float = 90.0) -> None:
        Keyring.load(self.settings).check()
        if self.settings.redis_url:
            self.url = validate_url(self.settings.redis_url)
        else:
            ensure_local_key(self.settings)  # every component of this home shares it
            self.redis_server = EmbeddedRedis(self.settings.home / "redis",
                                              password=secrets.token_urlsafe(24))
            self.redis_server.start()
            self.url = self.redis_server.url
            publish_state(self.settings, self.redis_server)
        client = self.connect()
        pools = PoolRegistry(client)
        for name in self.pools:
            with contextlib.suppress(PoolConflict):  # already there
                self.guard(functools.partial(pools.add, name, self.descriptions.get(name, "")))
        if self.builtin:
            self.spawn(["--builtin"], keys.BUILTIN_POOL)
        for name, count in self.pools.items():
            for _ in range(count):
                self.spawn(["--pool", name], slugify(name))
        self.wait_ready(client, ready_timeout)
        client.close()

    def worker_url(self, pool: str) -> str:
        """The URL a worker of *pool* logs in with: its pool's own Redis user (made now), or the
        stack's own URL where Redis cannot hold users (before Redis 7), said once."""
        client = self.connect()
        try:
            if credentials.supported(client):
                return self.guard(lambda: credentials.issue(client, self.url, pool).url)
        except credentials.CredentialsRefused as exc:
            reason = str(exc)
        else:
            reason = "this Redis is older than 7"
        finally:
            client.close()
        if not self._warned:
            self._warned = True
            print(f"workerpool: warning: workers log in with the stack's own URL, not their "
                  f"pool's user ({reason}); see docs/security.md", file=sys.stderr)
        return self.url

    def pool_key(self, pool: str) -> dict[str, str]:
        """``WORKERPOOL_POOL_KEY`` for a worker of *pool* (its pool's key, published now), when
        the stack holds the admin's master key; a worker is never given the master key."""
        keyring = Keyring.load(self.settings)
        if not keyring.has_master:
            return {}
        client = self.connect()
        try:
            key = self.guard(lambda: keyring.publish(client, pool))
        finally:
            client.close()
        return {"WORKERPOOL_POOL_KEY": key.to_text()}

    def spawn(self, args: list[str], pool: str) -> subprocess.Popen[bytes]:
        base = {k: v for k, v in os.environ.items() if k not in SERVER_ONLY}
        env = {**base, "WORKERPOOL_REDIS_URL": self.worker_url(pool), **self.pool_key(pool),
               "WORKERPOOL_HOME": str(self.settings.home),
               "WORKERPOOL_HEARTBEAT_INTERVAL": str(self.settings.heartbeat_interval),
               "WORKERPOOL_SHUTDOWN_GRACE": str(self.settings.shutdown_grace)}
        output = None
        if self.log_dir is not None:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            output = open(self.log_dir / f"worker-{len(self.children)}.log", "ab")  # noqa: SIM115
        proc = subprocess.Popen(
            [sys.executable, "-m", "workerpool", "worker", "start", *args,
             "--loglevel", self.loglevel],
            env=env, stdin=subprocess.DEVNULL, stdout=output, stderr=output,
            start_new_session=True, preexec_fn=die_with_parent)
        if output is not None:
            output.close()  # the child holds its own copy
        self.children.append(proc)
        return proc

    def wait_ready(self, client: redis.Redis, timeout: float) -> None:
        """Block until every child worker is registered and consuming."""
        deadline = time.monotonic() + timeout
        pids = {p.pid for p in self.children}
        while True:
            snapshot = self.guard(lambda: read_snapshot(client))
            ready = {w.pid for w in snapshot.workers if w.state == HEALTHY}
            if pids <= ready:
                return
            dead = [p for p in self.children if p.poll() is not None]
            if dead:
                where = self.log_dir or "its output above"
                raise Infrastructure(f"a worker exited during start-up with code "
                                     f"{dead[0].returncode}; see {where}")
            if time.monotonic() > deadline:
                raise Infrastructure(f"{len(pids - ready)} worker(s) did not become ready "
                                     f"within {timeout:.0f}s")
            time.sleep(0.05)

    def supervise(self, stop_requested: threading.Event) -> None:
        """Reap lost and overdue steps (and orchestrate deployments) until *stop_requested* is
        set by a signal handler. The server's heartbeat is the orchestrator's own (it beats
        after each turn of its loop), never written here: if the orchestrator stops, the
        heartbeat lapses and `deploy` refuses, said here in one line."""
        client = self.connect()
        leases = Leases(client, StepStore(client, self.settings.result_ttl))
        keyring = Keyring.load(self.settings)
        if self.orchestrate:
            self.start_orchestrator()
        failing = False  # said once per outage, not at every turn
        while not stop_requested.is_set():
            try:
                pools = self.guard(lambda: all_pools(client))
                self.guard(functools.partial(leases.reap_on_schedule, self.settings, pools))
                if keyring.has_master:  # a pool added since gets its key (clients seal to it)
                    self.guard(functools.partial(ensure_keys, keyring, client, pools))
            except Infrastructure as exc:
                if not failing:
                    print(f"workerpool: {exc} (will retry)", file=sys.stderr)
                failing = True
            else:
                if failing:
                    print("workerpool: Redis answers again", file=sys.stderr)
                failing = False
            if self.orchestrator is not None and not self.orchestrator.is_alive():
                print("workerpool: the deployment orchestrator stopped; `deploy` refuses "
                      "until the server is restarted", file=sys.stderr)
                self.orchestrator = None  # said once
            for proc in self.children:
                if proc.poll() is not None and proc.returncode not in (0, None):
                    print(f"workerpool: worker pid {proc.pid} exited with {proc.returncode}",
                          file=sys.stderr)
                    proc.returncode = 0  # report once
            stop_requested.wait(self.settings.heartbeat_interval / 2)
        self.stop_orchestrator()

    def start_orchestrator(self, ready_timeout: float = 10.0) -> threading.Event:
        """Run the deployment orchestrator in threads of this process until the event returned
        is set (``stop_orchestrator``); it writes the server's heartbeat while it runs. Returns
        once it beat for the first time (`deploy` is accepted then), or after *ready_timeout*
        seconds (it beats when it can)."""
        self._orchestrator_stop = stop = threading.Event()
        client = self.connect()
        store = StepStore(client, self.settings.result_ttl, Keyring.load(self.settings))
        orchestrator = Orchestrator(store, self.settings, self.deployment_cap)
        self.orchestrator = threading.Thread(target=orchestrator.serve, args=(stop,),
                                             name="orchestrator", daemon=True)
        self.orchestrator.start()
        deadline = time.monotonic() + ready_timeout
        while self.orchestrator.is_alive() and time.monotonic() < deadline:
            if orchestrator.ready.wait(0.05):
                break
        return stop

    def stop_orchestrator(self) -> None:
        """Stop the orchestrator's loop: it takes no new deployment and stops beating, so the
        server's heartbeat lapses within ``SERVER_TTL_FLOOR`` seconds, and gives the lease up
        (a standby takes over at its next try); waits for the loop, a second at most past its
        turn. Deployments running carry on in their threads (in a process that exits, they
        stay active for the next server to resume)."""
        self._orchestrator_stop.set()
        if self.orchestrator is not None:
            self.orchestrator.join(self.settings.server_lease / 3 + 1)

    def stop(self) -> None:
        """Warm-stop workers (each gives running steps the shutdown grace, then stops them),
        SIGKILL any that hang (their watchdogs kill the scripts); then stop Redis."""
        self._signal_all(signal.SIGTERM)
        patience = self.settings.shutdown_grace + self.settings.kill_grace + 15
        if not self._wait_all(patience):
            self._signal_all(signal.SIGKILL)
            self._wait_all(5.0)
        self.children.clear()
        if self.redis_server is not None:
            self.redis_server.stop()
            clear_state(self.settings)
            self.redis_server = None

    def _signal_all(self, sig: signal.Signals) -> None:
        for proc in self.children:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(sig)

    def _wait_all(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        for proc in self.children:
            try:
                proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                return False
        return True
