"""Figure 9: the same job on workerpool and its peers, on the same Redis.

The job is ``bash -c true`` through ``subprocess``, with 4 slots on each system: RQ (4 default
forking workers), Dramatiq (2 processes x 2 threads, Redis results backend), plain Celery and
tuned Celery (the baseline's workers, 2 x 2 threads each) and workerpool (a pool of 2 workers x
2). Each system is timed one job at a time (enqueue -> result in the caller's hands) and with
``throughput_steps`` jobs enqueued at once by one caller, the systems going first in turn.

RQ and Dramatiq are only the bench's peers: they come with the ``bench`` extra.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from workerpool.core.errors import Refused

try:
    import dramatiq
    import rq  # noqa: F401
except ImportError as missing:  # an environment installed before figure 9 existed
    raise Refused(f"the bench compares workerpool with RQ and Dramatiq, and {missing.name} is "
                  "not installed: pip install -e '.[bench]' (or `make bench`)") from None

import redis
from celery import Celery
from dramatiq.results.backends.redis import RedisBackend
from rq import Queue, Worker
from rq.results import Result

from workerpool.bench import baseline, figures, peer_dramatiq, peer_rq
from workerpool.bench.figures import median, percentile
from workerpool.bench.harness import BenchFailed, Harness, wait_until
from workerpool.bench.report import Goal, Report, Row
from workerpool.client import Client

if TYPE_CHECKING:
    from workerpool.bench.runner import Plan

FIGURE = 9
POOL_PEERS = "Bench Peers"
WORKERPOOL, RQ, DRAMATIQ, CELERY, TUNED = ("workerpool", "RQ", "Dramatiq", "plain Celery",
                                           "tuned Celery")
WORKERS = 2  # processes of workerpool, Celery and Dramatiq; RQ's (one slot each): WORKERS x threads
WAIT = figures.WAIT
MS = 1000.0


@dataclass(frozen=True)
class System:
    """One system of the figure: how to run one job and wait for its result, how to run
    *count* at once (jobs per second), and the pids whose CPU is theirs."""

    name: str
    one: Callable[[], None]
    many: Callable[[int], float]
    pids: list[int]


@dataclass
class Measured:
    """One run of one system."""

    to_result: list[float]  # seconds, one job at a time
    rate: float  # jobs per second
    commands: float  # Redis commands per job in the throughput span
    cpu: float  # the workers' CPU seconds per job (their children's included)


def phase(harness: Harness, plan: Plan, report: Report,
          progress: Callable[[str], None]) -> None:
    """Start all five systems (4 slots each), measure them in turn for ``plan.runs`` runs, and
    add figure 9's rows."""
    threads = plan.concurrency
    runs: list[dict[str, Measured]] = []
    with contextlib.ExitStack() as stack:
        client = harness.client()
        stack.callback(client.close)
        client.pools.add(POOL_PEERS, "bench")
        progress(f"starting workers: {WORKERS} x {POOL_PEERS}, {WORKERS} + {WORKERS} x Celery "
                 f"baseline (plain, tuned), {WORKERS * threads} RQ workers, Dramatiq "
                 f"({WORKERS} processes x {threads} threads)")
        ours = harness.start_workers(POOL_PEERS, WORKERS, threads)
        plain = harness.start_baseline(WORKERS, threads)
        tuned = harness.start_baseline(WORKERS, threads, baseline.QUEUE_TUNED, tuned=True)
        rq_redis = peer_rq.connect(harness.url)
        stack.callback(rq_redis.close)
        queue = Queue(peer_rq.QUEUE, connection=rq_redis)
        rq_pids = start_rq(harness, queue, WORKERS * threads)
        dramatiq_pids = start_dramatiq(harness, WORKERS, threads)
        broker, backend, actor = peer_dramatiq.connect(harness.url)
        stack.callback(broker.close)
        app = baseline.make_baseline_app(harness.url)
        stack.callback(app.close)
        raw = harness.raw
        systems = [
            System(WORKERPOOL, lambda: workerpool_one(client),
                   lambda n: figures.workerpool_throughput(client, POOL_PEERS, n), ours),
            System(RQ, lambda: rq_one(queue), lambda n: rq_many(queue, raw, n), rq_pids),
            System(DRAMATIQ, lambda: dramatiq_one(actor, backend),
                   lambda n: dramatiq_many(actor, backend, raw, n), dramatiq_pids),
            System(CELERY, lambda: celery_one(app, baseline.QUEUE),
                   lambda n: figures.baseline_throughput(app, raw, n), plain),
            System(TUNED, lambda: celery_one(app, baseline.QUEUE_TUNED),
                   lambda n: figures.baseline_throughput(app, raw, n, baseline.QUEUE_TUNED),
                   tuned)]
        for n in range(plan.runs):
            progress(f"9/11 peers, run {n + 1}/{plan.runs}: {plan.latency_steps} `bash -c true` "
                     f"jobs one at a time, then {plan.throughput_steps} at once, on each of "
                     "workerpool, RQ, Dramatiq, plain and tuned Celery")
            runs.append(measure_run(systems, raw, plan, n))
    rows(report, runs, plan.throughput_steps)


