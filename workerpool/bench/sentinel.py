"""Figure 10: a step's enqueue -> start through Redis Sentinel against a direct ``redis://`` URL
to the same master.

One sentinel (``redis-server --sentinel``, the binary the embedded Redis runs) monitors the
bench's own redis-server. No replica: the figure prices finding the master through a sentinel,
which a client does at each new connection, not a failover (tests/faults covers that). Two pools
of one worker each: one whose worker and client reach Redis by the ``sentinel://`` URL, one
whose reach it by the direct URL; each goes first in turn from run to run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import ipaddress
import subprocess
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlparse

import redis
import redis.sentinel

from workerpool.bench import figures
from workerpool.bench.figures import Latency, median, percentile
from workerpool.bench.harness import BenchFailed, Harness, wait_until
from workerpool.bench.report import Goal, Report, Row
from workerpool.client import Client
from workerpool.core import children
from workerpool.core.children import die_with_parent
from workerpool.core.connection import connect
from workerpool.core.sentinel import SentinelURL, sentinel_url
from workerpool.core.settings import Settings
from workerpool.server.embedded import free_port, redis_server_binary

if TYPE_CHECKING:
    from workerpool.bench.runner import Plan

FIGURE = 10
POOL_SENTINEL, POOL_DIRECT = "Bench Sentinel", "Bench Direct"
MASTER = "wpbench"  # not Sentinel's usual name: the URL alone does not find the master
READY_TIMEOUT = 30.0
MS = 1000.0


class Sentinel:
    """One ``redis-server --sentinel`` monitoring the master of *master_url* (``redis://``), its
    configuration and log under *directory*; use as a context manager (stopped on exit).
    ``settings`` are *settings* naming its master, for clients of ``url``."""

    def __init__(self, master_url: str, directory: Path, settings: Settings) -> None:
        self.master = urlparse(master_url)
        self.directory = directory
        self.settings = dataclasses.replace(settings, redis_sentinel_master=MASTER)
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The ``sentinel://`` URL of the same master: its login and database, this sentinel."""
        user, password, path = self.master.username, self.master.password, self.master.path
        return sentinel_url(SentinelURL(
            (("127.0.0.1", self.port),), None if user is None else unquote(user),
            None if password is None else unquote(password),
            int(path.strip("/")) if path.strip("/").isdigit() else 0))

    @property
    def env(self) -> dict[str, str]:
        """What a worker's environment needs, beside the URL, to find the master."""
        return {"WORKERPOOL_REDIS_SENTINEL_MASTER": MASTER}

    def __enter__(self) -> Sentinel:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def _config(self) -> str:
        host, port = self.master.hostname or "127.0.0.1", self.master.port or 6379
        lines = [f"port {self.port}", "bind 127.0.0.1", f"dir {self.directory}",
                 f"logfile {self.directory / 'sentinel.log'}"]
        if not _is_address(host):
            lines.append("sentinel resolve-hostnames yes")
        lines.append(f"sentinel monitor {MASTER} {host} {port} 1")
        if self.master.username:
            lines.append(f"sentinel auth-user {MASTER} {_quoted(unquote(self.master.username))}")
        if self.master.password is not None:
            lines.append(f"sentinel auth-pass {MASTER} {_quoted(unquote(self.master.password))}")
        return "\n".join(lines) + "\n"

    def start(self) -> None:
        """Start the sentinel; return once a client of its master, found through it, answers."""
        self.directory.mkdir(parents=True, exist_ok=True)
        conf = self.directory / "sentinel.conf"  # Sentinel rewrites it: a file of its own
        conf.write_text(self._config())
        self.process = subprocess.Popen([redis_server_binary(), str(conf), "--sentinel"],
                                        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.STDOUT, start_new_session=True,
                                        preexec_fn=die_with_parent)
        wait_until(self._answers, READY_TIMEOUT, f"the sentinel on port {self.port} to name "
                   "the bench's Redis as its master", interval=0.02)

    def _answers(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            log = self.directory / "sentinel.log"
            tail = log.read_text(errors="replace")[-1500:] if log.exists() else ""
            raise BenchFailed(f"the sentinel exited with code {self.process.returncode}:\n{tail}")
        client = connect(self.url, self.settings)
        try:
            return bool(client.ping())
        except (redis.sentinel.MasterNotFoundError, redis.ConnectionError, OSError):
            return False
        finally:
            client.close()

    def stop(self, timeout: float = 10.0) -> None:
        children.stop(self.process, timeout)


def _is_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _quoted(value: str) -> str:
    """*value* as one argument of a Redis configuration line."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def phase(harness: Harness, plan: Plan, report: Report,
          progress: Callable[[str], None]) -> None:
    """Start the sentinel and one worker on each pool, time ``plan.latency_steps`` steps one at
    a time on each in turn for ``plan.runs`` runs, and add figure 10's rows."""
    if urlparse(harness.url).scheme != "redis":
        report.add(Row(FIGURE, "enqueue -> start p50, through Sentinel vs direct", "", None,
                       note="not measured: Sentinel monitors a redis://host:port master"))
        return
    runs: list[tuple[Latency, Latency]] = []
    with contextlib.ExitStack() as stack:
        sentinel = stack.enter_context(Sentinel(harness.url, harness.workdir / "sentinel",
                                                harness.settings))
        stack.callback(harness.stop_workers)  # before the sentinel they reach Redis through
        direct = harness.client()
        stack.callback(direct.close)
        found = Client(redis_url=sentinel.url, settings=sentinel.settings)
        stack.callback(found.close)
        for name in (POOL_SENTINEL, POOL_DIRECT):
            direct.pools.add(name, "bench")
        progress(f"starting workers: 1 x {POOL_SENTINEL} (through a sentinel on port "
                 f"{sentinel.port}), 1 x {POOL_DIRECT} (concurrency {plan.concurrency})")
        harness.start_workers(POOL_SENTINEL, 1, plan.concurrency, url=sentinel.url,
                              env=sentinel.env)
        harness.start_workers(POOL_DIRECT, 1, plan.concurrency)
        for n in range(plan.runs):
            progress(f"10/11 Sentinel, run {n + 1}/{plan.runs}: {plan.latency_steps} steps one "
                     f"at a time on {POOL_SENTINEL} (client and worker through Sentinel), "
                     f"as many on {POOL_DIRECT} (direct redis://)")
            runs.append(measure_run(found, direct, plan, n))
    rows(report, runs)


def measure_run(found: Client, direct: Client, plan: Plan, n: int) -> tuple[Latency, Latency]:
    """One run: both sides, the Sentinel side first in even runs; (through Sentinel, direct)."""
    sides: list[Callable[[], Latency]] = [
        lambda: figures.workerpool_latency(found, POOL_SENTINEL, plan.latency_steps),
        lambda: figures.workerpool_latency(direct, POOL_DIRECT, plan.latency_steps)]
    order = [0, 1] if n % 2 == 0 else [1, 0]
    done = {side: sides[side]() for side in order}
    return done[0], done[1]


def compared(metric: str, unit: str, ours: list[float], theirs: list[float],
             goal: Goal | None = None) -> Row:
    """As ``runner.compared``: medians over runs, and the median of the per-run ratios."""
    ratios = [a / b for a, b in zip(ours, theirs, strict=True) if b]
    return Row(FIGURE, metric, unit, median(ours), median(theirs),
               median(ratios) if ratios else None, goal)


def rows(report: Report, runs: list[tuple[Latency, Latency]]) -> None:
    def each(side: int, attr: str, q: float) -> list[float]:
        return [percentile(getattr(run[side], attr), q) * MS for run in runs]

    report.add(compared("enqueue -> start p50, through Sentinel vs direct redis://", "ms",
                        each(0, "to_start", 50), each(1, "to_start", 50), Goal("<=", 1.1)))
    report.add(compared("enqueue -> start p99, through Sentinel vs direct", "ms",
                        each(0, "to_start", 99), each(1, "to_start", 99)))
    report.add(compared("enqueue -> result p50, through Sentinel vs direct", "ms",
                        each(0, "to_result", 50), each(1, "to_result", 50)))
