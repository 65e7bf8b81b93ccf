"""The bench's phases: which workers run when, how many runs, and the rows each figure yields."""

from __future__ import annotations

import dataclasses
import os
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from types import FrameType

from celery import Celery

from workerpool.bench import baseline, console, figures, peers, scale, sentinel
from workerpool.bench.figures import Latency, median, percentile
from workerpool.bench.harness import Harness
from workerpool.bench.report import Goal, Report, Row, load_average, machine
from workerpool.client import Client
from workerpool.core.overview import read_overview
from workerpool.core.pools import slugify
from workerpool.core.routeview import read_route
from workerpool.core.routing import Route
from workerpool.core.settings import Settings

POOL_A, POOL_B, POOL_PARKED, POOL_FAN = "Bench A", "Bench B", "Bench Parked", "Bench Fan-out"
POOL_USERS, POOL_SAME = "Bench Script Users", "Bench Same User"
POOL_OPS = "Bench Operated"
SEALED_STEP = dataclasses.replace(figures.STAMP_STEP, name="bench sealed",
                                  sensitive_variables={"DbPassword": "s3cret-" + "x" * 17})
MS = 1000.0


@dataclass(frozen=True)
class Plan:
    """How much each figure does; ``full`` is the issue's shape."""

    name: str
    runs: int
    latency_steps: int
    throughput_steps: int
    backlog: int
    isolation_steps: int
    fanout_targets: int
    fanout_workers: int
    fanout_parallelism: int  # the deployment step's max_parallelism
    scale_pools: int
    scale_workers: int
    scale_steps: int
    samples: int  # spawn, round trip and CLI timings
    redis_benchmark_requests: int
    concurrency: int = 2
    fanout_seconds: float = 0.1
    console_pools: int = 200  # figure 11: the console's pools page
    console_workers: int = 1000


FULL = Plan("full", runs=5, latency_steps=500, throughput_steps=2000, backlog=10_000,
            isolation_steps=1000, fanout_targets=250, fanout_workers=6, fanout_parallelism=12,
            scale_pools=1000, scale_workers=10_000, scale_steps=1_000_000, samples=200,
            redis_benchmark_requests=100_000)
QUICK = Plan("quick", runs=3, latency_steps=100, throughput_steps=400, backlog=2000,
             isolation_steps=100, fanout_targets=24, fanout_workers=6, fanout_parallelism=12,
             scale_pools=1000, scale_workers=10_000, scale_steps=10_000, samples=30,
             redis_benchmark_requests=20_000)
TINY = Plan("tiny", runs=1, latency_steps=3, throughput_steps=10, backlog=50, isolation_steps=3,
            fanout_targets=4, fanout_workers=2, fanout_parallelism=4, scale_pools=5,
            scale_workers=10, scale_steps=200, samples=3, redis_benchmark_requests=1000,
            console_pools=5, console_workers=10)
PLANS = {p.name: p for p in (FULL, QUICK, TINY)}


def run(plan: Plan, settings: Settings, progress: Callable[[str], None]) -> Report:
    """Run every figure on a fresh Redis database; stop everything started, whatever happens."""
    began = time.monotonic()
    settings = dataclasses.replace(settings, lease_timeout=3600.0)  # backlogs wait minutes
    with _terminate_as_interrupt(), Harness(settings) as harness:
        report = Report(plan.name, plan.runs, machine(harness.redis_version()))
        report.notes = notes(plan, harness.embedded)
        phases = (_references, _phase_workers, _phase_fanout, _phase_scale, _phase_trust,
                  _phase_operations, peers.phase, sentinel.phase, console.phase)
        for phase in phases:
            phase(harness, plan, report, progress)
            harness.stop_workers()
            harness.reset()
    report.machine["load average at end"] = load_average()
    report.seconds = time.monotonic() - began
    return report


