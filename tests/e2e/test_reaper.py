"""The reaper's lock: a pool is reaped at most once per window whoever asks, each pool's lock
apart from the others', and the locks of many pools are asked for in one round trip."""

from __future__ import annotations

import time

import redis
from conftest import CountingConnection

from workerpool.core import keys
from workerpool.core.leases import Leases
from workerpool.core.store import StepStore


def lost_step(client: redis.Redis, pool: str, name: str) -> str:
    """A Running step of *pool* whose worker (no heartbeat) is gone."""
    step = keys.step_id(pool, name)
    client.hset(keys.step(step), mapping={"state": "Running", "instance": "gone",
                                          "worker": "w-01", "attempt": 0, "retry": 0})
    client.zadd(keys.running(pool), {step: time.time()})
    return step


def test_each_pool_is_reaped_once_per_window_and_its_lock_is_its_own(redis_url) -> None:
    counted = redis.Redis(connection_pool=redis.ConnectionPool.from_url(
        redis_url, decode_responses=True, connection_class=CountingConnection))
    leases = Leases(counted, StepStore(counted))
    pools = [f"reaped-{n}" for n in range(50)]
    first = [lost_step(counted, pool, "a") for pool in pools]
    assert leases.reap(pools, every=60) == len(pools)
    assert {counted.hget(keys.step(s), "state") for s in first} == {"WorkerLost"}

    second = [lost_step(counted, pool, "b") for pool in pools]
    CountingConnection.sent = 0
    assert leases.reap(pools, every=60, restart_grace=1) == 0  # every lock is held
    assert CountingConnection.sent == 1  # the 50 locks in one round trip, and nothing else
    assert {counted.hget(keys.step(s), "state") for s in second} == {"Running"}

    counted.delete(keys.reaper(pools[7]))  # its window ended; the others' did not
    assert leases.reap(pools, every=60) == 1
    assert [counted.hget(keys.step(s), "state") for s in second].count("Running") == 49
    assert counted.hget(keys.step(second[7]), "state") == "WorkerLost"
    counted.close()


def test_a_reap_after_redis_lost_its_scripts_sends_them_again(redis_url) -> None:
    """The survey sends its scripts by EVALSHA, loaded once per Redis run: after SCRIPT FLUSH
    (the same run) a reap still ends the lost step and ages nothing wrongly."""
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    leases = Leases(client, StepStore(client))
    first = lost_step(client, "flushed", "a")
    assert leases.reap(["flushed"], aging=3600) == 1  # scripts loaded for this run
    client.script_flush()
    second = lost_step(client, "flushed", "b")
    assert leases.reap(["flushed"], aging=3600) == 1
    assert [client.hget(keys.step(s), "state") for s in (first, second)] == ["WorkerLost"] * 2
    client.close()
