"""Fixtures: one real redis-server per session, a fresh database per test, real worker processes.

The tree follows the package's: ``unit/<layer>/`` holds tests that need no Redis and no worker
(marker ``unit``: ``pytest -m unit`` runs in seconds), ``e2e/`` tests against a real Redis and
real worker processes (``e2e``), ``faults/`` the failures a deployment meets (``faults``).

Nothing here fakes Redis, Celery or subprocess. Each test gets its own Redis database (so pools,
workers and queues never leak between tests) and starts the workers it needs as subprocesses
running ``workerpool worker start``.
"""

from __future__ import annotations

import base64
import functools
import itertools
import json
import os
import secrets
import signal
import stat
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any, TypeVar, cast

import pytest
import redis
from httpd import CountingHandler, Recorder, Server

from workerpool import Client, ScriptStep
from workerpool.core import credentials, keys
from workerpool.core.pools import slugify
from workerpool.core.routing import route
from workerpool.core.sealing import Keyring, new_key
from workerpool.core.settings import Settings
from workerpool.server.embedded import EmbeddedRedis

REPO = Path(__file__).resolve().parent.parent
LAYERS = ("unit", "e2e", "faults", "security")  # a test's first folder is its marker
HEARTBEAT = 0.5
TOOL = "wp-fake-tool"  # a tool a pool requires, put on and taken off the PATH by tests
SECRET_KEY = new_key()  # every component of a test shares it, as a deployment's would
ADMIN_PASSWORD = "admin-" + secrets.token_hex(12)  # the session Redis's default user: the admin
DATABASES = 512
_db_numbers = itertools.count(1)
T = TypeVar("T")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark each test by its folder; a unit test that would start Redis is an error."""
    tests = Path(__file__).parent
    for item in items:
        kind = item.path.relative_to(tests).parts[0]
        if kind not in LAYERS:
            raise pytest.UsageError(f"{item.nodeid}: tests live in {', '.join(LAYERS)}/")
        item.add_marker(kind)
        if kind == "unit" and "redis_server" in getattr(item, "fixturenames", ()):
            raise pytest.UsageError(f"{item.nodeid} is a unit test but uses Redis; move it "
                                    "to e2e/")


def wait_for(condition: Callable[[], object], timeout: float = 20.0, what: str = "condition",
             interval: float = 0.02) -> object:
    """Poll *condition* until it returns something truthy; fail the test after *timeout*."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def monitored(redis_url: str, action: Callable[[], T]) -> tuple[T, list[str]]:
    """*action*'s result, and every command Redis ran in this test's database meanwhile (those
    inside scripts too), as MONITOR shows them."""
    watcher = redis.Redis.from_url(redis_url, decode_responses=True)
    db = watcher.connection_pool.connection_kwargs.get("db", 0)
    marker = "end-of-action-" + secrets.token_hex(8)
    seen: list[str] = []
    with watcher.monitor() as monitor:
        value = action()
        watcher.echo(marker)
        while marker not in (command := monitor.next_command())["command"]:
            if command["db"] == db:
                seen.append(command["command"])
    watcher.close()
    return value, seen


def queue_appending(client: Client, pools: Sequence[str], runs: Path, count: int,
                    lease_timeout: float, pause: float) -> list[str]:
    """Queue *count* steps round-robin over *pools* whose scripts append their step id to
    *runs* (made writable by every script user) and then sleep *pause*; their ids."""
    runs.touch(mode=0o666)
    runs.chmod(0o666)
    snapshot = client.snapshot()
    ids = []
    for n in range(count):
        step = ScriptStep(script=f'echo "$WORKERPOOL_STEP_ID" >> {runs}; sleep {pause:g}',
                          pool=pools[n % len(pools)])
        ids.append(client.store.enqueue(step, route(step, snapshot), lease_timeout, 60))
    return ids


def deployment_shown(cli: Callable[..., subprocess.CompletedProcess[str]],
                     deployment_id: str) -> dict[str, Any]:
    """`deployments show ID --json`, which must succeed."""
    done = cli("deployments", "show", deployment_id, "--json")
    assert done.returncode == 0, done.stderr
    shown: dict[str, Any] = json.loads(done.stdout)
    return shown


def deployment_ended(cli: Callable[..., subprocess.CompletedProcess[str]], deployment_id: str,
                     timeout: float = 120) -> dict[str, Any]:
    """The deployment as `deployments show` gives it once it ended (Success or Failed)."""
    return cast(dict[str, Any], wait_for(
        lambda: (r := deployment_shown(cli, deployment_id))["state"] in ("Success", "Failed")
        and r, timeout, f"deployment {deployment_id} to end"))