@contextmanager
def _terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM unwinds like Ctrl-C, so the harness still stops what it started."""
    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGTERM, interrupt)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)



def compared(figure: int, metric: str, unit: str, ours: list[float], theirs: list[float],
             goal: Goal | None = None) -> Row:
    """Medians over runs, and the median of the per-run ratios (same run, same broker)."""
    ratios = [a / b for a, b in zip(ours, theirs, strict=True) if b]
    return Row(figure, metric, unit, median(ours), median(theirs),
               median(ratios) if ratios else None, goal)


# -- figure 6: the machine's reference points -----------------------------------------


def _references(harness: Harness, plan: Plan, report: Report,
                progress: Callable[[str], None]) -> None:
    progress("6/11 reference points: process spawn, Redis round trip, redis-benchmark")
    spawn = scale.spawn_seconds(plan.samples)
    trips = scale.round_trip_seconds(harness.raw, plan.samples * 5)
    bench = scale.redis_benchmark(harness.url, plan.redis_benchmark_requests)
    rows = [Row(6, "spawn `bash -c true` p50", "ms", median(spawn) * MS),
            Row(6, "spawn `bash -c true` p99", "ms", percentile(spawn, 99) * MS),
            Row(6, "Redis round trip (PING) p50", "ms", median(trips) * MS),
            Row(6, "redis-benchmark LPUSH", "ops/s", bench.lpush, note=bench.note),
            Row(6, "redis-benchmark RPOP", "ops/s", bench.rpop, note=bench.note)]
    report.rows.extend(rows)


# -- figures 1-3: pools A and B and the Celery baseline, all running at once ------------


def _phase_workers(harness: Harness, plan: Plan, report: Report,
                   progress: Callable[[str], None]) -> None:
    client = harness.client()
    for name in (POOL_A, POOL_B, POOL_PARKED):
        client.pools.add(name, "bench")
    progress(f"starting workers: 2 x {POOL_A}, 1 x {POOL_B}, 2 + 1 x Celery baseline "
             f"(concurrency {plan.concurrency})")
    pids_a = harness.start_workers(POOL_A, 2, plan.concurrency)
    pids_b = harness.start_workers(POOL_B, 1, plan.concurrency)
    pids_base = harness.start_baseline(2, plan.concurrency)
    harness.start_baseline(1, plan.concurrency, baseline.QUEUE_B)
    pids_tuned = harness.start_baseline(2, plan.concurrency, baseline.QUEUE_TUNED, tuned=True)
    app = baseline.make_baseline_app(harness.url)
    try:
        _latency(client, app, plan, report, progress)
        _throughput(harness, client, app, (pids_a, pids_base, pids_tuned), plan, report,
                    progress)
        _isolation(harness, client, app, (pids_a, pids_b), plan, report, progress)
    finally:
        app.close()
        client.close()


def _latency(client: Client, app: Celery, plan: Plan, report: Report,
             progress: Callable[[str], None]) -> None:
    runs: list[tuple[Latency, Latency]] = []
    for n in range(plan.runs):
        progress(f"1/11 idle latency, run {n + 1}/{plan.runs}: {plan.latency_steps} steps and "
                 f"{plan.latency_steps} baseline tasks, one at a time")
        pair: list[Callable[[], Latency]] = [
            lambda: figures.workerpool_latency(client, POOL_A, plan.latency_steps),
            lambda: figures.baseline_latency(app, plan.latency_steps)]
        order = pair if n % 2 == 0 else pair[::-1]  # alternate who goes first
        done = [measure() for measure in order]
        runs.append((done[0], done[1]) if n % 2 == 0 else (done[1], done[0]))
    p50 = Goal("<=", 1.2)
    for label, attr in (("start", "to_start"), ("result", "to_result")):
        for q, goal in ((50, p50), (99, None)):
            ours = [percentile(getattr(w, attr), q) * MS for w, _ in runs]
            theirs = [percentile(getattr(b, attr), q) * MS for _, b in runs]
            report.add(compared(1, f"enqueue -> {label} p{q} vs Celery", "ms", ours, theirs,
                                goal))
    for i, phase in enumerate(figures.PHASES):
        report.add(Row(1, f"{phase} p50", "ms",
                       median([median([p[i] for p in w.phases]) * MS for w, _ in runs])))


def _throughput(harness: Harness, client: Client, app: Celery,
                pids: tuple[list[int], list[int], list[int]], plan: Plan, report: Report,
                progress: Callable[[str], None]) -> None:
    ours: list[tuple[float, ...]] = []
    theirs: list[tuple[float, ...]] = []
    tuned: list[tuple[float, ...]] = []
    count = plan.throughput_steps
    for n in range(plan.runs):
        progress(f"2/11 throughput, run {n + 1}/{plan.runs}: {count} `true` steps on 2 workers "
                 f"x {plan.concurrency}, {count} baseline tasks, {count} tuned baseline tasks")
        sides: list[tuple[list[int], Callable[[], float], list[tuple[float, ...]]]] = [
            (pids[0], lambda: figures.workerpool_throughput(client, POOL_A, count), ours),
            (pids[1], lambda: figures.baseline_throughput(app, harness.raw, count), theirs),
            (pids[2], lambda: figures.baseline_throughput(app, harness.raw, count,
                                                          baseline.QUEUE_TUNED), tuned)]
        turn = n % len(sides)  # each side goes first in turn
        for side, measure, into in sides[turn:] + sides[:turn]:
            meter = figures.Meter(harness.raw, side)
            rate = measure()
            into.append((rate, *meter.per_item(count)))
    labels = [("steps per second vs Celery", "steps/s", 1.0, Goal(">=", 0.9)),
              ("Redis commands per step (Lua's included)", "", 1.0, None),
              ("Redis CPU per step", "ms", MS, None),
              ("worker CPU per step (with its children)", "ms", MS, None)]
    for i, (label, unit, factor, goal) in enumerate(labels):
        report.add(compared(2, label, unit, [r[i] * factor for r in ours],
                            [r[i] * factor for r in theirs], goal))
    report.add(compared(2, "Celery with workerpool's transport and event batching vs "
                        "plain Celery", "steps/s", [r[0] for r in tuned], [r[0] for r in theirs]))
    report.add(compared(2, "steps per second vs that tuned Celery", "steps/s",
                        [r[0] for r in ours], [r[0] for r in tuned]))


def _isolation(harness: Harness, client: Client, app: Celery,
               pids: tuple[list[int], list[int]], plan: Plan, report: Report,
               progress: Callable[[str], None]) -> None:
    pools = client.snapshot().pools
    route_a, route_parked = (Route(p.queue, p.slug, p.name) for p in (
        pools[slugify(POOL_A)], pools[slugify(POOL_PARKED)]))
    shared: list[tuple[float, float]] = []
    split: list[tuple[float, float]] = []
    parked: list[tuple[float, float]] = []
    celery: list[tuple[float, float]] = []
    lowest: list[float] = []
    for n in range(plan.runs):
        progress(f"3/11 pool isolation, run {n + 1}/{plan.runs}: {POOL_B} alone and with "
                 f"{plan.backlog} steps queued on {POOL_A} (draining, then on CPUs of its own) "
                 f"or on {POOL_PARKED} (no consumer)")
        shared.append(_with_backlog(harness, client, route_a, plan, lowest))
        if harness.can_split_cpus:
            with harness.split_cpus(pids[0], pids[1]):
                split.append(_with_backlog(harness, client, route_a, plan, lowest))
        parked.append(_with_backlog(harness, client, route_parked, plan, []))
        celery.append(_celery_with_backlog(harness, app, plan))
    report.add(Row(3, f"{POOL_B} p99, {POOL_A} idle", "ms", median([p[0] for p in shared])))
    # The goal is judged where workerpool decides the outcome: a backlog on another pool's
    # queue. While that backlog drains on the same machine, its scripts compete for the CPUs;
    # plain Celery is measured in that shape too, so the draining rows read against it.
    for label, pairs, goal in (
            ("backlog parked (broker only)", parked, Goal("<=", 1.2)),
            (f"{POOL_A} draining, same CPUs", shared, None),
            (f"{POOL_A} draining, CPUs apart", split, None),
            ("plain Celery: queue B p99, queue A draining, same CPUs", celery, None)):
        if pairs:
            metric = label if label.startswith("plain") else f"{POOL_B} p99, {label}"
            report.add(compared(3, metric, "ms", [p[1] for p in pairs], [p[0] for p in pairs],
                                goal))
    report.add(compared(3, "draining, same CPUs: workerpool's ratio vs plain Celery's", "",
                        [b / a for a, b in shared], [b / a for a, b in celery]))
    report.add(Row(3, f"{POOL_A} backlog left after measuring", "steps", min(lowest)))


def _with_backlog(harness: Harness, client: Client, route: Route, plan: Plan,
                  lowest: list[float]) -> tuple[float, float]:
    """Pool B's p99 with *route* idle, then with a backlog queued on it (then dropped); the
    append-only file compacted before each."""
    harness.compact_log()
    idle = _p99(client, plan)
    figures.enqueue_backlog(client, route, plan.backlog)
    harness.compact_log()
    loaded = _p99(client, plan)
    lowest.append(figures.drop_backlog(client, route))
    return idle, loaded


def _celery_with_backlog(harness: Harness, app: Celery, plan: Plan) -> tuple[float, float]:
    """The same shape in plain Celery: queue B's p99 alone, then with a backlog draining on
    queue A's two workers."""
    def p99() -> float:
        latency = figures.baseline_latency(app, plan.isolation_steps, warmup=1,
                                           queue=baseline.QUEUE_B)
        return percentile(latency.to_result, 99) * MS

    harness.compact_log()
    idle = p99()
    figures.enqueue_baseline_backlog(app, plan.backlog)
    harness.compact_log()
    loaded = p99()
    figures.drop_baseline_backlog(harness.raw)  # the Bench A row reports Bench A's backlog
    return idle, loaded


