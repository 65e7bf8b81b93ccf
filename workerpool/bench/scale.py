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
import threading
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
from workerpool.core.leases import Leases, lock_ms, reap_every
from workerpool.core.pools import Pool
from workerpool.core.routing import Route
from workerpool.core.settings import Settings
from workerpool.core.snapshot import all_pools
from workerpool.core.steps import RUNNING
from workerpool.core.workers import HEALTHY, Heartbeat, WorkerInfo
from workerpool.core.workers import beat as beat_once

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


@dataclass(frozen=True)
class Simulated:
    """One simulated worker: its pool's slug, instance id and name."""

    pool: str
    instance: str
    name: str


def add_workers(raw: redis.Redis, pools: list[Pool], count: int) -> list[Simulated]:
    """Register *count* simulated workers round-robin over *pools*, each with a live
    heartbeat and its entry in its pool's live index."""
    added = []
    seconds, micros = raw.time()  # the live index is scored on Redis's clock
    expires = seconds * 1000 + micros // 1000 + SIMULATED_TTL_MS
    pipe = raw.pipeline(transaction=False)
    for n in range(count):
        pool = pools[n % len(pools)]
        info = WorkerInfo(name=f"{pool.slug}-sim-{uuid.uuid4().hex[:8]}", pool=pool.slug,
                          instance=uuid.uuid4().hex, host="simulated", pid=100000 + n,
                          concurrency=1, started_at=time.time(), syntaxes=("bash", "sh"))
        pipe.hset(keys.workers(pool.slug), info.name, info.record_json())
        pipe.set(keys.heartbeat(pool.slug, info.instance),
                 Heartbeat(time=time.time(), state=HEALTHY).to_json(), px=SIMULATED_TTL_MS)
        pipe.zadd(keys.live(pool.slug), {info.instance: expires})
        pipe.hset(keys.states(pool.slug), info.instance, HEALTHY)
        added.append(Simulated(pool.slug, info.instance, info.name))
        if len(pipe) >= 4000:
            pipe.execute()
    pipe.execute()
    return added


def running_id(worker: Simulated) -> str:
    """The id of the step ``add_running`` gives *worker*."""
    return keys.step_id(worker.pool, f"sim{worker.instance[:13]}")


def add_running(raw: redis.Redis, workers: list[Simulated]) -> None:
    """Give each of *workers* one running step in its pool (a lease to check)."""
    now = time.time()
    pipe = raw.pipeline(transaction=False)
    for worker in workers:
        step_id = running_id(worker)
        pipe.hset(keys.step(step_id), mapping={
            "state": RUNNING, "instance": worker.instance, "worker": worker.name,
            "pool": worker.pool, "name": "simulated", "attempt": 0, "retry": 0,
            "started_at": now})
        pipe.zadd(keys.running(worker.pool), {step_id: now})
    pipe.execute()


# The reaper's lock lets one process reap a pool per quarter heartbeat interval
# (``Leases.reap_on_schedule``), and the local stack's reaper turns twice per interval.
REAPS_PER_INTERVAL = 4
STACK_TURNS_PER_INTERVAL = 2


@dataclass(frozen=True)
class Upkeep:
    """Redis CPU seconds of what keeps a cluster's leases honest, one call of each: a worker's
    heartbeat turn (``workers.beat`` with its try for the pool's reaper lock, held by another:
    the usual answer, and its check of the step it runs); one pool reaped; one turn of the
    local stack's reaper over every pool (the pools read, their locks tried)."""

    turn: float
    reap: float
    stack: float

    def busy(self, workers: int, pools: int, interval: float) -> float:
        """Share of Redis's time (one core) that *workers* over *pools* keep it busy, each
        worker beating once per *interval* and each pool reaped as often as its lock allows."""
        per_interval = (workers * self.turn + pools * REAPS_PER_INTERVAL * self.reap
                        + STACK_TURNS_PER_INTERVAL * self.stack)
        return per_interval / interval


