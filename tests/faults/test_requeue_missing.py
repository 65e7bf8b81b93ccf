"""After a Redis restart the first reaper pushes again the message of every Queued step whose
message is not in its queue, once, in batched round trips (a large backlog must not make it
one command per step, or one scan of the queue per step)."""

from __future__ import annotations

import time

import redis
from conftest import CountingConnection

from workerpool import ScriptStep
from workerpool.core import keys, messages
from workerpool.core import leases as leases_module
from workerpool.core.leases import BATCH, Leases
from workerpool.core.routing import Route
from workerpool.core.store import StepStore


def test_lost_messages_are_pushed_again_once_in_batches(client, redis_url):
    client.pools.add("Parked")  # no worker: every step stays Queued
    client.pools.add("Other")
    pools = client.snapshot().pools
    count = BATCH + 500  # more than one batch of records and of queue entries
    routes = [Route(pools[s].queue, s, pools[s].name) for s in ("parked", "other")]
    ids = [client.store.enqueue(ScriptStep(script="true", pool=route.pool_name), route, 3600,
                                3600) for route in routes for _ in range(count // 2)]
    lost = ids[::7]  # as if popped with the reply lost in a restart
    for step_id in lost:
        record = client.store.record(step_id)
        assert client.redis.lrem(record["queue"], 1, messages.for_record(step_id, 0, record))
    client.redis.hset(keys.step(ids[1]), "state", "Running")  # claimed: not pushed again
    client.redis.lrem(client.store.record(ids[1])["queue"], 1,
                      messages.for_record(ids[1], 0, client.store.record(ids[1])))

    pool = redis.ConnectionPool.from_url(redis_url, decode_responses=True,
                                         connection_class=CountingConnection)
    counted = redis.Redis(connection_pool=pool)
    leases = Leases(counted, StepStore(counted))
    CountingConnection.sent = 0
    restart = time.time() + 1  # Redis restarted after these steps were enqueued
    assert sum(leases._requeue_missing(slug, restart) for slug in ("parked", "other")) == len(lost)
    assert CountingConnection.sent < 20  # batches, not one command per step

    for route in routes:
        queued = client.redis.lrange(route.queue, 0, -1)
        assert len(queued) == len(set(queued))  # nothing twice
    every = [m for r in routes for m in client.redis.lrange(r.queue, 0, -1)]
    expected = {messages.for_record(s, 0, client.store.record(s)) for s in ids if s != ids[1]}
    assert set(every) == expected
    # A second pass finds nothing missing:
    assert sum(leases._requeue_missing(slug, restart) for slug in ("parked", "other")) == 0
    # A step enqueued after the restart is not looked at: its message may be on its way to a
    # worker (popped, not yet claimed), and pushing it again would run its task twice.
    restarted = time.time() - leases_module.RESTART_CLOCK_SKEW - 1
    late = client.store.enqueue(ScriptStep(script="true", pool="Parked"), routes[0], 3600, 3600)
    record = client.store.record(late)
    assert client.redis.lrem(record["queue"], 1, messages.for_record(late, 0, record))
    assert leases._requeue_missing("parked", restarted) == 0