def _p99(client: Client, plan: Plan) -> float:
    latency = figures.workerpool_latency(client, POOL_B, plan.isolation_steps, warmup=1)
    return percentile(latency.to_result, 99) * MS


# -- figure 4: fan-out ----------------------------------------------------------------


def _phase_fanout(harness: Harness, plan: Plan, report: Report,
                  progress: Callable[[str], None]) -> None:
    client = harness.client()
    client.pools.add(POOL_FAN, "bench")
    workers, count, seconds = plan.fanout_workers, plan.fanout_targets, plan.fanout_seconds
    progress(f"starting workers: {workers} x {POOL_FAN} and {workers} x Celery baseline "
             "(concurrency 1), and `workerpool server`")
    harness.start_workers(POOL_FAN, workers, 1)
    harness.start_baseline(workers, 1)
    harness.start_server()
    figures.add_targets(client, count)
    process, at_slots = (
        figures.fanout_process(harness.workdir / f"fan-out-{limit}.yaml", POOL_FAN, limit,
                               seconds)
        for limit in (plan.fanout_parallelism, workers))
    app = baseline.make_baseline_app(harness.url)
    ours: list[figures.DeploymentFanout] = []
    slotted: list[figures.DeploymentFanout] = []
    steps: list[float] = []
    theirs: list[float] = []
    measures: list[Callable[[], None]] = [
        lambda: ours.append(figures.deployment_fanout(client, process, count, seconds)),
        lambda: slotted.append(figures.deployment_fanout(client, at_slots, count, seconds)),
        lambda: steps.append(figures.fanout(client, POOL_FAN, count, seconds)),
        lambda: theirs.append(figures.baseline_fanout(app, count, seconds))]
    try:
        for n in range(plan.runs):
            progress(f"4/11 fan-out, run {n + 1}/{plan.runs}: {count} x {seconds * MS:g} ms on "
                     f"{workers} workers as a deployment over {count} targets (max_parallelism "
                     f"{plan.fanout_parallelism}, then {workers}), as steps, as Celery tasks")
            first = n % len(measures)  # rotate who goes first
            for measure in measures[first:] + measures[:first]:
                measure()
    finally:
        app.close()
        client.close()
    _fanout_rows(plan, report, ours, slotted, steps, theirs)