def gated_process(path: Path, pool: str, ran: Path, gate: Path) -> Path:
    """A process file at *path*: "Migrate" on *pool* appends ``migrate`` to *ran* and waits for
    *gate* to exist, then "After" appends ``after``."""
    path.write_text(f"""
name: Migrate
steps:
  - name: Migrate
    pool: {pool}
    script: |
      echo migrate >> {ran}
      while [ ! -e {gate} ]; do sleep 0.05; done
  - name: After
    pool: {pool}
    script: echo after >> {ran}
""")
    return path


def shared_file(path: Path) -> Path:
    """An empty file every script may append to: scripts of different workers (and slots) run
    as different users, and a file one of them creates is its own (mode 0600)."""
    path.touch()
    path.chmod(0o666)
    return path


def watchdog_groups(worker_pid: int) -> tuple[Path, list[int]]:
    """A worker's group table as its watchdog sees it: a path to the shared table (under
    /proc, writable like the table itself) and the script groups it would kill now."""
    from workerpool.worker.isolation.watchdog import read_groups
    for task in Path(f"/proc/{worker_pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            argv = Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")
            if b"workerpool.worker.isolation.watchdog" in argv:  # ... watchdog ROOT FD UIDS
                fd_arg = argv[argv.index(b"workerpool.worker.isolation.watchdog") + 2]
                table = Path(f"/proc/{child}/fd/{int(fd_arg)}")
                fd = os.open(table, os.O_RDONLY)
                try:
                    return table, read_groups(fd)
                finally:
                    os.close(fd)
    raise AssertionError(f"worker {worker_pid} has no watchdog")


def one_line_error(done: subprocess.CompletedProcess[str], code: int = 2) -> str:
    """The command failed with *code* and one line on stderr (``workerpool: error: ...``), no
    traceback; that line."""
    lines = done.stderr.strip().splitlines()
    assert done.returncode == code, done.stderr
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    assert lines[0].startswith("workerpool: error: ")
    return lines[0]


class TaskEvents:
    """Celery task events as Flower receives them: the messages workers publish for the
    database of *raw*, decoded into batches (one list per message)."""

    def __init__(self, raw: redis.Redis) -> None:
        self.prefix = f"/{raw.connection_pool.connection_kwargs.get('db', 0)}.celeryev/"
        self.pubsub = raw.pubsub(ignore_subscribe_messages=True)  # type: ignore[no-untyped-call]
        self.pubsub.psubscribe("*celeryev/task*")
        self.batches: list[list[dict[str, object]]] = []

    def collect(self) -> list[dict[str, object]]:
        """Every event received so far, in order."""
        while (message := self.pubsub.get_message(timeout=0.05)) is not None:
            if str(message["channel"]).startswith(self.prefix):
                body = json.loads(base64.b64decode(json.loads(message["data"])["body"]))
                self.batches.append(body if isinstance(body, list) else [body])
        return [event for batch in self.batches for event in batch]

    def close(self) -> None:
        self.pubsub.close()


def start_up(argv: list[str], env: dict[str, str], cwd: Path | None = None
             ) -> tuple[subprocess.Popen[str], str]:
    """``workerpool up`` (*argv*: the command and its arguments) started and ready: it printed
    its ready line, which is returned with the process and the lines before it (the console's
    one-time login among them). Ctrl-C (SIGINT) stops it."""
    up = subprocess.Popen(argv, env=env, cwd=cwd, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True)
    assert up.stderr is not None
    lines = []
    for line in up.stderr:
        lines.append(line)
        if "Ctrl-C stops everything" in line:
            return up, "".join(lines)
    raise AssertionError(f"workerpool up exited with {up.wait()} before it was ready")


# What a script can read of every process on its machine that may hold a worker's or a
# server's settings: each one's environment, command line and open files, appended to "$dump"
# (errors too, as evidence of each attempt). The attacker tests (tests/security/) run it.
PROC_DUMP = r"""
for p in /proc/[0-9]*; do
  tr '\0' '\n' < "$p/environ" >> "$dump" 2>&1
  tr '\0' ' ' < "$p/cmdline" >> "$dump" 2>&1
  for fd in "$p"/fd/*; do head -c 65536 "$fd" >> "$dump" 2>&1; done
done
"""


def pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def searchable_by_others(path: Path) -> None:
    """Let users other than root pass through every folder above *path* (o+x, not listing):
    scripts run as users of their own (worker/isolation/users.py) and must reach the worker's
    Python (in this checkout's .venv) and the files a test gives them."""
    for folder in [path, *path.parents]:
        mode = folder.stat().st_mode
        if not mode & stat.S_IXOTH:
            folder.chmod(mode | stat.S_IXOTH)