def start_rq(harness: Harness, queue: Queue, count: int) -> list[int]:
    """*count* ``Worker`` processes on *queue*; ready once all have registered with RQ (a
    worker registers right before its first blocking pop)."""
    argvs = [[sys.executable, "-m", "workerpool.bench.peer_rq", harness.url,
              f"workerpool-bench-rq-{n + 1}"] for n in range(count)]
    return harness.start_peer(
        argvs, "rq", lambda: Worker.count(connection=queue.connection, queue=queue) == count,
        f"{count} RQ workers")


def start_dramatiq(harness: Harness, processes: int, threads: int) -> list[int]:
    """Dramatiq's own CLI, *processes* x *threads*; ready once every worker process has
    booted its threads (each adds its pid to a set)."""
    argv = [sys.executable, "-m", "dramatiq", "workerpool.bench.peer_dramatiq:serve",
            "--processes", str(processes), "--threads", str(threads)]
    raw = harness.raw
    return harness.start_peer(
        [argv], "dramatiq", lambda: int(raw.scard(peer_dramatiq.READY_KEY)) == processes,
        f"Dramatiq ({processes} worker processes)")


def measure_run(systems: list[System], raw: redis.Redis, plan: Plan,
                n: int) -> dict[str, Measured]:
    """One run: each system's latency, then each one's throughput, first in turn."""
    turn = n % len(systems)
    order = systems[turn:] + systems[:turn]
    latencies = {s.name: one_at_a_time(s.one, plan.latency_steps) for s in order}
    done: dict[str, Measured] = {}
    count = plan.throughput_steps
    for system in order:
        meter = figures.Meter(raw, system.pids)
        rate = system.many(count)
        commands, _, cpu = meter.per_item(count)
        done[system.name] = Measured(latencies[system.name], rate, commands, cpu)
    return done


def one_at_a_time(one: Callable[[], None], count: int, warmup: int = 3) -> list[float]:
    """Seconds from before the enqueue until the result is in hand, for *count* jobs run one
    at a time (after *warmup* untimed ones), the bench's garbage collector paused."""
    samples = []
    with figures.collector_paused():
        for index in range(warmup + count):
            began = time.perf_counter()
            one()
            took = time.perf_counter() - began
            if index >= warmup:
                samples.append(took)
    return samples


# -- one job, waited for as each system's caller would -------------------------------------


def workerpool_one(client: Client) -> None:
    """``Client.run`` and ``StepHandle.wait()`` (a blocking read of the step's log stream up to
    its end marker, no polling)."""
    result = client.run(figures.on_pool(figures.TRUE_STEP, POOL_PEERS)).wait(timeout=WAIT)
    if not result.succeeded:
        raise BenchFailed(f"a bench step ended {result.state}: {result.message}")


def celery_one(app: Celery, queue: str) -> None:
    """``send_task`` and ``AsyncResult.get()`` (the Redis backend's pub/sub, no polling)."""
    app.send_task(baseline.TASK_NAME, args=["true", False], queue=queue).get(timeout=WAIT)


def rq_one(queue: Queue) -> None:
    """``Queue.enqueue`` and ``Job.latest_result(timeout=...)``: RQ 2 keeps a job's results in
    a stream of their own and this blocks on it (XREAD BLOCK), so the result arrives as soon
    as the worker writes it, without polling the job's status."""
    job = queue.enqueue(peer_rq.run_bash, "true")
    result = job.latest_result(timeout=int(WAIT))
    if result is None or result.type != Result.Type.SUCCESSFUL:
        raise BenchFailed(f"an RQ job ended {result.type.name if result else 'without a result'}")


def dramatiq_one(actor: dramatiq.Actor[[str], None], backend: RedisBackend) -> None:
    """``Actor.send`` and ``Message.get_result(block=True)`` (the Redis backend blocks on the
    result's list, BRPOPLPUSH; a failure raises)."""
    actor.send("true").get_result(backend=backend, block=True, timeout=int(WAIT * MS))


# -- many jobs from one caller --------------------------------------------------------------


