"""Everything the bench starts: Redis (embedded, or an empty database the user names), worker
processes and ``workerpool server`` (the deployment orchestrator). All of it is stopped on exit,
on errors and on Ctrl-C.

The workers log in as a deployment's do: each as its pool's own Redis user (Redis 7 and later)
with its pool's sealing key; the bench itself and the server hold the admin's URL and a master
key made for the run. Their scripts run as the worker's own user, as the baseline's tasks run
bash, except where figure 7 runs them as users of their own."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from types import TracebackType
from typing import cast

import redis

from workerpool.bench import baseline
from workerpool.client import Client
from workerpool.core import credentials, keys
from workerpool.core.children import die_with_parent
from workerpool.core.connection import connect, guarded, redact, validate_url
from workerpool.core.errors import Infrastructure, Refused
from workerpool.core.pools import slugify
from workerpool.core.sealing import Keyring, new_key
from workerpool.core.settings import Settings
from workerpool.core.snapshot import read_snapshot
from workerpool.server.embedded import EmbeddedRedis
from workerpool.worker.isolation.users import SAME

READY_TIMEOUT = 120.0


class BenchFailed(Infrastructure):
    """The bench could not measure something (a worker did not start, a step did not succeed)."""


def wait_until(condition: Callable[[], bool], timeout: float, what: str,
               interval: float = 0.005) -> None:
    """Poll *condition* (cheap Redis reads) until true; BenchFailed after *timeout*."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise BenchFailed(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)


def pin(pids: Iterable[int], cpus: set[int], children: bool = True) -> None:
    """Set the CPU affinity of every thread of *pids* and, recursively, of their children."""
    for pid in pids:
        with contextlib.suppress(OSError):
            for task in os.listdir(f"/proc/{pid}/task"):
                with contextlib.suppress(OSError):
                    os.sched_setaffinity(int(task), cpus)
                    if children:
                        kids = Path(f"/proc/{pid}/task/{task}/children").read_text().split()
                        pin([int(kid) for kid in kids], cpus)


