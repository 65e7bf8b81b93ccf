"""``/metrics``: every pool's figures in Prometheus's text format, read from Redis at each scrape.

The server keeps nothing: each scrape reads the snapshot (``core/snapshot.py``) and the pools'
tallies (``core/tallies.py``: the counters and the histogram Redis keeps), two round trips in
all, so any number of servers give the same numbers. ``families`` builds the series from what
was read, a pure function. The series and the autoscaling signal: ``docs/operations.md``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import redis
from prometheus_client import generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector, CollectorRegistry

from workerpool.core import keys, tallies
from workerpool.core.pools import ordered
from workerpool.core.snapshot import Snapshot, read_snapshot
from workerpool.core.steps import TERMINAL
from workerpool.core.tallies import Tallies
from workerpool.core.workers import DRAINING, HEALTHY, OFFLINE, STARTING, UNHEALTHY

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
SIGNAL = "workerpool_slots_wanted"  # the autoscaling signal (deploy/keda-scaledobject.yaml)
WORKER_STATES = (STARTING, HEALTHY, UNHEALTHY, DRAINING, OFFLINE)
ENDED_STATES = tuple(sorted(TERMINAL))

Reading = tuple[Snapshot, dict[str, Tallies], float]  # what was read, and Redis's clock


@dataclass(frozen=True)
class Section:
    """One pool's (or the built-in worker's) figures, from a snapshot."""

    slug: str
    queued: int
    without_message: int
    running: int
    dropped: int
    dead: int
    workers: dict[str, int]  # worker state -> workers in it
    healthy_slots: int  # the Healthy workers' concurrency
    free_slots: int  # ... less the steps they run
    paused: bool = False
    max_running: int = 0

    @property
    def slots_wanted(self) -> float:
        return slots_wanted(self.queued, self.running, self.healthy_slots, self.paused,
                            self.max_running)


def slots_wanted(queued: int, running: int, healthy_slots: int, paused: bool = False,
                 max_running: int = 0) -> float:
    """The autoscaling signal: the slots the pool's steps want (running ones, and queued ones
    unless the pool is paused, at most its cap) over its Healthy workers' slots. With no
    healthy slot, the slots wanted themselves: finite (a scaler's arithmetic survives it),
    above 0 exactly when work waits (a scaler starts the first worker), and never more
    workers than steps."""
    wanted = running + (0 if paused else queued)
    if max_running:
        wanted = min(wanted, max_running)
    return wanted / healthy_slots if healthy_slots else float(wanted)


def section(snap: Snapshot, slug: str) -> Section:
    """The figures of pool *slug* (``builtin``: the built-in worker) in *snap*."""
    workers = snap.workers_in(slug)
    healthy = [w for w in workers if w.state == HEALTHY]
    running_on = [w.heartbeat.running if w.heartbeat else 0 for w in healthy]
    counts = snap.counts(slug)
    dropped, dead = snap.faults.get(slug, (0, 0))
    pool = snap.pools.get(slug)
    return Section(
        slug=slug, queued=counts.records, without_message=counts.without_message,
        running=snap.running_in(slug), dropped=dropped, dead=dead,
        workers=dict(Counter(w.state for w in workers)),
        healthy_slots=sum(w.concurrency for w in healthy),
        free_slots=sum(max(0, w.concurrency - n) for w, n in zip(healthy, running_on,
                                                                    strict=True)),
        paused=bool(pool and pool.paused), max_running=pool.max_running if pool else 0)


# Per pool, one value each: name, help, the value of a section (and its tallies, at a time).
GAUGES: tuple[tuple[str, str, Callable[[Section, Tallies, float], float]], ...] = (
    ("workerpool_queued_steps", "Steps of the pool in state Queued (whatever holds their "
     "message: its queue, a worker that popped it, a hand-back).", lambda s, t, now: s.queued),
    ("workerpool_queued_steps_without_message", "Queued steps whose message is neither in "
     "the pool's queue nor held by a worker (purged or lost; the reaper pushes it again).",
     lambda s, t, now: s.without_message),
    ("workerpool_oldest_queued_step_age_seconds", "Seconds the pool's oldest Queued step has "
     "waited since it was enqueued (0: none waits).", lambda s, t, now: t.oldest_age(now)),
    ("workerpool_running_steps", "Steps running on the pool's workers.",
     lambda s, t, now: s.running),
    ("workerpool_free_slots", "The Healthy workers' slots (their concurrency) not running a "
     "step.", lambda s, t, now: s.free_slots),
    ("workerpool_paused", "1 while the pool is paused (its steps wait, none starts), else 0.",
     lambda s, t, now: int(s.paused)),
    ("workerpool_max_running", "The pool's cap on steps running at once (0: none).",
     lambda s, t, now: s.max_running),
    (SIGNAL, "The autoscaling signal: slots the pool's steps want (running, and queued unless "
     "paused, at most the cap) over its Healthy workers' slots; with none, the slots wanted.",
     lambda s, t, now: s.slots_wanted),
    ("workerpool_dead_letters", "Messages in the pool's dead letters (they crashed a worker's "
     "consumer twice).", lambda s, t, now: s.dead),
)


def families(snap: Snapshot, found: dict[str, Tallies], now: float) -> list[Metric]:
    """Every series of every pool and of the built-in worker (label ``pool``: the slug)."""
    slugs = [p.slug for p in ordered(snap.pools.values())] + [keys.BUILTIN_POOL]
    sections = [(section(snap, slug), found.get(slug, Tallies())) for slug in slugs]
    result: list[Metric] = []
    for name, text, value in GAUGES:
        gauge = GaugeMetricFamily(name, text, labels=["pool"])
        for sec, tally in sections:
            gauge.add_metric([sec.slug], value(sec, tally, now))
        result.append(gauge)
    return [*result, _workers(sections), _dropped(sections), _ended(sections),
            _durations(sections)]


def _by_state(family: GaugeMetricFamily | CounterMetricFamily, states: tuple[str, ...],
              sections: list[tuple[Section, Tallies]],
              count: Callable[[Section, Tallies], dict[str, int]]) -> Metric:
    """*family* (labels pool and state) with every state of every pool, 0 where none."""
    for sec, tally in sections:
        found = count(sec, tally)
        for state in states:
            family.add_metric([sec.slug, state], found.get(state, 0))
    return family


def _workers(sections: list[tuple[Section, Tallies]]) -> Metric:
    return _by_state(GaugeMetricFamily("workerpool_workers", "The pool's registered workers by "
                                       "state (Offline: its heartbeat lapsed).",
                                       labels=["pool", "state"]),
                     WORKER_STATES, sections, lambda sec, _: sec.workers)


def _dropped(sections: list[tuple[Section, Tallies]]) -> Metric:
    dropped = CounterMetricFamily("workerpool_dropped_messages", "Malformed messages the "
                                  "pool's workers dropped from its queue.", labels=["pool"])
    for sec, _ in sections:
        dropped.add_metric([sec.slug], sec.dropped)
    return dropped


def _ended(sections: list[tuple[Section, Tallies]]) -> Metric:
    return _by_state(CounterMetricFamily("workerpool_steps_ended", "Steps of the pool that "
                                         "ended, by terminal state.", labels=["pool", "state"]),
                     ENDED_STATES, sections, lambda _, tally: tally.ended)


def _durations(sections: list[tuple[Section, Tallies]]) -> Metric:
    durations = HistogramMetricFamily(
        "workerpool_step_duration_seconds", "Running time of the pool's ended steps that ran, "
        "from the claim to the end.", labels=["pool"])
    for sec, tally in sections:
        durations.add_metric([sec.slug], tally.cumulative(), tally.duration_sum)
    return durations


# --- reading and exposing ------------------------------------------------------------------


def read(client: redis.Redis) -> Reading:
    """What a scrape shows: the snapshot, then the tallies of its pools (two round trips)."""
    snap = read_snapshot(client, detail=True)
    found, now = tallies.read(client, [*snap.pools, keys.BUILTIN_POOL])
    return snap, found, now


class PoolsCollector(Collector):
    """Collects by calling *reader* (``read`` on a connection) at each scrape: no state here."""

    def __init__(self, reader: Callable[[], Reading]) -> None:
        self.reader = reader

    def collect(self) -> Iterator[Metric]:
        yield from families(*self.reader())


def registry(reader: Callable[[], Reading]) -> CollectorRegistry:
    """A registry of its own (not the process-wide default) holding the pools' collector."""
    made = CollectorRegistry(auto_describe=False)
    made.register(PoolsCollector(reader))
    return made


def exposition(made: CollectorRegistry) -> bytes:
    """The text a scrape gets; raises what reading Redis raised."""
    return generate_latest(made)
