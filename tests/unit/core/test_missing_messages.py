"""Queued steps without a message: the counts status shows, the task ids read from a queue and
from kombu's unacked hash, and which steps the reaper notes as missing and pushes again. No
Redis."""

from __future__ import annotations

import json

import pytest
from promtext import render, value

from workerpool.cli.workers import queued_cell
from workerpool.core import messages
from workerpool.core.leases import (
    NOTE_LIFETIME,
    Verdict,
    Waiting,
    held_task_id,
    judge,
    task_id_of,
    without_messages,
)
from workerpool.core.pools import Pool
from workerpool.core.snapshot import QueueCounts, Snapshot, status_view, without_message
from workerpool.server import web


@pytest.mark.parametrize(("records", "in_queue", "held", "missing"), [
    (0, 0, 0, 0),
    (3, 0, 0, 3),  # purged: three records, no message anywhere
    (3, 3, 0, 0),
    (3, 1, 1, 1),
    (3, 2, 1, 0),
    (1, 0, 2, 0),  # a worker holds messages of steps it already claimed: never below 0
    (0, 5, 0, 0),  # messages of steps that ended (hand-pushed, stale): never below 0
])
def test_without_message_counts_records_beyond_the_messages_present(
        records: int, in_queue: int, held: int, missing: int) -> None:
    assert without_message(records, in_queue, held) == missing
    assert QueueCounts(records=records, messages=in_queue, held=held).without_message == missing


def message(step_id: str, attempt: int = 0) -> str:
    return messages.build(step_id, attempt, "workerpool.pool.p", messages.label("", "P", step_id))


def test_task_ids_are_read_from_queue_entries_and_held_messages() -> None:
    assert task_id_of(message("p~a")) == "p~a"
    assert task_id_of(message("p~a", 1)) == "p~a-r1"
    # kombu's unacked hash holds [message, exchange, routing key]; a restored or held copy is
    # the same message re-serialized, perhaps with "redelivered" set
    held = json.loads(message("p~b"))
    held["headers"]["redelivered"] = True
    assert held_task_id(json.dumps([held, "", "workerpool.pool.p"])) == "p~b"
    assert task_id_of(json.dumps(held)) == "p~b"


@pytest.mark.parametrize("entry", [
    "", "not json", "[1, 2]", '{"headers": []}', '{"headers": {"id": 5}}', "[" * 100_000, "null",
])
def test_entries_that_are_no_task_message_name_no_task(entry: str) -> None:
    assert task_id_of(entry) is None
    assert held_task_id(entry) is None
    assert held_task_id(json.dumps([entry])) is None


def waiting(step_id: str, attempt: int = 0, missing_since: str = "") -> Waiting:
    return Waiting(step_id=step_id, attempt=attempt, queue="workerpool.pool.p",
                   message=message(step_id, attempt), queued_at=10.0,
                   missing_since=missing_since)


def test_a_step_is_without_its_message_when_no_copy_of_its_attempt_is_present() -> None:
    there, gone, retried = waiting("p~there"), waiting("p~gone"), waiting("p~retried", 1)
    # p~retried's first message is there, but it waits for the message of its attempt 1
    assert without_messages([there, gone, retried], {"p~there", "p~retried"}) == \
        [gone, retried]
    assert without_messages([there, retried], {"p~there", "p~retried-r1"}) == []
    assert without_messages([], set()) == []


def test_a_missing_message_is_noted_first_and_pushed_once_a_later_look_confirms_it() -> None:
    grace = 2.0
    first = judge([waiting("p~a")], set(), now=100.0, grace=grace)
    assert (first.push, [w.step_id for w in first.note], first.unnote) == ([], ["p~a"], [])
    # as noted by that look: too early to confirm (a popped message may not be held yet)
    noted = waiting("p~a", missing_since="0 100.0")
    assert judge([noted], set(), now=101.9, grace=grace) == Verdict([], [], [])
    confirmed = judge([noted], set(), now=102.0, grace=grace)
    assert (confirmed.push, confirmed.note, confirmed.unnote) == ([noted], [], [noted])
    # found since (it was on its way to a worker): the note goes, nothing is pushed
    assert judge([noted], {"p~a"}, now=105.0, grace=grace) == Verdict([], [], [noted])


@pytest.mark.parametrize("note", [
    "0 10.0",  # stale: no look came by for NOTE_LIFETIME graces, so it proves nothing now
    "0 200.0",  # from the future (another clock): not trusted
    "1 99.0",  # of another attempt: that message is not this one
    "garbage", "0 soon", " 99.0",
])
def test_a_note_that_proves_nothing_is_noted_again_not_pushed(note: str) -> None:
    step = waiting("p~a", missing_since=note)
    assert NOTE_LIFETIME * 2.0 < 100.0 - 10.0
    assert judge([step], set(), now=100.0, grace=2.0) == Verdict([], [step], [])


def snapshot_with(counts: QueueCounts) -> Snapshot:
    pool = Pool(name="Parked", slug="parked", description="", is_default=True)
    return Snapshot(pools={"parked": pool}, builtin_enabled=True, workers=(),
                    leases=(),
                    queued={"parked": counts, "builtin": QueueCounts(0, 0, 0)})


def test_status_page_and_metrics_count_queued_records_and_those_without_a_message() -> None:
    purged = snapshot_with(QueueCounts(records=3, messages=0, held=0))
    section = status_view(purged)["pools"][0]  # type: ignore[index]
    assert (section["queued"], section["without_message"]) == (3, 3)
    assert queued_cell(purged.counts("parked")) == "3 (3 without a message)"
    assert "3 queued, 3 without a message" in web.render_html(purged, now=100.0)
    metrics = render(purged)
    assert value(metrics, "workerpool_queued_steps", pool="parked") == 3
    assert value(metrics, "workerpool_queued_steps_without_message", pool="parked") == 3
    assert value(metrics, "workerpool_queued_steps_without_message", pool="builtin") == 0

    healthy = snapshot_with(QueueCounts(records=2, messages=1, held=1))
    assert queued_cell(healthy.counts("parked")) == "2"
    html = web.render_html(healthy, now=100.0)
    assert "2 queued</span>" in html and "without a message" not in html