def _fanout_rows(plan: Plan, report: Report, ours: list[figures.DeploymentFanout],
                 slotted: list[figures.DeploymentFanout], steps: list[float],
                 theirs: list[float]) -> None:
    workers = plan.fanout_workers
    ideal = [plan.fanout_targets * plan.fanout_seconds / workers] * len(ours)
    shape = f"{plan.fanout_targets} x {plan.fanout_seconds * MS:g} ms / {workers}"
    walls = [run.wall for run in ours]

    def p50(runs: list[figures.DeploymentFanout], attr: str) -> float | None:
        """Median over runs of each run's p50 (None when no run has a sample, e.g. with no
        more targets than workers)."""
        each = [median(getattr(run, attr)) * MS for run in runs if getattr(run, attr)]
        return median(each) if each else None

    report.add(compared(4, f"deployment: submit -> end vs ideal ({shape})", "s", walls, ideal))
    report.add(Row(4, "deployment efficiency (ideal / wall)", "%",
                   median([i / w * 100 for i, w in zip(ideal, walls, strict=True)])))
    report.add(compared(4, "deployment: first run start -> last run end vs ideal", "s",
                        [run.runs for run in ours], ideal))
    report.add(Row(4, "orchestrator: submit -> first run enqueued", "ms",
                   median([run.to_first_dispatch * MS for run in ours])))
    report.add(Row(4, "orchestrator: last run end -> deployment end", "ms",
                   median([run.after_last_run * MS for run in ours])))
    report.add(Row(4, "per run: claim -> end, minus script p50", "ms", p50(ours, "overhead")))
    report.add(Row(4, "per run: end -> same worker's next claim p50", "ms",
                   p50(ours, "handoff")))
    report.add(compared(4, f"max_parallelism {workers} (= slots): submit -> end vs ideal", "s",
                        [run.wall for run in slotted], ideal))
    report.add(Row(4, f"max_parallelism {workers}: a run's end -> next run enqueued p50",
                   "ms", p50(slotted, "reaction")))
    report.add(compared(4, "individual steps (Client.run, no orchestrator) vs ideal", "s",
                        steps, ideal))
    report.add(compared(4, "plain Celery tasks vs ideal", "s", theirs, ideal))
    report.add(compared(4, "deployment vs plain Celery tasks, same shape", "s", walls, theirs,
                        Goal("<=", 1.03)))


# -- figure 5: scale ------------------------------------------------------------------


