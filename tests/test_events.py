"""Task events for Flower: every step's three events are published, gathered into few messages."""

from __future__ import annotations

import base64
import json

from conftest import wait_for

from workerpool import ScriptStep
from workerpool.messages import task_id

STEPS = 6


def test_every_steps_task_events_are_published_in_batches(client, raw, start_worker):
    client.pools.add("Events")
    start_worker("Events")
    channel_prefix = f"/{raw.connection_pool.connection_kwargs.get('db', 0)}.celeryev/"
    pubsub = raw.pubsub(ignore_subscribe_messages=True)
    pubsub.psubscribe("*celeryev/task*")
    batches: list[list[dict[str, object]]] = []

    def collect() -> int:
        while (message := pubsub.get_message(timeout=0.05)) is not None:
            if str(message["channel"]).startswith(channel_prefix):
                body = json.loads(base64.b64decode(json.loads(message["data"])["body"]))
                batches.append(body if isinstance(body, list) else [body])
        return sum(len(batch) for batch in batches)

    handles = [client.run(ScriptStep(script="sleep 0.1", pool="Events")) for _ in range(STEPS)]
    for handle in handles:
        assert handle.wait(30).state == "Success"
    wait_for(lambda: collect() >= 3 * STEPS, 10, "every step's task events")
    pubsub.close()

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
    pubsub = raw.pubsub(ignore_subscribe_messages=True)
    pubsub.psubscribe("*celeryev/task*")
    seen: list[str] = []

    def collect() -> list[str]:
        while (message := pubsub.get_message(timeout=0.05)) is not None:
            body = json.loads(base64.b64decode(json.loads(message["data"])["body"]))
            seen.extend(str(e["type"]) for e in (body if isinstance(body, list) else [body]))
        return seen

    handle = client.run(ScriptStep(script="true", pool="Events"))
    assert handle.wait(30).state == "Success"
    worker.proc.terminate()  # at once: the succeeded event is at most just gathered
    assert worker.proc.wait(30) == 0
    wait_for(lambda: "task-succeeded" in collect(), 5, "the last step's succeeded event")
    pubsub.close()
