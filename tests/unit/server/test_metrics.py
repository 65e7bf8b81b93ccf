"""The series of ``/metrics`` built from a snapshot and tallies: pure, no Redis."""

from __future__ import annotations

import math

import pytest
from promtext import render, samples, types, value

from workerpool.core import tallies
from workerpool.core.pools import Pool
from workerpool.core.snapshot import Lease, QueueCounts, Snapshot
from workerpool.core.tallies import DURATION_BUCKETS, Tallies
from workerpool.core.workers import Heartbeat, WorkerInfo
from workerpool.server.metrics import SIGNAL, section, slots_wanted


def worker(name: str, pool: str, state: str | None, concurrency: int = 1,
           running: int = 0) -> WorkerInfo:
    beat = None if state is None else Heartbeat(time=1.0, state=state, running=running)
    return WorkerInfo(name=name, pool=pool, instance=name, concurrency=concurrency,
                      heartbeat=beat)


def lease(step_id: str, pool: str) -> Lease:
    return Lease(step_id=step_id, worker="w", pool=pool, started_at=1.0, step_name="")


POOLS = {"web": Pool(name="Web", slug="web", is_default=True),
         "db": Pool(name="Db", slug="db", paused=True, max_running=2)}
SNAP = Snapshot(
    pools=POOLS, builtin_enabled=True,
    workers=(worker("w1", "web", "Healthy", concurrency=4, running=1),
             worker("w2", "web", "Healthy", concurrency=2, running=2),
             worker("w3", "web", "Draining", concurrency=8, running=1),
             worker("w4", "web", "Unhealthy", concurrency=3),
             worker("w5", "web", None), worker("w6", "db", "Starting")),
    leases=(lease("web~a", "web"), lease("web~b", "web"), lease("web~c", "web"),
            lease("db~d", "db")),
    faults={"web": (2, 1)},
    queued={"web": QueueCounts(records=5, messages=3, held=1), "db": QueueCounts(7, 7, 0),
            "builtin": QueueCounts(0, 0, 0)})


def test_a_section_counts_workers_by_state_and_only_healthy_slots() -> None:
    web = section(SNAP, "web")
    assert web.workers == {"Healthy": 2, "Draining": 1, "Unhealthy": 1, "Offline": 1}
    assert (web.healthy_slots, web.free_slots) == (6, 3)  # (4 - 1) + (2 - 2)
    assert (web.queued, web.without_message, web.running) == (5, 1, 3)
    assert web.slots_wanted == pytest.approx(8 / 6)
    db = section(SNAP, "db")
    assert (db.paused, db.max_running, db.healthy_slots, db.running) == (True, 2, 0, 1)
    assert db.slots_wanted == 1.0  # paused: only its running step wants a slot


@pytest.mark.parametrize(("queued", "running", "slots", "paused", "cap", "wanted"), [
    (6, 2, 4, False, 0, 2.0),
    (0, 0, 4, False, 0, 0.0),
    (3, 0, 0, False, 0, 3.0),  # no healthy slot: the slots wanted themselves, finite
    (0, 0, 0, False, 0, 0.0),  # nothing to do and no one to do it: no worker wanted
    (5, 1, 2, True, 0, 0.5),  # paused: queued steps cannot start
    (10, 1, 2, False, 3, 1.5),  # capped: no more than 3 can run whatever the workers
])
def test_the_autoscaling_signal(queued: int, running: int, slots: int, paused: bool, cap: int,
                                wanted: float) -> None:
    got = slots_wanted(queued, running, slots, paused, cap)
    assert got == pytest.approx(wanted) and math.isfinite(got)


def test_every_series_of_every_pool_parses_with_its_value_and_type() -> None:
    found = {"web": Tallies(ended={"Success": 4, "Failed": 1},
                            buckets={"0.1": 1, "5.0": 2, "+Inf": 1}, duration_sum=4000.5,
                            duration_count=4, oldest_queued_at=90.0)}
    text = render(SNAP, found, now=100.0)
    expected = {"workerpool_queued_steps": 5, "workerpool_queued_steps_without_message": 1,
                "workerpool_running_steps": 3, "workerpool_free_slots": 3,
                "workerpool_paused": 0, "workerpool_max_running": 0,
                "workerpool_dead_letters": 1, "workerpool_dropped_messages_total": 2,
                "workerpool_oldest_queued_step_age_seconds": 10.0}
    assert {name: value(text, name, pool="web") for name in expected} == expected
    assert value(text, SIGNAL, pool="web") == pytest.approx(8 / 6)
    assert value(text, "workerpool_paused", pool="db") == 1
    assert value(text, "workerpool_workers", pool="web", state="Offline") == 1
    assert value(text, "workerpool_workers", pool="db", state="Starting") == 1
    assert value(text, "workerpool_steps_ended_total", pool="web", state="Success") == 4
    assert value(text, "workerpool_steps_ended_total", pool="db", state="Success") == 0
    assert value(text, "workerpool_step_duration_seconds_bucket", pool="web", le="0.1") == 1
    assert value(text, "workerpool_step_duration_seconds_bucket", pool="web", le="1.0") == 1
    assert value(text, "workerpool_step_duration_seconds_bucket", pool="web", le="5.0") == 3
    assert value(text, "workerpool_step_duration_seconds_bucket", pool="web", le="+Inf") == 4
    assert value(text, "workerpool_step_duration_seconds_count", pool="web") == 4
    assert value(text, "workerpool_step_duration_seconds_sum", pool="web") == 4000.5
    assert {name for name, labels in samples(text) if ("pool", "builtin") in labels} >= \
        {"workerpool_queued_steps", SIGNAL, "workerpool_steps_ended_total"}
    kinds = types(text)
    assert (kinds["workerpool_steps_ended"], kinds["workerpool_dropped_messages"],
            kinds["workerpool_step_duration_seconds"], kinds[SIGNAL]) == \
        ("counter", "counter", "histogram", "gauge")


def test_tallies_parse_the_scripts_flat_replies() -> None:
    parsed = tallies.parse(["Success", "3", "Cancelled", "1"],
                           ["le:0.5", "2", "le:+Inf", "1", "sum", "7201.25", "count", "3"],
                           "12.5")
    assert parsed == Tallies(ended={"Success": 3, "Cancelled": 1},
                             buckets={"0.5": 2, "+Inf": 1}, duration_sum=7201.25,
                             duration_count=3, oldest_queued_at=12.5)
    assert parsed.cumulative()[0] == ("0.1", 0)
    assert parsed.cumulative()[1] == ("0.5", 2)
    assert parsed.cumulative()[-1] == ("+Inf", 3)
    assert parsed.oldest_age(20.0) == 7.5
    assert tallies.parse([], [], "").oldest_age(20.0) == 0.0


def test_the_buckets_are_increasing_and_spelled_as_prometheus_does() -> None:
    bounds = [float(b) for b in DURATION_BUCKETS]
    assert bounds == sorted(bounds) and len(set(bounds)) == len(bounds)
    assert all(b == repr(float(b)) for b in DURATION_BUCKETS)
    assert tallies.BUCKET_BOUNDS.split(",") == list(DURATION_BUCKETS)
