"""After Redis restarts, heartbeat keys have lapsed: no worker is judged lost until live workers
had time to beat again."""

from __future__ import annotations

import time
from pathlib import Path

import redis

from workerpool.core import keys
from workerpool.core.leases import Leases
from workerpool.core.store import StepStore
from workerpool.server.embedded import EmbeddedRedis


def test_lost_workers_are_judged_only_after_the_restart_grace(tmp_path: Path):
    server = EmbeddedRedis(tmp_path / "redis")
    server.start()  # a fresh server: its uptime is below any grace we ask for
    try:
        client = redis.Redis.from_url(server.url, decode_responses=True)
        store = StepStore(client)
        leases = Leases(client, store)
        step = keys.step_id("p", "s1")
        client.hset(keys.step(step), mapping={"state": "Running", "instance": "gone",
                                              "worker": "w-01", "attempt": 0, "retry": 0})
        client.zadd(keys.running("p"), {step: time.time()})
        # The heartbeat is missing, but Redis just started:
        assert leases.reap(["p"], restart_grace=3600) == 0
        assert client.hget(keys.step(step), "state") == "Running"
        assert leases.reap(["p"], restart_grace=0) == 1
        assert client.hget(keys.step(step), "state") == "WorkerLost"
        client.close()
    finally:
        server.stop()