def upkeep(client: Client, workers: list[Simulated], pools: list[str], count: int,
           settings: Settings) -> Upkeep:
    """``Upkeep`` measured with Redis's own CPU counters over *count* calls of each, the
    workers' calls spread over *workers* (each with a running step: ``add_running``), as the
    worker's heartbeat loop (``WorkerRuntime._turn``) and the stack's reaper make them."""
    raw, leases = client.redis, Leases(client.redis, client.store)
    hold = 3600.0  # a lock taken once and held: later tries get the usual "taken" answer
    leases.reap(pools, every=hold)

    def turn(n: int) -> None:
        w = workers[n % len(workers)]
        beat_once(raw, w.pool, w.instance, Heartbeat(time=time.time(), state=HEALTHY,
                                                     running=1),
                  SIMULATED_TTL_MS / 1000, lock_ms=lock_ms(reap_every(settings)),
                  steps=[running_id(w)])

    def reap(n: int) -> None:  # as reap_on_schedule does once it holds the pool's lock
        leases.reap_on_schedule(settings, [pools[n % len(pools)]], held=True)

    def stack(n: int) -> None:
        leases.reap(all_pools(raw), every=hold)

    return Upkeep(turn=redis_cpu_per_call(raw, turn, count),
                  reap=redis_cpu_per_call(raw, reap, max(10, count // 4)),
                  stack=redis_cpu_per_call(raw, stack, max(4, count // 400), callers=1))


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


def cli_seconds(url: str, args: list[str], repeat: int, warm: bool = True) -> list[float]:
    """Wall time of the real ``workerpool`` command line, start-up included."""
    # Bytecode is written on the warm-up run, as a wheel's install compiles it: a shell that
    # sets PYTHONDONTWRITEBYTECODE would otherwise compile the command's modules every time.
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("WORKERPOOL_") and k != "PYTHONDONTWRITEBYTECODE"}
    env["WORKERPOOL_REDIS_URL"] = url

    def once() -> None:
        subprocess.run([sys.executable, "-m", "workerpool", *args], env=env, check=True,
                       stdout=subprocess.DEVNULL, stdin=subprocess.DEVNULL)

    if warm:
        once()  # warm the page cache
    return timed(once, repeat)


def cli_rounds(url: str, commands: dict[str, list[str]], repeat: int) -> dict[str, list[float]]:
    """``cli_seconds`` of several commands, taken in turn *repeat* times (so a slower moment of
    the machine falls on each of them alike): command label -> wall seconds of each run."""
    for args in commands.values():
        cli_seconds(url, args, 0)  # warm the page cache, write the bytecode
    taken: dict[str, list[float]] = {label: [] for label in commands}
    for _ in range(repeat):
        for label, args in commands.items():
            taken[label].extend(cli_seconds(url, args, 1, warm=False))
    return taken


# -- Redis's own time -----------------------------------------------------------------


def redis_cpu(raw: redis.Redis) -> float:
    """CPU seconds the Redis server has used (user + system), as INFO reports them."""
    cpu = cast(dict[str, float], raw.info("cpu"))
    return float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"])


CALLERS = 8  # callers at once when Redis's CPU per call is measured


def redis_cpu_per_call(raw: redis.Redis, action: Callable[[int], object], count: int,
                       callers: int = CALLERS) -> float:
    """Redis CPU seconds per call of *action* (called with 0 to *count* - 1, from *callers*
    threads at once; it sends its requests to the server *raw* reads): what the calls cost
    Redis, without the callers' own time or the round trips' waits a wall-clock timing would
    add. Several callers, as a cluster's workers beat at once: one caller alone makes Redis
    wake for every request, which costs it more than the request itself."""
    action(0)  # scripts loaded, connections open
    before = redis_cpu(raw)
    threads = [threading.Thread(target=lambda k=k: [action(n) for n in range(k, count,
                                                                          callers)])
               for k in range(callers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return max(0.0, redis_cpu(raw) - before) / count


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

