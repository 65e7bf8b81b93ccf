"""The WORKERS column of ``status``: a pool's workers counted by state, in a fixed order."""

from __future__ import annotations

from workerpool.cli.workers import workers_cell
from workerpool.core.overview import WorkerCounts


def test_live_workers_by_state_then_the_offline_rest():
    counts = WorkerCounts(registered=5, live={"Draining": 1, "Healthy": 2, "Unhealthy": 1})
    assert workers_cell(counts) == "2 Healthy, 1 Unhealthy, 1 Draining, 1 Offline"
    assert (counts.healthy, counts.offline) == (2, 1)


def test_no_worker_is_a_dash_and_a_state_never_seen_before_comes_last():
    assert workers_cell(WorkerCounts(0)) == "-"
    assert workers_cell(WorkerCounts(1, {"Resting": 1})) == "1 Resting"


def test_offline_is_never_negative_when_a_record_went_between_reads():
    assert WorkerCounts(registered=1, live={"Healthy": 2}).offline == 0
