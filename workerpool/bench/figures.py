"""Measurements that need running workers: latency, throughput, isolation, fan-out.

Each function drives real steps, real deployments (or real baseline Celery tasks) and returns
raw samples; the runner turns them into medians and ratios. Timestamps are wall-clock seconds on
this machine, taken by the bench (enqueue, submit, result), by the script itself (start), and by
the workers and the orchestrator in the records they write (claim, end).
"""

from __future__ import annotations

import dataclasses
import gc
import hashlib
import itertools
import json
import os
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import redis
from celery import Celery

from workerpool.bench import baseline
from workerpool.bench.harness import BenchFailed, wait_until
from workerpool.client import Client
from workerpool.core import keys, scripts
from workerpool.core.pools import slugify
from workerpool.core.routing import Route
from workerpool.core.sealing import Keyring, derive, new_key
from workerpool.core.steps import FAILED, SUCCESS, ScriptStep
from workerpool.core.targets import TargetRegistry
from workerpool.spec.processes import Process, load_process

WAIT = 120.0
FANOUT_ENVIRONMENT, FANOUT_ROLE = "Bench", "bench-fan-out"
STAMP_STEP = ScriptStep(script=baseline.STAMP_SCRIPT, name="bench latency")
TRUE_STEP = ScriptStep(script="true", name="bench true")


@dataclass(frozen=True)
class Latency:
    """Per step: enqueue -> script start, and enqueue -> result in the caller's hands (s);
    for workerpool also where the time went (``PHASES``, from the step record)."""

    to_start: list[float]
    to_result: list[float]
    phases: list[tuple[float, ...]] = field(default_factory=list)


PHASES = ("of which enqueue: Client.run", "delivery: queued -> claimed",
          "start: claimed -> script runs", "finish: script -> end stored",
          "notify: end stored -> caller has result")


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty sample."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def median(values: Sequence[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def on_pool(step: ScriptStep, pool: str) -> ScriptStep:
    return ScriptStep(script=step.script, name=step.name, pool=pool)


@contextmanager
def collector_paused() -> Iterator[None]:
    """The bench's own garbage collector off while it times (as ``timeit`` does), so a pause of
    the caller's is not charged to either side; it collects before and after."""
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()
        gc.collect()


@collector_paused()
def workerpool_latency(client: Client, pool: str, count: int, warmup: int = 3,
                       step: ScriptStep = STAMP_STEP) -> Latency:
    """Run *count* stamping steps (*step*, which prints the time) one at a time on an
    otherwise idle *pool*."""
    step = dataclasses.replace(step, pool=pool)
    latency = Latency([], [])
    for index in range(warmup + count):
        enqueued = time.time()
        handle = client.run(step)
        returned = time.time()
        result = handle.wait(timeout=WAIT)
        finished = time.time()
        stamp = next((e.text for e in result.log if e.stream == "stdout"), None)
        if not result.succeeded or stamp is None:
            raise BenchFailed(f"a bench step ended {result.state}: {result.message}")
        if index < warmup:
            continue
        started = float(stamp)
        latency.to_start.append(started - enqueued)
        latency.to_result.append(finished - enqueued)
        record = client.store.record(handle.id)  # after the clock stopped
        claimed, ended = float(record["started_at"]), float(record["finished_at"])
        latency.phases.append((returned - enqueued, claimed - returned, started - claimed,
                               ended - started, finished - ended))
    return latency


@collector_paused()
def sealing(samples: int) -> tuple[list[float], list[float]]:
    """Seconds to seal one sensitive variable as a client does (to a pool's public key) and to
    open it as the pool's worker does, in process."""
    key = derive(new_key(), "bench", 1)
    public, keyring = key.public(), Keyring([], [key])
    values = {"DbPassword": "s3cret-" + "x" * 17}
    sealed_in, opened_in = [], []
    for _ in range(samples):
        began = time.perf_counter()
        sealed = keyring.seal_map(values, public)
        between = time.perf_counter()
        opened = keyring.open_map(sealed, "bench", "the bench")
        ended = time.perf_counter()
        if opened != values:
            raise BenchFailed("a sealed value did not open to itself")
        sealed_in.append(between - began)
        opened_in.append(ended - between)
    return sealed_in, opened_in


