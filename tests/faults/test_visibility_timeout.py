"""A step running longer than the broker's visibility timeout is not redelivered while it runs.

kombu's Redis transport keeps each unacked message in ``unacked`` with its delivery time in
``unacked_index``, and redelivers those older than the visibility timeout. The worker refreshes
the time of the steps it runs at every heartbeat. The test runs a step for three visibility
timeouts, then runs kombu's own redelivery pass: the step's message stays where it is, while a
copy that nobody refreshes (the control) is redelivered by the same pass; that copy reaches the
worker afterwards and is discarded by the claim, so the script still runs once.
"""

from __future__ import annotations

import json
import time

from conftest import wait_for
from kombu import Connection

from workerpool import ScriptStep, keys, messages

VISIBILITY = 1.5  # seconds; more than twice the tests' heartbeat interval (0.5 s)


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
    began = time.time()
    wait_for(lambda: time.time() - began > 3 * VISIBILITY, 30, "three visibility timeouts")

    # The control: the same message under another tag, delivered long ago and never refreshed.
    payload, exchange, routing_key = json.loads(raw.hget("unacked", tag))
    payload["properties"]["delivery_tag"] = "control"
    raw.hset("unacked", "control", json.dumps([payload, exchange, routing_key]))
    raw.zadd(keys.KOMBU_UNACKED_INDEX, {"control": time.time() - 10 * VISIBILITY})
    queue = "workerpool.pool.slow-pool"
    assert raw.llen(queue) == 0

    refreshed = float(raw.zscore(keys.KOMBU_UNACKED_INDEX, tag))
    assert time.time() - refreshed < VISIBILITY, "the running step's delivery was not refreshed"
    with Connection(redis_url, transport_options={"visibility_timeout": VISIBILITY}) as conn:
        conn.default_channel.qos.restore_visible(num=100, interval=1)

    assert raw.zscore(keys.KOMBU_UNACKED_INDEX, "control") is None  # redelivered...
    assert raw.llen(queue) == 1  # ...onto the pool's queue: the pass works
    assert raw.zscore(keys.KOMBU_UNACKED_INDEX, tag) is not None  # the running step: not
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


def test_a_visibility_timeout_within_two_heartbeats_is_refused_at_start(cli):
    done = cli("worker", "start", "--builtin", extra_env={"WORKERPOOL_VISIBILITY_TIMEOUT": "1"})
    assert done.returncode == 2
    assert done.stderr == ("workerpool: error: WORKERPOOL_VISIBILITY_TIMEOUT must be more than "
                           "twice WORKERPOOL_HEARTBEAT_INTERVAL, or running steps would be "
                           "redelivered\n")
