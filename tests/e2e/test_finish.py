"""StepStore.finish: the one way a step ends, with its last log lines, exactly once."""

from __future__ import annotations

from workerpool import ScriptStep
from workerpool.core import keys
from workerpool.core.routing import Route
from workerpool.core.steps import RUNNING, SUCCESS
from workerpool.core.variables import Masker
from workerpool.worker.step.steplog import StepLog


def test_a_retried_finish_stores_the_last_lines_once(client):
    client.pools.add("Parked")
    pool = client.snapshot().pools["parked"]
    step_id = client.store.enqueue(ScriptStep(script="true", pool="Parked"),
                                   Route(pool.queue, pool.slug, pool.name), 3600, 3600)
    client.redis.hset(keys.step(step_id), mapping={"state": RUNNING,
                                                             "instance": "i1"})
    lines = [{"t": "1.0", "s": "stdout", "x": "last words"}]
    for _ in range(2):  # the second is a retry whose first reply was lost
        assert client.store.finish(step_id, SUCCESS, expected=(RUNNING,), instance="i1",
                                   exit_code=0, lines=lines)
    result = client.step(step_id).result()
    assert result.state == SUCCESS
    assert [e.text for e in result.log] == ["last words"]
    # A refused finish (its step ended otherwise meanwhile, e.g. WorkerLost) changes nothing
    # but still keeps its script's last lines, as a flush would (docs/reliability.md).
    late = [{"t": "2.0", "s": "stdout", "x": "late words"}]
    assert not client.store.finish(step_id, "Failed", expected=(RUNNING,), instance="i2",
                                   lines=late)
    after = client.step(step_id).result()
    assert after.state == SUCCESS
    assert [e.text for e in after.log] == ["last words", "late words"]


def test_a_retried_claim_finds_its_own_claim_and_a_redelivery_does_not(client):
    """A claim applied in Redis whose reply was lost with the connection is retried with the
    same token: it is the worker's. A second delivery of the message claims with a new token
    and is discarded, so the step runs once."""
    client.pools.add("Parked")
    pool = client.snapshot().pools["parked"]
    step_id = client.store.enqueue(ScriptStep(script="true", pool="Parked"),
                                   Route(pool.queue, pool.slug, pool.name), 3600, 3600)
    first = client.leases.claim(step_id, 0, "w1", "i1", "parked", "token-a")
    assert first.outcome == "ok" and first.record["state"] == RUNNING
    retried = client.leases.claim(step_id, 0, "w1", "i1", "parked", "token-a")
    assert retried.outcome == "ok" and retried.record["started_at"] == first.record["started_at"]
    redelivered = client.leases.claim(step_id, 0, "w1", "i1", "parked", "token-b")
    assert redelivered.outcome == "stale"
    assert client.leases.claim(step_id, 0, "w2", "i2", "parked", "token-c").outcome == "stale"


def test_a_log_batch_sent_again_after_a_lost_reply_is_stored_once(client):
    """A batch of a running step's lines that Redis applied, but whose reply was lost with the
    connection (a reset during a network cut), is sent again as it was: it is stored once."""
    client.pools.add("Parked")
    pool = client.snapshot().pools["parked"]
    step_id = client.store.enqueue(ScriptStep(script="true", pool="Parked"),
                                   Route(pool.queue, pool.slug, pool.name), 3600, 3600)
    steplog = StepLog(client.redis, step_id, Masker(()), max_lines=100, max_line_bytes=100)
    steplog.append("stdout", "one")
    sent = list(steplog._pending)
    assert steplog.flush()
    steplog._pending, steplog._batches = sent, steplog._batches - 1  # as if the reply was lost
    assert steplog.flush()
    steplog.append("stdout", "two")
    assert steplog.flush()
    assert [e.text for e in client.step(step_id).logs()] == ["one", "two"]
    # Another writer of the same step (its next attempt, elsewhere) numbers its own batches.
    again = StepLog(client.redis, step_id, Masker(()), max_lines=100, max_line_bytes=100)
    again.append("stdout", "three")
    assert again.flush()
    assert [e.text for e in client.step(step_id).logs()] == ["one", "two", "three"]