@collector_paused()
def baseline_latency(app: Celery, count: int, warmup: int = 3,
                     queue: str = baseline.QUEUE) -> Latency:
    """The same, as plain Celery tasks waited for through the Redis result backend."""
    latency = Latency([], [])
    for index in range(warmup + count):
        enqueued = time.time()
        stamp = app.send_task(baseline.TASK_NAME, args=[baseline.STAMP_SCRIPT, True],
                              queue=queue).get(timeout=WAIT)
        finished = time.time()
        if index >= warmup:
            latency.to_start.append(float(stamp) - enqueued)
            latency.to_result.append(finished - enqueued)
    return latency


class Meter:
    """Redis commands and CPU, and the workers' CPU (with their scripts), over a span."""

    def __init__(self, raw: redis.Redis, pids: Sequence[int]) -> None:
        self.raw = raw
        self.pids = list(pids)
        self.start = self._read()

    def _read(self) -> tuple[float, float, float]:
        stats = cast(dict[str, float], self.raw.info("stats"))
        cpu = cast(dict[str, float], self.raw.info("cpu"))
        return (float(stats["total_commands_processed"]),
                float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"]),
                sum(process_cpu(pid) for pid in self.pids))

    def per_item(self, count: int) -> tuple[float, float, float]:
        """(Redis commands, Redis CPU seconds, worker CPU seconds) per item since creation."""
        end = self._read()
        return tuple((b - a) / count for a, b in zip(self.start, end, strict=True))  # type: ignore[return-value]


def process_cpu(pid: int) -> float:
    """CPU seconds of *pid*, its waited-for children (the scripts it ran) and its live
    children (workerpool's watchdog)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        children = [int(c) for task in os.listdir(f"/proc/{pid}/task")
                    for c in Path(f"/proc/{pid}/task/{task}/children").read_text().split()]
    except (FileNotFoundError, ProcessLookupError):
        return 0.0
    own = sum(int(f) for f in fields[11:15]) / os.sysconf("SC_CLK_TCK")
    return own + sum(process_cpu(child) for child in children)


def workerpool_throughput(client: Client, pool: str, count: int) -> float:
    """Steps per second: *count* ``true`` steps from the first enqueue until all have ended."""
    step = on_pool(TRUE_STEP, pool)
    slug = client.pools.get(pool).slug
    began = time.perf_counter()
    for _ in range(count):
        client.run(step)

    def drained() -> bool:
        pipe = client.redis.pipeline(transaction=False)
        pipe.zcard(keys.pending(slug))
        pipe.zcard(keys.running(slug))
        return sum(int(n) for n in pipe.execute()) == 0

    wait_until(drained, WAIT + count / 10, f"{count} steps on {pool}")
    return count / (time.perf_counter() - began)


def baseline_throughput(app: Celery, raw: redis.Redis, count: int,
                        queue: str = baseline.QUEUE) -> float:
    """The same for plain Celery tasks: until every result is stored in the result backend."""
    began = time.perf_counter()
    remaining = [app.send_task(baseline.TASK_NAME, args=["true", False],
                               queue=queue).id for _ in range(count)]

    def drained() -> bool:
        head = remaining[:64]
        pipe = raw.pipeline(transaction=False)
        for task_id in head:
            pipe.exists(f"celery-task-meta-{task_id}")
        done = {t for t, found in zip(head, pipe.execute(), strict=True) if found}
        remaining[:64] = [t for t in head if t not in done]
        return not remaining

    wait_until(drained, WAIT + count / 10, f"{count} baseline tasks")
    return count / (time.perf_counter() - began)


def enqueue_backlog(client: Client, route: Route, count: int) -> None:
    """Queue *count* ``true`` steps on *route* through the real store (no routing read)."""
    step = on_pool(TRUE_STEP, route.pool_name)
    settings = client.settings
    for _ in range(count):
        client.store.enqueue(step, route, settings.lease_timeout, settings.step_timeout)


def enqueue_baseline_backlog(app: Celery, count: int) -> None:
    """Queue *count* ``true`` baseline tasks (results ignored) on the baseline's main queue."""
    with app.producer_or_acquire() as producer:
        for _ in range(count):
            app.send_task(baseline.TASK_NAME, args=["true", False], queue=baseline.QUEUE,
                          ignore_result=True, producer=producer)