@pytest.fixture(scope="session", autouse=True)
def scripts_reach_the_checkout(tmp_path_factory: pytest.TempPathFactory) -> None:
    if os.geteuid() == 0:
        searchable_by_others(Path(sys.executable).parent)
        searchable_by_others(tmp_path_factory.getbasetemp())


@pytest.fixture(autouse=True)
def scripts_share_tmp_path(tmp_path: Path) -> None:
    """A test's folder is the scripts' too: they write the files a test reads (a script's pid,
    its side effects), as they would in a folder a deployment gives them."""
    tmp_path.chmod(0o777)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedRedis]:
    """One Redis for the session. Its default user needs a password (the admin's: tests and
    their clients use it), and workers log in as their pool's own user (``start_worker``)."""
    server = EmbeddedRedis(tmp_path_factory.mktemp("redis"),
                           extra_args=("--databases", str(DATABASES), "--appendonly", "no",
                                       "--requirepass", ADMIN_PASSWORD))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server: EmbeddedRedis) -> str:
    number = next(_db_numbers)
    assert number < DATABASES, "more tests than Redis databases; raise DATABASES"
    url = f"redis://:{ADMIN_PASSWORD}@127.0.0.1:{redis_server.port}/{number}"
    redis.Redis.from_url(url).flushdb()
    return url


@pytest.fixture
def env(redis_url: str, tmp_path: Path) -> dict[str, str]:
    """Environment for workerpool subprocesses: this test's database, fast heartbeats."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("WORKERPOOL_")}
    return {**base, "WORKERPOOL_REDIS_URL": redis_url, "WORKERPOOL_HOME": str(tmp_path / "home"),
            "WORKERPOOL_SECRET_KEY": SECRET_KEY,
            "WORKERPOOL_HEARTBEAT_INTERVAL": str(HEARTBEAT), "WORKERPOOL_KILL_GRACE": "1"}


@pytest.fixture
def settings(env: dict[str, str]) -> Settings:
    return Settings.from_env(env)


@pytest.fixture
def client(settings: Settings) -> Iterator[Client]:
    c = Client(settings=settings)
    yield c
    c.close()


@pytest.fixture
def raw(redis_url: str) -> redis.Redis:
    return redis.Redis.from_url(redis_url, decode_responses=True)


class CountingConnection(redis.Connection):
    """A real connection that counts request batches sent (one per round trip)."""

    sent = 0

    def send_packed_command(self, command, check_health=True):  # type: ignore[no-untyped-def]
        CountingConnection.sent += 1
        return super().send_packed_command(command, check_health)


@dataclass
class Worker:
    proc: subprocess.Popen[bytes]
    name: str
    pool: str
    url: str = ""  # the Redis URL it logs in with: its pool's own user's
    pool_key: str = ""  # WORKERPOOL_POOL_KEY: its pool's private key(s)

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def pool_slug(self) -> str:
        """The worker's pool key (its keys' space): the pool's slug, or ``builtin``."""
        return self.pool if self.pool == keys.BUILTIN_POOL else slugify(self.pool)


@pytest.fixture
def start_worker(env: dict[str, str], client: Client,
                 tmp_path: Path) -> Iterator[Callable[..., Worker]]:
    """Factory: start a real worker process and wait until it shows *expect* (by default
    Healthy: it consumes its queue)."""
    started: list[Worker] = []

    def start(pool: str | None = None, name: str | None = None, concurrency: int = 1,
              extra_env: dict[str, str] | None = None, expect: str = "Healthy",
              flags: tuple[str, ...] = ()) -> Worker:
        args = ["--builtin"] if pool is None else ["--pool", pool]
        args += flags  # e.g. ("--exclusive",)
        if name:
            args += ["--name", name]
        # The worker logs in as its pool's own Redis user and opens its pool's secrets with
        # its pool's key, as a deployment's workers do; it never holds the master key.
        key = keys.BUILTIN_POOL if pool is None else slugify(pool)
        url = credentials.issue(client.redis, env["WORKERPOOL_REDIS_URL"], key).url
        pool_key = Keyring([SECRET_KEY]).publish(client.redis, key).to_text()
        worker_env = {**{k: v for k, v in env.items() if k != "WORKERPOOL_SECRET_KEY"},
                      "WORKERPOOL_REDIS_URL": url, "WORKERPOOL_POOL_KEY": pool_key,
                      **(extra_env or {})}
        log = open(tmp_path / f"worker-{len(started)}.log", "wb")  # noqa: SIM115
        proc = subprocess.Popen(
            [sys.executable, "-m", "workerpool", "worker", "start", *args,
             "--concurrency", str(concurrency), "--loglevel", "INFO"],
            env=worker_env, stdout=log, stderr=subprocess.STDOUT)

        def ready() -> str | None:
            if proc.poll() is not None:
                raise AssertionError(f"worker exited with {proc.returncode}: "
                                     f"{(tmp_path / log.name).read_text()[-2000:]}")
            found = [w for w in client.workers.list() if w.pid == proc.pid]
            return found[0].name if found and found[0].state == expect else None

        worker_name = str(wait_for(ready, 60, f"worker to be {expect}"))
        worker = Worker(proc, worker_name, pool or "builtin", worker_env["WORKERPOOL_REDIS_URL"],
                        worker_env["WORKERPOOL_POOL_KEY"])
        started.append(worker)
        return worker

    yield start
    for worker in started:
        if worker.proc.poll() is None:
            worker.proc.send_signal(signal.SIGTERM)
    for worker in started:
        try:
            worker.proc.wait(15)
        except subprocess.TimeoutExpired:
            worker.proc.kill()
            worker.proc.wait()


