"""Measurements without running workers: scale (figure 5) and the machine's reference points.

Scale simulates a large cluster in the documented key layout (``workerpool.core.keys``): pools
through the real registry, workers as registry records plus live heartbeats, queued steps
through the real ``StepStore.enqueue``, running leases as step records in the ``running`` set.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast
from urllib.parse import urlparse

import redis

from workerpool.bench.figures import TRUE_STEP, on_pool
from workerpool.client import Client
from workerpool.core import keys, messages
from workerpool.core.pools import Pool
from workerpool.core.routing import Route
from workerpool.core.snapshot import read_snapshot
from workerpool.core.steps import RUNNING
from workerpool.core.workers import HEALTHY, Heartbeat, WorkerInfo

SIMULATED_TTL_MS = 3_600_000  # simulated heartbeats stay live for the whole measurement


def timed(action: Callable[[], object], repeat: int) -> list[float]:
    """Wall seconds of each of *repeat* calls of *action*."""
    samples = []
    for _ in range(repeat):
        began = time.perf_counter()
        action()
        samples.append(time.perf_counter() - began)
    return samples


def add_pools(client: Client, count: int) -> list[Pool]:
    return [client.pools.add(f"Bench Pool {n:03d}", "simulated for the scale figure")
            for n in range(1, count + 1)]


def add_workers(raw: redis.Redis, pools: list[Pool], count: int) -> list[str]:
    """Register *count* simulated workers round-robin over *pools*, each with a live
    heartbeat; returns their instance ids."""
    instances = []
    seconds, micros = raw.time()  # the live index is scored on Redis's clock
    expires = seconds * 1000 + micros // 1000 + SIMULATED_TTL_MS
    pipe = raw.pipeline(transaction=False)
    for n in range(count):
        pool = pools[n % len(pools)]
        info = WorkerInfo(name=f"{pool.slug}-sim-{n:04d}", pool=pool.slug,
                          instance=uuid.uuid4().hex, host="simulated", pid=100000 + n,
                          concurrency=1, started_at=time.time(), syntaxes=("bash", "sh"))
        pipe.hset(keys.workers(pool.slug), info.name, info.record_json())
        pipe.set(keys.heartbeat(pool.slug, info.instance),
                 Heartbeat(time=time.time(), state=HEALTHY).to_json(), px=SIMULATED_TTL_MS)
        pipe.zadd(keys.live(pool.slug), {info.instance: expires})
        pipe.hset(keys.states(pool.slug), info.instance, HEALTHY)
        instances.append(info.instance)
    pipe.execute()
    return instances


def add_running(raw: redis.Redis, pools: list[Pool], instances: list[str],
                count: int) -> None:
    """Give the first *count* simulated workers (``add_workers``: round-robin over *pools*) one
    running step each, in their pool (a lease to check)."""
    now = time.time()
    pipe = raw.pipeline(transaction=False)
    for n, instance in enumerate(instances[:count]):
        pool = pools[n % len(pools)].slug
        step_id = keys.step_id(pool, f"sim{n:013d}")
        pipe.hset(keys.step(step_id), mapping={
            "state": RUNNING, "instance": instance, "worker": f"{pool}-sim-{n:04d}",
            "pool": pool, "name": "simulated", "attempt": 0, "retry": 0, "started_at": now})
        pipe.zadd(keys.running(pool), {step_id: now})
    pipe.execute()


def used_memory(raw: redis.Redis) -> int:
    return int(cast(dict[str, int], raw.info("memory"))["used_memory"])


def memory_per_step(client: Client, route: Route, count: int) -> float:
    """Redis bytes per queued step: ``used_memory`` delta over *count* real enqueues, sent
    ``StepStore.enqueue_many``'s batch to a round trip (a million take seconds, not minutes)."""
    step = on_pool(TRUE_STEP, route.pool_name)
    before = used_memory(client.redis)
    client.store.enqueue_many(step, route, count, client.settings.lease_timeout,
                              client.settings.step_timeout)
    return (used_memory(client.redis) - before) / count


def message_bytes(route: Route) -> int:
    """Size of one step's Celery message on the queue."""
    step_id = "0123456789abcdef"
    return len(messages.build(step_id, 0, route.queue,
                              messages.label(TRUE_STEP.name, route.pool_name, step_id)))


def cli_seconds(url: str, args: list[str], repeat: int) -> list[float]:
    """Wall time of the real ``workerpool`` command line, start-up included."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WORKERPOOL_")}
    env["WORKERPOOL_REDIS_URL"] = url

    def once() -> None:
        subprocess.run([sys.executable, "-m", "workerpool", *args], env=env, check=True,
                       stdout=subprocess.DEVNULL, stdin=subprocess.DEVNULL)

    once()  # warm the page cache
    return timed(once, repeat)


def snapshot_seconds(raw: redis.Redis, detail: bool, repeat: int) -> list[float]:
    return timed(lambda: read_snapshot(raw, detail), repeat)


# -- reference points -------------------------------------------------------------------


def spawn_seconds(count: int) -> list[float]:
    return timed(lambda: subprocess.run(["bash", "-c", "true"], check=True), count)


def round_trip_seconds(raw: redis.Redis, count: int) -> list[float]:
    return timed(raw.ping, count)


@dataclass(frozen=True)
class RedisBenchmark:
    lpush: float | None  # requests per second
    rpop: float | None
    note: str = ""


def redis_benchmark(url: str, requests: int) -> RedisBenchmark:
    """``redis-benchmark -t lpush,rpop`` on the bench's server, or why it was skipped."""
    binary = shutil.which("redis-benchmark")
    if binary is None:
        return RedisBenchmark(None, None, "skipped: redis-benchmark is not installed "
                              "(Debian/Ubuntu: apt-get install redis-tools)")
    parsed = urlparse(url)
    if parsed.scheme != "redis":
        return RedisBenchmark(None, None, f"skipped: redis-benchmark here needs redis://, "
                              f"not {parsed.scheme}://")
    argv = [binary, "-h", parsed.hostname or "127.0.0.1", "-p", str(parsed.port or 6379),
            "--dbnum", (parsed.path.strip("/") or "0"), "-n", str(requests),
            "-t", "lpush,rpop", "--csv"]
    env = {**os.environ, "REDISCLI_AUTH": parsed.password} if parsed.password else None
    done = subprocess.run(argv, capture_output=True, text=True, timeout=300, env=env,
                          stdin=subprocess.DEVNULL, check=False)
    rates = {m[0].upper(): float(m[1]) for m in
             re.findall(r'^"(\w+)","([\d.]+)"', done.stdout, re.MULTILINE)}
    if done.returncode != 0 or not rates:
        return RedisBenchmark(None, None, f"skipped: redis-benchmark failed: "
                              f"{(done.stderr or done.stdout).strip()[:200]}")
    return RedisBenchmark(rates.get("LPUSH"), rates.get("RPOP"))