def rq_many(queue: Queue, raw: redis.Redis, count: int) -> float:
    """Jobs per second: *count* jobs enqueued one after another, timed until every result is
    stored (its result stream exists), as the Celery baseline's throughput is timed."""
    began = time.perf_counter()
    ids = [queue.enqueue(peer_rq.run_bash, "true").id for _ in range(count)]
    stored(raw, [Result.get_key(job_id) for job_id in ids],  # type: ignore[no-untyped-call]
           f"{count} RQ jobs")
    rate = count / (time.perf_counter() - began)
    failed = queue.failed_job_registry.count
    if failed:
        raise BenchFailed(f"{failed} RQ jobs failed")
    return rate


def dramatiq_many(actor: dramatiq.Actor[[str], None], backend: RedisBackend,
                  raw: redis.Redis, count: int) -> float:
    """The same for Dramatiq: until every message's result is stored in the results backend."""
    began = time.perf_counter()
    messages = [actor.send("true") for _ in range(count)]
    stored(raw, [backend.build_message_key(m) for m in messages],
           f"{count} Dramatiq messages")
    rate = count / (time.perf_counter() - began)
    messages[-1].get_result(backend=backend)  # raises if the job failed
    return rate


def stored(raw: redis.Redis, remaining: list[str], what: str) -> None:
    """Poll until every key of *remaining* exists, 64 EXISTS a round trip from the oldest."""
    def drained() -> bool:
        head = remaining[:64]
        pipe = raw.pipeline(transaction=False)
        for key in head:
            pipe.exists(key)
        done = {k for k, found in zip(head, pipe.execute(), strict=True) if found}
        remaining[:64] = [k for k in head if k not in done]
        return not remaining

    wait_until(drained, WAIT + len(remaining) / 10, what)


# -- rows ---------------------------------------------------------------------------------


def compared(metric: str, unit: str, ours: list[float], theirs: list[float],
             goal: Goal | None = None) -> Row:
    """As ``runner.compared``: medians over runs, and the median of the per-run ratios."""
    ratios = [a / b for a, b in zip(ours, theirs, strict=True) if b]
    return Row(FIGURE, metric, unit, median(ours), median(theirs),
               median(ratios) if ratios else None, goal)


def rows(report: Report, runs: list[dict[str, Measured]], count: int) -> None:
    names = list(runs[0])
    order = [WORKERPOOL, RQ, DRAMATIQ, CELERY, TUNED]
    names.sort(key=order.index)
    for name in names:
        each = [run[name] for run in runs]
        report.add(Row(FIGURE, f"{name}: enqueue -> result p50", "ms",
                       median([median(m.to_result) * MS for m in each])))
        report.add(Row(FIGURE, f"{name}: enqueue -> result p99", "ms",
                       median([percentile(m.to_result, 99) * MS for m in each])))
        report.add(Row(FIGURE, f"{name}: throughput ({count} jobs)", "jobs/s",
                       median([m.rate for m in each])))
        report.add(Row(FIGURE, f"{name}: Redis commands per job", "",
                       median([m.commands for m in each])))
        report.add(Row(FIGURE, f"{name}: worker CPU per job (with its children)", "ms",
                       median([m.cpu * MS for m in each])))
    peers = [name for name in names if name != WORKERPOOL]

    def p50(run: dict[str, Measured], name: str) -> float:
        return median(run[name].to_result) * MS

    best_p50 = [min(peers, key=lambda name: p50(run, name)) for run in runs]
    best_rate = [max(peers, key=lambda name: run[name].rate) for run in runs]
    report.add(compared("workerpool p50 vs best peer", "ms",
                        [p50(run, WORKERPOOL) for run in runs],
                        [p50(run, best) for run, best in zip(runs, best_p50, strict=True)],
                        Goal("<=", 1.0)))
    report.add(compared(f"workerpool throughput vs best peer ({count} jobs)", "jobs/s",
                        [run[WORKERPOOL].rate for run in runs],
                        [run[best].rate for run, best in zip(runs, best_rate, strict=True)],
                        Goal(">=", 1.0)))
    report.add(compared(f"workerpool throughput vs tuned Celery ({count} jobs)", "jobs/s",
                        [run[WORKERPOOL].rate for run in runs],
                        [run[TUNED].rate for run in runs], Goal(">=", 0.95)))
    report.add(Row(FIGURE, "best peer by p50, by throughput", "", None,
                   note=f"{tally(best_p50)}; {tally(best_rate)}"))


def tally(names: list[str]) -> str:
    """``RQ (2 of 3 runs), Dramatiq (1 of 3)``: which peer was best, how often."""
    counted = sorted({n: names.count(n) for n in names}.items(), key=lambda kv: -kv[1])
    return ", ".join(f"{name} ({k} of {len(names)} runs)" for name, k in counted)