def _phase_scale(harness: Harness, plan: Plan, report: Report,
                 progress: Callable[[str], None]) -> None:
    client = harness.client()
    progress(f"5/11 scale: {plan.scale_pools} pools, {plan.scale_workers} simulated workers, "
             f"{plan.scale_steps} queued steps")
    pools = scale.add_pools(client, plan.scale_pools)
    target = pools[-1]  # its one worker is simulated: its steps stay queued
    route = Route(target.queue, target.slug, target.name)

    def run() -> None:
        client.run(figures.on_pool(figures.TRUE_STEP, target.slug))

    workers = scale.add_workers(harness.raw, [target], 1)
    alone = scale.timed(run, plan.samples)
    workers += scale.add_workers(harness.raw, pools[:-1], plan.scale_workers - 1)
    among = scale.timed(run, plan.samples)
    per_step = scale.memory_per_step(client, route, plan.scale_steps)
    harness.compact_log()  # the rewrite the million writes call for: before the timings
    clis = scale.cli_rounds(harness.url, {
        "status": ["status"], "pool list": ["pool", "list"], "one pool": [
            "status", "--pool", target.slug], "floor": ["--version"]},
        max(3, plan.samples // 10))
    overview = scale.timed(lambda: read_overview(client.redis), plan.samples)
    routing = scale.timed(lambda: read_route(client.redis, target.slug), plan.samples)
    scale.add_running(harness.raw, workers)
    own = scale.timed(lambda: client.reap([pools[0].slug]), plan.samples)  # as a worker does
    every = scale.timed(client.reap, plan.samples)  # as the local stack does
    upkeep = scale.upkeep(client, workers, [p.slug for p in pools],
                          max(2000, plan.samples * 10), harness.settings)
    client.close()
    interval = harness.settings.heartbeat_interval
    busy = upkeep.busy(plan.scale_workers, plan.scale_pools, interval)
    floor = [median(clis["floor"]) * MS]
    report.rows.extend([
        Row(5, f"Redis memory per queued step ({plan.scale_steps:,} queued)", "B", per_step,
            goal=Goal("<=", 1536, False)),
        Row(5, "of which the Celery message", "B", scale.message_bytes(route)),
        compared(5, f"Client.run, {plan.scale_workers:,} workers over {plan.scale_pools:,} "
                 "pools vs 1 worker", "ms", [median(among) * MS], [median(alone) * MS],
                 Goal("<=", 1.2)),
        compared(5, "`workerpool status` vs `--version` (CLI start-up)", "ms",
                 [median(clis["status"]) * MS], floor, Goal("<=", 1.25)),
        compared(5, "`workerpool pool list` vs `--version`", "ms",
                 [median(clis["pool list"]) * MS], floor, Goal("<=", 1.25)),
        compared(5, "`workerpool status --pool NAME` vs `status`", "ms",
                 [median(clis["one pool"]) * MS], [median(clis["status"]) * MS],
                 Goal("<=", 1.0)),
        Row(5, "status's read (read_overview), in process", "ms", median(overview) * MS),
        Row(5, "routing's read (read_route), in process", "ms", median(routing) * MS),
        Row(5, f"reap() of a worker's own pool ({plan.scale_workers:,} leases in all)", "ms",
            median(own) * MS),
        Row(5, f"reap() of all {plan.scale_pools:,} pools (the local stack's)", "ms",
            median(every) * MS),
        Row(5, "Redis CPU per heartbeat turn (beat, lock try, its step read: one call)",
            "us", upkeep.turn * 1e6),
        Row(5, "Redis CPU per pool reaped", "us", upkeep.reap * 1e6),
        Row(5, f"Redis busy with heartbeats and reaping ({plan.scale_workers:,} workers)", "%",
            busy * 100, goal=Goal("<=", 10, False)),
        Row(5, "heartbeat interval that keeps it at 10%", "s",
            interval * busy / 0.10 if busy > 0.10 else interval),
    ])


# -- figure 7: trust boundaries ---------------------------------------------------------


def _phase_trust(harness: Harness, plan: Plan, report: Report,
                 progress: Callable[[str], None]) -> None:
    client = harness.client()
    for name in (POOL_USERS, POOL_SAME):
        client.pools.add(name, "bench")
    progress(f"starting workers: 1 x {POOL_USERS} (scripts as users of their own), "
             f"1 x {POOL_SAME} (--script-user same), 1 x Celery baseline")
    harness.start_workers(POOL_USERS, 1, plan.concurrency, script_user=None)
    harness.start_workers(POOL_SAME, 1, plan.concurrency)
    harness.start_baseline(1, plan.concurrency)
    app = baseline.make_baseline_app(harness.url)
    runs: list[tuple[Latency, ...]] = []
    try:
        for n in range(plan.runs):
            progress(f"7/11 trust boundaries, run {n + 1}/{plan.runs}: {plan.latency_steps} "
                     "steps each with scripts as users of their own, as the worker's user, "
                     "and with one sealed variable, and as many baseline tasks")
            measures: list[Callable[[], Latency]] = [
                lambda: figures.workerpool_latency(client, POOL_USERS, plan.latency_steps),
                lambda: figures.workerpool_latency(client, POOL_SAME, plan.latency_steps),
                lambda: figures.workerpool_latency(client, POOL_USERS, plan.latency_steps,
                                                   step=SEALED_STEP),
                lambda: figures.baseline_latency(app, plan.latency_steps)]
            first = n % len(measures)  # each goes first in turn
            done = {i: measures[i]() for i in [*range(first, len(measures)), *range(first)]}
            runs.append(tuple(done[i] for i in range(len(measures))))
    finally:
        app.close()
        client.close()
    sealed_in, opened_in = figures.sealing(plan.samples * 10)
    _trust_rows(report, runs, sealed_in, opened_in, harness.pool_logins)


def _trust_rows(report: Report, runs: list[tuple[Latency, ...]], sealed_in: list[float],
                opened_in: list[float], pool_logins: bool) -> None:
    own, same, sealed, celery = range(4)

    def p50(which: int, attr: str = "to_start", phase: int | None = None) -> list[float]:
        if phase is None:
            return [median(getattr(run[which], attr)) * MS for run in runs]
        return [median([p[phase] for p in run[which].phases]) * MS for run in runs]

    users = "users of their own" if os.geteuid() == 0 else "(not root: the worker's user)"
    report.add(compared(7, f"enqueue -> start p50, scripts as {users} vs --script-user same",
                        "ms", p50(own), p50(same)))
    report.add(compared(7, "of which start: claimed -> script runs p50, vs same user", "ms",
                        p50(own, phase=2), p50(same, phase=2)))
    report.add(compared(7, "enqueue -> result p50, vs same user", "ms", p50(own, "to_result"),
                        p50(same, "to_result")))
    report.add(compared(7, "enqueue -> start p50, as deployed (scripts as users of their own) "
                        "vs plain Celery", "ms", p50(own), p50(celery)))
    report.add(compared(7, "enqueue -> start p50, one sealed variable vs none", "ms",
                        p50(sealed), p50(own)))
    report.add(Row(7, "seal one variable (client: X25519, ChaCha20-Poly1305) p50", "us",
                   median(sealed_in) * MS * MS))
    report.add(Row(7, "open it (worker) p50", "us", median(opened_in) * MS * MS))
    login = "its pool's own Redis user" if pool_logins else "the admin's URL (Redis < 7)"
    report.add(Row(7, "every figure's workers log in as", "", None, note=login))


def notes(plan: Plan, embedded: bool) -> list[str]:
    where = "an embedded redis-server started for the run" if embedded else \
        "the empty database named by WORKERPOOL_REDIS_URL"
    return [
        f"Broker: {where}; every comparison is a ratio of two measurements taken in the same "
        "run on the same server. Each figure is the median over runs; a ratio is the median "
        "of the per-run ratios.",
        "Baseline (figures 1, 2 and 4): a plain Celery task that runs bash through "
        "`subprocess`, on workers started exactly like workerpool's (`make_app`: JSON, late "
        "ack, prefetch disabled; threads pool, same concurrency, no mingle or gossip), on "
        "another queue of the same Redis, with the Redis result backend so its caller can "
        "wait for a result. The baseline runs stock Celery and kombu; workerpool's workers "
        "make two Celery-level changes: a kombu Redis transport that keeps one Redis client "
        "per channel (stock kombu builds one per publish and per ack), and task events "
        "gathered for 50 ms and published as one message (stock Celery publishes at each turn "
        "of its loop). Figure 2 also runs the baseline task with those two changes ('tuned "
        "Celery', on 2 more workers), to show how much of the comparison they account for.",
        "Figure 1 runs one step at a time on an idle pool of 2 workers x 2. Both sides run "
        "`echo $EPOCHREALTIME` in bash (a bash step; `bash -c` through `subprocess` for the "
        "baseline): 'start' is the time bash printed minus the time before `Client.run` / "
        "`send_task`; 'result' is when `StepHandle.wait()` / `AsyncResult.get()` returned. "
        "The rows below split workerpool's time with the step record's claim and end times. "
        "While it times latencies (figures 1 and 3, both sides) the bench pauses its own "
        "garbage collector, as `timeit` does, so a pause of the caller's is charged to "
        "neither side.",
        f"Figure 2: {plan.throughput_steps} `true` steps (baseline: `bash -c true` tasks) "
        "enqueued as fast as the caller can, timed until the last one has ended. Commands and "
        "CPU per step are Redis INFO and /proc deltas over the same span; Redis counts the "
        "commands a Lua script runs, and a worker's CPU includes its scripts and watchdog.",
        f"Figure 3: {POOL_B}'s p99 enqueue-to-result latency ({plan.isolation_steps} steps, "
        f"1 worker x {plan.concurrency}), each ratio against {POOL_B} idle measured just "
        f"before. 'Draining' has {plan.backlog} steps queued on {POOL_A} while its 2 workers "
        "run them: on 'same CPUs' everything shares this machine's cores, so it measures CPU "
        f"contention as much as isolation; 'CPUs apart' pins {POOL_A}'s workers (and their "
        f"scripts) to the first core and {POOL_B}'s worker, Redis and the caller to the "
        "others, as if the pools ran on machines of their own (embedded Redis only). "
        "Before each p99 the embedded Redis rewrites its append-only file, so the rewrite a "
        "10,000-step burst of writes triggers soon after (a fork of the whole dataset) falls "
        "before the measurement, not in it. "
        "'Parked' queues the backlog on a pool no worker consumes: the broker alone; the goal "
        "is judged there, where routing decides the outcome. While a backlog drains on the "
        "same 2 cores its scripts compete with pool B's for CPU, which no queue layout can "
        "avoid; plain Celery is measured in the same shape (queue A's backlog on its 2 "
        "workers, queue B on a third), and the last rows compare the two slowdowns.",
        f"Figure 4 runs a real deployment: {plan.fanout_targets} targets registered in one "
        "environment with one role, and a process file with one `worker-per-target` step "
        f"(`sleep {plan.fanout_seconds:g}`, `max_parallelism: {plan.fanout_parallelism}`) on a "
        f"pool of {plan.fanout_workers} workers of concurrency 1, submitted with "
        "`Deployments.submit` to a `workerpool server` the bench starts. Its wall time runs "
        "from submit to the end the orchestrator records on the deployment (seen by polling "
        "one field every 10 ms); 'first run start -> last run end' reads the runs' own records "
        "(claim and end times), so the difference is the orchestrator's overhead. The ideal is "
        f"{plan.fanout_targets} x {plan.fanout_seconds:g} s / {plan.fanout_workers} slots. "
        f"max_parallelism is {plan.fanout_parallelism}, more than the "
        f"{plan.fanout_workers} slots, so a run is always queued on the pool when a slot "
        f"frees; with exactly {plan.fanout_workers}, every slot waits after each run for the "
        "orchestrator to see the end and enqueue the next target, which the 'max_parallelism "
        f"{plan.fanout_workers}' rows measure. For comparison, the same "
        f"{plan.fanout_targets} scripts as individual steps enqueued at once with "
        f"`Client.run` (no orchestrator), and as plain Celery tasks (the baseline, on "
        f"{plan.fanout_workers} baseline workers of concurrency 1). The four go first in "
        "turn from run to run.",
        f"Figure 5 simulates {plan.scale_workers:,} workers (registry records, live "
        "heartbeats and the pools' live indexes, written in the documented key layout) over "
        f"{plan.scale_pools:,} pools. `Client.run` is timed on the last pool with its one "
        "simulated worker alone, then with the others added; then "
        f"{plan.scale_steps:,} steps are queued there with the real enqueue (pipelined by "
        "`StepStore.enqueue_many`), and the CLI rows are taken with them queued. CLI times "
        "are wall times of the real command in a subprocess, Python start-up included, the "
        "four commands in turn. Heartbeats and reaping are priced in Redis's own CPU time "
        "(INFO `used_cpu_user` + `used_cpu_sys` over many calls, from "
        f"{scale.CALLERS} callers at once as a cluster's workers beat at once), each simulated "
        "worker holding a running step: per heartbeat interval each worker makes one turn "
        "(the beat, its try for the pool's reaper lock, held by another, and the read of its "
        f"step, in one call); each pool is reaped at most {scale.REAPS_PER_INTERVAL} times "
        "(the lock lasts a quarter interval); the local "
        f"stack's reaper turns {scale.STACK_TURNS_PER_INTERVAL} times over every pool. The busy "
        "share is their sum over the interval, on one core (Redis runs commands on one "
        "thread).",
        "Figure 6 puts the others in proportion: what a process spawn and a Redis round trip "
        "cost on this machine.",
        "Figures 1 to 6 run scripts as the worker's own user (`--script-user same`), as the "
        "baseline's tasks run bash, so they compare the two step machineries. Figure 7 prices "
        "the trust boundaries (docs/security.md) in a run of its own: one worker x "
        f"{plan.concurrency} each on {POOL_USERS}, with the default for a root worker, scripts "
        "as users of their own (a uid per slot, dropped to through `setpriv`, every process of "
        f"the uid killed at the step's end), and on {POOL_SAME}, with `--script-user same`; "
        f"{POOL_USERS} again with one sensitive variable, which the bench seals to the pool's "
        "public key and the worker opens before the script starts; and one Celery baseline "
        f"worker. Each runs figure 1's stamping step one at a time ({plan.latency_steps} per "
        "run), and each goes first in turn. The seal and open rows time the same operation in "
        "process. Every figure's workers log in as their pool's own Redis user with their "
        "pool's key, as a deployment's do.",
        f"Figure 8 prices the pool controls on one pool ({POOL_OPS}, 2 workers x "
        f"{plan.concurrency}): figure 1's stamping step one at a time, with no cap and normal "
        "priority, and with a cap of the pool's slots (checked by every claim and end, never "
        "waited on) and steps alternately high and low, each going first in turn. The "
        "requests row counts, with Redis's MONITOR, the commands clients sent while "
        f"{max(3, plan.latency_steps // 5)} `true` steps ran one at a time (a script call "
        "counted once, the commands it runs not at all; the workers' heartbeats in the span "
        "counted too): enqueueing, taking, claiming and ending a step cost the same requests "
        "with the controls as without.",
        "Figure 9 runs the same job, `bash -c true` through `subprocess`, on workerpool and its "
        "peers, each with 4 slots on the same Redis and keys of its own: RQ (4 default forking "
        "`Worker`s, a work horse forked per job), Dramatiq (its CLI, 2 processes x "
        f"{plan.concurrency} threads, Redis broker, Results middleware on the Redis backend), "
        f"plain and tuned Celery (figure 2's baseline workers, 2 x {plan.concurrency} threads "
        f"each) and workerpool (2 workers x {plan.concurrency}, `true` steps). Latency is "
        f"enqueue -> result in the caller's hands, {plan.latency_steps} jobs one at a time, each "
        "waited for as its own API waits, without polling: `StepHandle.wait()`, "
        "`AsyncResult.get()` (pub/sub), RQ 2's `Job.latest_result(timeout=...)` (XREAD BLOCK "
        "on the job's result stream) and Dramatiq's `get_result(block=True)` (BRPOPLPUSH). "
        f"Throughput is {plan.throughput_steps} jobs enqueued one after another by one caller, "
        "timed until every result is stored (workerpool: until no step is queued or running; "
        "the others: until each result key exists). Dramatiq's Redis consumer polls for "
        "messages with a backoff of up to 1 s when idle, as it does by default; RQ and Celery "
        "block on their queues. RQ's workers log at WARNING, as the Celery workers do (RQ's "
        "default writes two lines a job; Dramatiq's, none). The systems go first "
        "in turn from run to run; the goals compare workerpool with the best peer of each run "
        "(the lowest p50, the highest throughput) and with tuned Celery.",
        f"Figure 10 prices Redis Sentinel: one sentinel (`redis-server --sentinel`, the binary "
        "the embedded Redis runs) monitors the bench's own redis-server, and figure 1's "
        f"stamping step runs one at a time ({plan.latency_steps} per run) on two pools of one "
        f"worker x {plan.concurrency}: on {sentinel.POOL_SENTINEL} both the caller and the "
        "worker hold a `sentinel://127.0.0.1:PORT` URL with WORKERPOOL_REDIS_SENTINEL_MASTER "
        "set (each new connection asks the sentinel for the master first), on "
        f"{sentinel.POOL_DIRECT} the direct `redis://` URL of the same master; each goes "
        "first in turn. The master has no replica: the figure prices reaching it through "
        "Sentinel, not a failover (tests/faults/test_sentinel_failover.py runs one).",
    ]


# -- figure 8: pool operations ----------------------------------------------------------


def _phase_operations(harness: Harness, plan: Plan, report: Report,
                      progress: Callable[[str], None]) -> None:
    """One pool, the same workers: steps one at a time with no cap and normal priority, and
    with a cap (of the workers' slots, so it is checked on every claim but never waits) and
    steps alternately high and low, in turn."""
    client = harness.client()
    client.pools.add(POOL_OPS, "bench")
    workers = 2
    harness.start_workers(POOL_OPS, workers, plan.concurrency)
    plain: list[Latency] = []
    operated: list[Latency] = []
    high, low = (dataclasses.replace(figures.STAMP_STEP, priority=p) for p in ("high", "low"))

    def without() -> None:
        client.pools.edit(POOL_OPS, max_running=0)
        plain.append(figures.workerpool_latency(client, POOL_OPS, plan.latency_steps))

    def with_them() -> None:
        client.pools.edit(POOL_OPS, max_running=workers * plan.concurrency)
        half = max(1, plan.latency_steps // 2)
        both = [figures.workerpool_latency(client, POOL_OPS, half, step=step)
                for step in (high, low)]
        operated.append(Latency([t for lat in both for t in lat.to_start],
                                [t for lat in both for t in lat.to_result]))

    requests: list[tuple[float, float]] = []
    count = max(3, plan.latency_steps // 5)
    try:
        for n in range(plan.runs):
            progress(f"8/11 pool operations, run {n + 1}/{plan.runs}: {plan.latency_steps} steps "
                     f"one at a time on {POOL_OPS}, without and with a cap and priorities")
            sides = [without, with_them] if n % 2 == 0 else [with_them, without]
            for measure in sides:
                measure()
        client.pools.edit(POOL_OPS, max_running=0)
        bare = figures.requests_per_step(harness.raw, client,
                                         figures.on_pool(figures.TRUE_STEP, POOL_OPS), count)
        client.pools.edit(POOL_OPS, max_running=workers * plan.concurrency)
        ops = figures.requests_per_step(
            harness.raw, client,
            dataclasses.replace(figures.TRUE_STEP, pool=POOL_OPS, priority="low"), count)
        requests.append((ops, bare))
    finally:
        client.close()
    report.add(compared(8, "enqueue -> start p50, with a cap and priorities vs without", "ms",
                        [median(lat.to_start) * MS for lat in operated],
                        [median(lat.to_start) * MS for lat in plain], Goal("<=", 1.1)))
    report.add(compared(8, "enqueue -> result p50, with a cap and priorities vs without", "ms",
                        [median(lat.to_result) * MS for lat in operated],
                        [median(lat.to_result) * MS for lat in plain]))
    report.add(compared(8, "requests Redis receives per step (MONITOR; a script call is one)",
                        "", [r[0] for r in requests], [r[1] for r in requests],
                        Goal("<=", 1.0)))