def drop_baseline_backlog(raw: redis.Redis) -> int:
    """Empty the baseline's main queue; wait for in-flight tasks (unacked) to end. Returns how
    many were still queued."""
    pipe = raw.pipeline(transaction=True)
    pipe.llen(baseline.QUEUE)
    pipe.delete(baseline.QUEUE)
    left = int(pipe.execute()[0])
    wait_until(lambda: not raw.hlen("unacked"), WAIT, "in-flight baseline tasks to end")
    return left


def drop_backlog(client: Client, route: Route) -> int:
    """Empty *route*'s queue and forget its queued steps; wait for in-flight ones to end.
    Returns how many were still queued."""
    pipe = client.redis.pipeline(transaction=True)
    pipe.llen(route.queue)
    pipe.delete(route.queue)
    pipe.delete(keys.pending(route.pool))
    left = int(pipe.execute()[0])
    wait_until(lambda: not client.redis.zcard(keys.running(route.pool)), WAIT,
               "in-flight steps to end")
    return left


def fanout(client: Client, pool: str, count: int, seconds: float) -> float:
    """Wall time (first enqueue to last result) of *count* steps of a *seconds*-long script,
    all enqueued at once."""
    step = ScriptStep(script=f"sleep {seconds:g}", name="bench fan-out", pool=pool)
    began = time.perf_counter()
    handles = [client.run(step) for _ in range(count)]
    for handle in handles:
        result = handle.wait(timeout=WAIT + count * seconds)
        if not result.succeeded:
            raise BenchFailed(f"a fan-out step ended {result.state}: {result.message}")
    return time.perf_counter() - began


def baseline_fanout(app: Celery, count: int, seconds: float) -> float:
    """Wall time of the same shape as plain Celery tasks."""
    began = time.perf_counter()
    results = [app.send_task(baseline.TASK_NAME, args=[f"sleep {seconds:g}", False],
                             queue=baseline.QUEUE) for _ in range(count)]
    for result in results:
        result.get(timeout=WAIT + count * seconds)
    return time.perf_counter() - began


# -- fan-out as a deployment: one worker-per-target step, orchestrated by `workerpool server` ---


def add_targets(client: Client, count: int) -> None:
    """Register *count* deployment targets in the bench's environment, all with its one role."""
    registry = TargetRegistry(client.redis)
    for n in range(1, count + 1):
        registry.add(f"bench-target-{n:03d}", FANOUT_ENVIRONMENT, (FANOUT_ROLE,))


def fanout_process(path: Path, pool: str, parallelism: int, seconds: float) -> Process:
    """Write a process file with one ``worker-per-target`` step of ``sleep SECONDS`` on *pool*
    for every target of the bench's role, at most *parallelism* at once; load it."""
    path.write_text(
        "name: Bench fan-out\n"
        "steps:\n"
        "  - name: Fan out\n"
        "    location: worker-per-target\n"
        f"    pool: {json.dumps(pool)}\n"
        f"    roles: [{json.dumps(FANOUT_ROLE)}]\n"
        f"    max_parallelism: {parallelism}\n"
        f"    script: sleep {seconds:g}\n")
    return load_process(path)


@dataclass(frozen=True)
class DeploymentFanout:
    wall: float  # submit -> the end the orchestrator recorded on the deployment (s)
    runs: float  # first run's claim -> last run's end, from the run records (s)
    to_first_dispatch: float  # submit -> the first run enqueued by the orchestrator (s)
    after_last_run: float  # last run's end -> the deployment's recorded end (s)
    overhead: list[float]  # per run: claim to end recorded, minus the script's own time
    handoff: list[float]  # per worker: end of one run to the claim of its next
    reaction: list[float]  # the i-th run to end -> the (max_parallelism + i)-th run enqueued