@pytest.fixture
def cli(env: dict[str, str]) -> Callable[..., subprocess.CompletedProcess[str]]:
    """Run the real ``workerpool`` command line in a subprocess."""

    def run(*args: str, timeout: float = 60,
            extra_env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "workerpool", *args],
                              env={**env, **(extra_env or {})}, capture_output=True, text=True,
                              timeout=timeout, stdin=subprocess.DEVNULL)

    return run


@pytest.fixture
def server(env: dict[str, str], raw,
           tmp_path: Path) -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    """Factory: start `workerpool server` and wait until it orchestrates."""
    started: list[subprocess.Popen[bytes]] = []

    def start(*args: str, extra_env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        raw.delete(keys.SERVER_HEARTBEAT)
        log = open(tmp_path / f"server-{len(started)}.log", "wb")  # noqa: SIM115
        proc = subprocess.Popen([sys.executable, "-m", "workerpool", "server", *args],
                                env={**env, **(extra_env or {})}, stdout=log,
                                stderr=subprocess.STDOUT)
        started.append(proc)
        wait_for(lambda: raw.exists(keys.SERVER_HEARTBEAT), 60, "server heartbeat")
        return proc

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)


@pytest.fixture
def serve() -> Iterator[Callable[..., Server]]:
    """Factory: serve a directory over HTTP on 127.0.0.1, counting GETs per path."""
    servers: list[ThreadingHTTPServer] = []

    def start(root: Path, delay: float = 0.0) -> Server:
        counts: Counter[str] = Counter()
        handler = type("Handler", (CountingHandler,),
                       {"counts": counts, "delay": delay, "lock": threading.Lock()})
        server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(handler,
                                                                         directory=str(root)))
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return Server(f"http://127.0.0.1:{server.server_address[1]}", counts)

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.fixture
def http_server() -> Iterator[Callable[[list[int]], tuple[str, list[tuple[str, str, bytes, str]]]]]:
    """Factory: a local server answering with the given statuses (the last one repeats)."""
    servers: list[ThreadingHTTPServer] = []

    def start(statuses: list[int]) -> tuple[str, list[tuple[str, str, bytes, str]]]:
        server = ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
        server.statuses = list(statuses)  # type: ignore[attr-defined]
        server.requests = []  # type: ignore[attr-defined]
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}", server.requests  # type: ignore[attr-defined]

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.fixture
def sandbox(tmp_path: Path) -> Iterator[Path]:
    """An empty directory around the extraction target; a test asserts nothing but the target
    (and what is inside it) appears in it."""
    box = tmp_path / "sandbox"
    (box / "target").mkdir(parents=True)
    yield box


def one_line(exc: BaseException, *words: str) -> str:
    """The text of *exc*, asserted to be one line holding each of *words*."""
    text = str(exc)
    assert "\n" not in text, text
    for word in words:
        assert word in text, (word, text)
    return text


@pytest.fixture
def tools(tmp_path: Path) -> Path:
    """A directory on the worker's PATH where the test puts and removes ``wp-fake-tool``."""
    directory = tmp_path / "tools"
    directory.mkdir()
    return directory


def put_tool(tools: Path) -> None:
    tool = tools / TOOL
    tool.write_text("#!/bin/sh\nexit 0\n")
    tool.chmod(0o755)
