"""Task events for Flower: every step's three events are published, gathered into few messages."""

from __future__ import annotations

from conftest import TaskEvents, wait_for

from workerpool import ScriptStep
from workerpool.core.messages import task_id

STEPS = 6


def test_every_steps_task_events_are_published_in_batches(client, raw, start_worker):
    client.pools.add("Events")
    start_worker("Events")
    events = TaskEvents(raw)
    handles = [client.run(ScriptStep(script="sleep 0.1", pool="Events")) for _ in range(STEPS)]
    for handle in handles:
        assert handle.wait(30).state == "Success"
    wait_for(lambda: len(events.collect()) >= 3 * STEPS, 10, "every step's task events")
    events.close()
    batches = events.batches

    seen: dict[str, list[str]] = {}
    for batch in batches:
        for event in batch:
            seen.setdefault(str(event["uuid"]), []).append(str(event["type"]))
    assert seen == {task_id(h.id, 0): ["task-received", "task-started", "task-succeeded"]
                    for h in handles}
    # Gathered for 50 ms: a step's received and started events (a few ms apart) share a
    # message, with the previous step's succeeded event; stock Celery sends nearly one message
    # per event on an idle worker.
    assert any({"task-received", "task-started"} <= {str(e["type"]) for e in batch}
               for batch in batches)
    assert len(batches) <= 2 * STEPS, [len(batch) for batch in batches]


def test_events_gathered_when_the_worker_stops_are_still_published(client, raw, start_worker):
    client.pools.add("Events")
    worker = start_worker("Events")
    events = TaskEvents(raw)
    handle = client.run(ScriptStep(script="true", pool="Events"))
    assert handle.wait(30).state == "Success"
    worker.proc.terminate()  # at once: the succeeded event is at most just gathered
    assert worker.proc.wait(30) == 0
    wait_for(lambda: any(e["type"] == "task-succeeded" for e in events.collect()), 5,
             "the last step's succeeded event")
    events.close()