def deployment_fanout(client: Client, process: Process, count: int,
                      seconds: float) -> DeploymentFanout:
    """Submit *process* (one ``worker-per-target`` step over *count* targets) and wait for the
    orchestrator to record its end; then read every run's record."""
    deployments = client.deployments
    submitted = time.time()
    deployment_id = deployments.submit(process, FANOUT_ENVIRONMENT)
    key = keys.deployment(deployment_id)
    # One HGET per 10 ms: Deployments.wait() reads every run's record each 200 ms, which would
    # load Redis during the measurement and round the end up; the end is the recorded time.
    wait_until(lambda: client.redis.hget(key, "state") in (SUCCESS, FAILED),
               WAIT + count * seconds, f"deployment {deployment_id} to end", interval=0.01)
    ended = float(cast(str, client.redis.hget(key, "finished_at")))
    result = deployments.result(deployment_id)
    runs = [run for step in result.steps for run in step.runs]
    failed = [run for run in runs if run.state != SUCCESS]
    if result.state != SUCCESS or failed or len(runs) != count:
        detail = f"; a run ended {failed[0].state}" if failed else ""
        raise BenchFailed(f"the fan-out deployment ended {result.state} with {len(runs)} of "
                          f"{count} runs{detail} {result.message}".rstrip())
    records = [client.store.record(run.id) for run in runs]
    claimed = sorted(float(r["started_at"]) for r in records)
    finished = sorted(float(r["finished_at"]) for r in records)
    queued = sorted(float(r["queued_at"]) for r in records)
    by_worker: dict[str, list[tuple[float, float]]] = {}
    for record in records:
        by_worker.setdefault(record["worker"], []).append(
            (float(record["started_at"]), float(record["finished_at"])))
    handoff = [nxt[0] - prev[1] for spans in by_worker.values()
               for prev, nxt in itertools.pairwise(sorted(spans))]
    limit = process.steps[0].max_parallelism
    return DeploymentFanout(
        wall=ended - submitted, runs=finished[-1] - claimed[0],
        to_first_dispatch=queued[0] - submitted, after_last_run=ended - finished[-1],
        overhead=[float(r["finished_at"]) - float(r["started_at"]) - seconds for r in records],
        handoff=handoff,
        reaction=[queued[limit + i] - finished[i] for i in range(len(queued) - limit)])


# What a connection sends when it opens or has been idle, whatever the steps do.
CONNECTION_UPKEEP = frozenset({"HELLO", "AUTH", "SELECT", "CLIENT", "PING"})


def requests_per_step(raw: redis.Redis, client: Client, step: ScriptStep, count: int) -> float:
    """Requests Redis received per step (each command a client sent, a script call counted
    once and the commands it ran not at all) while *count* of *step* run one at a time: what
    ``MONITOR`` shows from connections, not from Lua. What the workers do on a clock rather
    than per step is left out, so the same steps count the same whatever moment they run at:
    the pool's reaper lock is held for the span (no reap), and heartbeat turns, Celery's
    events (published per 50 ms window, not per step, for Flower) and a connection's set-up
    and health checks are not counted."""
    marker = f"workerpool-bench-end-{time.time_ns()}"
    beat = "EVALSHA " + hashlib.sha1(scripts.source("beat").encode()).hexdigest()
    seen = [0]
    listening = threading.Event()

    def counted(entry: dict[str, object]) -> bool:
        command = str(entry.get("command", ""))
        verb, _, rest = command.partition(" ")
        events = verb == "PUBLISH" and ".celeryev/" in rest.split(" ", 1)[0]
        return (entry.get("client_type") != "lua" and not command.startswith(beat)
                and not events and verb not in CONNECTION_UPKEEP)

    def watch() -> None:
        with raw.monitor() as monitor:  # type: ignore[no-untyped-call]
            listening.set()
            for entry in monitor.listen():
                if marker in str(entry.get("command", "")):
                    return
                if counted(entry):
                    seen[0] += 1

    lock = keys.reaper(slugify(step.pool or ""))
    raw.set(lock, "bench", px=int(WAIT * 1000) * (count + 1))
    for _ in range(2):  # not counted: a pool edit just made has reached the workers since
        client.run(step).wait(timeout=WAIT)
    watcher = threading.Thread(target=watch, name="bench-monitor", daemon=True)
    watcher.start()
    if not listening.wait(WAIT):
        raise BenchFailed("MONITOR did not start")
    for _ in range(count):
        result = client.run(step).wait(timeout=WAIT)
        if not result.succeeded:
            raise BenchFailed(f"a bench step ended {result.state}: {result.message}")
    raw.echo(marker)
    watcher.join(WAIT)
    raw.delete(lock)
    return seen[0] / count
