"""A step's message is acked once its script starts: however long the step runs, the broker
has nothing of it to redeliver.

kombu's Redis transport keeps each unacked message in ``unacked`` with its delivery time in
``unacked_index``, and redelivers those older than the visibility timeout. A worker acks a step's
message as soon as the claimed step's script starts; from then on the step's record decides
what happens to it. The test runs a step for longer than the visibility timeout, then runs
kombu's own redelivery pass: nothing of the step is redelivered, while a copy of its message
left unacked (the control) is, by the same pass; that copy reaches the worker afterwards and is
discarded by the claim, so the script still runs once.
"""

from __future__ import annotations

import json
import time

from conftest import wait_for
from kombu import Connection

from workerpool import ScriptStep
from workerpool.core import keys, messages
from workerpool.worker.celery import transport

VISIBILITY = 1.0  # seconds; less than the tests' two heartbeat intervals (0.5 s each)


def test_a_step_longer_than_the_visibility_timeout_is_not_redelivered(
        client, start_worker, raw, redis_url, tmp_path):
    client.pools.add("Slow Pool")
    worker = start_worker("Slow Pool", extra_env={
        "WORKERPOOL_VISIBILITY_TIMEOUT": str(VISIBILITY)})
    runs, release = tmp_path / "runs", tmp_path / "release"
    handle = client.run(ScriptStep(
        pool="Slow Pool",
        script=f"echo ran >> {runs}\nwhile [ ! -e {release} ]; do sleep 0.05; done\n"))
    tag = messages.task_id(handle.id, 0)
    wait_for(runs.exists, 30, "the script to start")
    kombu = keys.kombu_keys("slow-pool")  # the pool's workers keep their unacked messages here
    wait_for(lambda: raw.hget(kombu["unacked_key"], tag) is None, 10,
             "the running step's message to be acked")
    assert raw.zscore(kombu["unacked_index_key"], tag) is None
    began = time.time()
    wait_for(lambda: time.time() - began > 2 * VISIBILITY, 30, "two visibility timeouts")

    # The control: a copy of the step's message, delivered long ago and never acked.
    queue = "workerpool.pool.slow-pool"
    payload = json.loads(messages.for_record(handle.id, 0, raw.hgetall(keys.step(handle.id))))
    payload["properties"]["delivery_tag"] = "control"
    raw.hset(kombu["unacked_key"], "control", json.dumps([payload, "", queue]))
    raw.zadd(kombu["unacked_index_key"], {"control": time.time() - 10 * VISIBILITY})
    assert raw.llen(queue) == 0

    # As the pool's workers restore it: their transport, which knows the queue's lists.
    with Connection(redis_url, transport=transport.NAME,
                    transport_options={"visibility_timeout": VISIBILITY,
                                       "priority_steps": list(keys.PRIORITY_STEPS),
                                       **kombu}) as conn:
        conn.default_channel.qos.restore_visible(num=100, interval=1)

    assert raw.zscore(kombu["unacked_index_key"], "control") is None  # redelivered...
    assert raw.llen(queue) == 1  # ...onto the pool's queue: the pass works
    assert client.step(handle.id).result().state == "Running"

    release.touch()
    result = handle.wait(timeout=30)
    assert (result.state, result.worker) == ("Success", worker.name)
    # The worker takes the redelivered copy once free, and the claim discards it.
    wait_for(lambda: raw.llen(queue) == 0 and raw.hlen("unacked") == 0, 30,
             "the redelivered copy to be taken and acked")
    wait_for(lambda: f"discarded message for step {handle.id}" in
             (tmp_path / "worker-0.log").read_text(), 10, "the discard to be logged")
    assert runs.read_text() == "ran\n"
    assert client.step(handle.id).result().state == "Success"