class Harness:
    """Owns the bench's Redis database and child processes (workers, baseline workers and
    ``workerpool server``); use as a context manager."""

    def __init__(self, settings: Settings) -> None:
        self.master = new_key()  # the run's admin key: the bench seals to pools it derives
        self.settings = dataclasses.replace(settings, secret_key=self.master)
        self.workdir = Path(tempfile.mkdtemp(prefix="workerpool-bench-"))
        self.server: EmbeddedRedis | None = None
        self.url = ""
        self.children: list[subprocess.Popen[bytes]] = []
        self._logs: dict[int, Path] = {}  # child pid -> its output
        self._raw: redis.Redis | None = None
        self._owns_database = False  # flushed at the end only once known to hold nothing else
        self._baselines = 0  # baseline workers started so far (their names are numbered)

    def __enter__(self) -> Harness:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    @property
    def embedded(self) -> bool:
        return self.server is not None

    @property
    def raw(self) -> redis.Redis:
        if self._raw is None:
            self._raw = connect(self.url)
        return self._raw

    def compact_log(self) -> None:
        """On the embedded Redis (AOF on), rewrite the append-only file now and wait for it:
        the rewrite a burst of writes (a 10,000-step backlog) soon triggers, a fork of the
        whole dataset, then happens before a measurement instead of in it. A Redis the bench
        does not own is left alone."""
        if not self.embedded:
            return

        def idle() -> bool:
            info = cast(dict[str, object], self.raw.info("persistence"))
            return not int(cast(int, info.get("aof_rewrite_in_progress", 0))) and \
                not int(cast(int, info.get("aof_rewrite_scheduled", 0)))

        wait_until(idle, READY_TIMEOUT, "Redis to finish rewriting its append-only file",
                   interval=0.05)
        self.raw.bgrewriteaof()
        wait_until(idle, READY_TIMEOUT, "Redis to finish rewriting its append-only file",
                   interval=0.05)

    def start(self) -> None:
        if self.settings.redis_url:
            self.url = validate_url(self.settings.redis_url)
            keys_held = int(guarded(self.raw.dbsize, self.url))
            if keys_held:
                raise Refused(
                    f"the bench needs an empty Redis database (it queues 100,000 steps, writes "
                    f"1,000 simulated workers and flushes the database between figures), but "
                    f"{redact(self.url)} holds {keys_held} keys; point WORKERPOOL_REDIS_URL at an "
                    "unused database (e.g. .../15) or unset it to use an embedded Redis")
            self._owns_database = True
        else:
            self.server = EmbeddedRedis(self.workdir / "redis")
            self.server.start()
            self.url = self.server.url

    def client(self) -> Client:
        return Client(redis_url=self.url, settings=self.settings)

    def redis_version(self) -> str:
        return str(cast(dict[str, object], self.raw.info("server")).get("redis_version", "?"))

    def reset(self) -> None:
        """Empty the bench's database; only between phases, when no worker runs."""
        assert not self.children, "stop the workers before resetting the database"
        self.raw.flushdb()

    # -- processes ----------------------------------------------------------------------

    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("WORKERPOOL_")}
        scratch = self.workdir / "tmp"  # workers' step directories, removed with the rest
        scratch.mkdir(exist_ok=True)
        return {**env, "TMPDIR": str(scratch), "WORKERPOOL_REDIS_URL": self.url,
                "WORKERPOOL_HOME": str(self.workdir / "home"),
                "WORKERPOOL_HEARTBEAT_INTERVAL": str(self.settings.heartbeat_interval)}

    @property
    def pool_logins(self) -> bool:
        """Whether workers log in as their pool's own user (a Redis with ACL key patterns)."""
        return credentials.supported(self.raw)

    def worker_env(self, pool: str, url: str | None = None) -> dict[str, str]:
        """A worker of *pool*'s login and key, as `workerpool pool credentials` gives them, on
        *url* (another way to the bench's Redis, e.g. through Sentinel; default the bench's)."""
        slug, url = slugify(pool), url or self.url
        login = credentials.issue(self.raw, url, slug).url if self.pool_logins else url
        key = Keyring([self.master]).publish(self.raw, slug)
        return {"WORKERPOOL_REDIS_URL": login, "WORKERPOOL_POOL_KEY": key.to_text()}

    def _spawn(self, argv: list[str], label: str,
               env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        logs = self.workdir / "logs"
        logs.mkdir(exist_ok=True)
        path = logs / f"{slugify(label)}-{len(self.children)}.log"
        with open(path, "wb") as out:
            proc = subprocess.Popen(argv, env={**self._env(), **(env or {})},
                                    stdin=subprocess.DEVNULL, stdout=out,
                                    stderr=subprocess.STDOUT, start_new_session=True,
                                    preexec_fn=die_with_parent)
        self.children.append(proc)
        self._logs[proc.pid] = path
        return proc

    def _check_alive(self, procs: list[subprocess.Popen[bytes]]) -> None:
        for proc in procs:
            if proc.poll() is not None:
                path = self._logs.get(proc.pid)
                tail = path.read_text(errors="replace")[-1500:] if path else ""
                what = path.stem if path else str(proc.pid)
                raise BenchFailed(f"a bench process ({what}) exited with code "
                                  f"{proc.returncode}:\n{tail}")

    def start_workers(self, pool: str, count: int, concurrency: int,
                      script_user: str | None = SAME, url: str | None = None,
                      env: dict[str, str] | None = None) -> list[int]:
        """Start *count* real workerpool workers on *pool*, with its own login and key; return
        once all are Healthy. Their scripts run as the worker's own user, as the baseline's
        tasks run bash, unless *script_user* says otherwise (None: the default, users of their
        own for a root worker; figure 7 prices the difference). They reach Redis by *url*
        (default the bench's), with *env* added to their environment."""
        env = {**(env or {}), **self.worker_env(pool, url)}
        user = () if script_user is None else ("--script-user", script_user)
        procs = [self._spawn([sys.executable, "-m", "workerpool", "worker", "start",
                              "--pool", pool, "--concurrency", str(concurrency), *user],
                             pool, env) for _ in range(count)]
        pids = {p.pid for p in procs}

        def ready() -> bool:
            self._check_alive(procs)
            healthy = {w.pid for w in read_snapshot(self.raw).workers if w.state == "Healthy"}
            return pids <= healthy

        wait_until(ready, READY_TIMEOUT, f"{count} worker(s) of {pool}", interval=0.05)
        return sorted(pids)

    def start_baseline(self, count: int, concurrency: int, queue: str = baseline.QUEUE,
                       tuned: bool = False) -> list[int]:
        """Start *count* plain Celery workers for the baseline on *queue* (*tuned*: with
        workerpool's transport and event batching); return once all consume."""
        first = self._baselines
        self._baselines += count
        labels = [f"baseline-{n + 1:02d}" for n in range(first, first + count)]
        procs = [self._spawn([sys.executable, "-m", "workerpool.bench.baseline", self.url,
                              str(concurrency), label, queue, *(["tuned"] if tuned else [])],
                             "baseline") for label in labels]
        names = [baseline.ready_key(label) for label in labels]

        def ready() -> bool:
            self._check_alive(procs)
            return int(self.raw.exists(*names)) == count

        wait_until(ready, READY_TIMEOUT, f"{count} baseline Celery worker(s)", interval=0.05)
        return [p.pid for p in procs]

    def start_peer(self, argvs: list[list[str]], label: str, ready: Callable[[], bool],
                   what: str) -> list[int]:
        """Start another system's worker processes (figure 9: RQ, Dramatiq), one for each of
        *argvs*, logged and ending with the bench like every child; return their pids once
        *ready* (a cheap Redis read) holds."""
        procs = [self._spawn(argv, label) for argv in argvs]

        def started() -> bool:
            self._check_alive(procs)
            return ready()

        wait_until(started, READY_TIMEOUT, what, interval=0.05)
        return [p.pid for p in procs]

    def start_server(self) -> int:
        """Start ``workerpool server`` (the orchestrator, with its built-in worker and reaper);
        return once its heartbeat says it orchestrates."""
        self.raw.delete(keys.SERVER_HEARTBEAT)
        proc = self._spawn([sys.executable, "-m", "workerpool", "server"], "server",
                           {"WORKERPOOL_SECRET_KEY": self.master})

        def ready() -> bool:
            self._check_alive([proc])
            return bool(self.raw.exists(keys.SERVER_HEARTBEAT))

        wait_until(ready, READY_TIMEOUT, "`workerpool server` (its heartbeat)", interval=0.05)
        return proc.pid

    def stop_workers(self, grace: float = 15.0) -> None:
        """Warm-stop every child (SIGTERM; the server stops its built-in worker), then SIGKILL
        what is left."""
        for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
            for proc in self.children:
                if proc.poll() is None:
                    with contextlib.suppress(ProcessLookupError):
                        proc.send_signal(sig)
            deadline = time.monotonic() + wait
            for proc in self.children:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(max(0.0, deadline - time.monotonic()))
            if all(p.poll() is not None for p in self.children):
                break
        self.children.clear()
        self._logs.clear()

    @contextlib.contextmanager
    def split_cpus(self, apart: list[int], together: list[int]) -> Iterator[None]:
        """Pin *apart* (and their children) to the first CPU and *together*, Redis and this
        process to the others, as if *apart* ran on a machine of its own; undo on exit."""
        cpus = sorted(os.sched_getaffinity(0))
        assert self.server is not None and self.server.process is not None and len(cpus) > 1
        rest = [*together, self.server.process.pid]
        try:
            pin(apart, {cpus[0]})
            pin(rest, set(cpus[1:]))
            pin([os.getpid()], set(cpus[1:]), children=False)  # its children are the workers
            yield
        finally:
            pin([*apart, *rest], set(cpus))
            pin([os.getpid()], set(cpus), children=False)

    @property
    def can_split_cpus(self) -> bool:
        """Only with our own Redis (to pin it) and at least two CPUs."""
        return self.embedded and len(os.sched_getaffinity(0)) > 1

    def close(self) -> None:
        self.stop_workers()
        if self._raw is not None:
            if self._owns_database:
                with contextlib.suppress(redis.RedisError):
                    self._raw.flushdb()
            self._raw.close()
            self._raw = None
        if self.server is not None:
            self.server.stop()
            self.server = None
        shutil.rmtree(self.workdir, ignore_errors=True)
