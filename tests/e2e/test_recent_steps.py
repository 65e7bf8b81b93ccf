"""A pool's recent steps (``core/recent.py``): each new step is indexed by its enqueue, listed
newest first across pools, filtered by state, capped at the newest, its expired records
skipped; a runner's enqueue and a server's fenced one index it too."""

from __future__ import annotations

import pytest
import redis

from workerpool import Client, ScriptStep
from workerpool.core import credentials, keys
from workerpool.core.leadership import Fenced
from workerpool.core.recent import recent_steps
from workerpool.core.routing import Route
from workerpool.core.steps import FAILED, QUEUED, SUCCESS
from workerpool.core.store import StepStore

ALPHA, BETA, PARKED = "Alpha Pool", "Beta Pool", "Parked"


def parked(client: Client) -> Route:
    """A pool without workers: its steps stay Queued."""
    pool = client.pools.add(PARKED)
    return Route(pool.queue, pool.slug, pool.name)


def queue(client: Client, route: Route, count: int, store: StepStore | None = None) -> list[str]:
    store = store or client.store
    return store.enqueue_many(ScriptStep(script="true", pool=route.pool_name), route, count,
                              3600, 3600)


def ids(client: Client, pools: list[str], **kwargs: object) -> list[str]:
    return [s.id for s in recent_steps(client.redis, pools, **kwargs)]  # type: ignore[arg-type]


def test_steps_of_pools_are_listed_newest_first_by_pool_and_state(client, start_worker):
    alpha, beta = client.pools.add(ALPHA), client.pools.add(BETA)
    route = parked(client)
    alpha_worker, beta_worker = start_worker(ALPHA), start_worker(BETA)
    builtin = start_worker()

    def ran(step: ScriptStep) -> str:
        handle = client.run(step)
        handle.wait(timeout=60)
        return handle.id

    first = ran(ScriptStep(script="true", name="first", pool=ALPHA))
    second = ran(ScriptStep(script="true", name="second", pool=BETA))
    third = ran(ScriptStep(script="exit 3", name="third", pool=ALPHA))
    fourth = ran(ScriptStep(script="true", name="fourth"))  # default pool, no worker: built-in
    waiting = queue(client, route, 1)[0]
    every = [alpha.slug, beta.slug, keys.BUILTIN_POOL, route.pool]

    assert ids(client, every) == [waiting, fourth, third, second, first]
    assert ids(client, every, limit=2) == [waiting, fourth]
    assert ids(client, [alpha.slug]) == [third, first]
    assert ids(client, every, state=FAILED) == [third]
    assert ids(client, every, state=SUCCESS) == [fourth, second, first]
    assert ids(client, every, state=QUEUED) == [waiting]
    assert ids(client, [alpha.slug], state=QUEUED) == []
    summaries = {s.id: s for s in recent_steps(client.redis, every)}
    failed, on_builtin = summaries[third], summaries[fourth]
    assert (failed.name, failed.pool, failed.pool_name, failed.worker, failed.exit_code) == \
        ("third", alpha.slug, ALPHA, alpha_worker.name, 3)
    assert failed.started_at and failed.finished_at and failed.queued_at <= failed.started_at
    assert (on_builtin.pool, on_builtin.worker) == (keys.BUILTIN_POOL, builtin.name)
    assert summaries[second].worker == beta_worker.name
    assert summaries[waiting].worker is None and summaries[waiting].finished_at is None
    assert failed.to_json()["finished_at"].endswith("Z")


def test_the_index_keeps_only_the_newest_steps(client):
    route = parked(client)
    queued = queue(client, route, keys.RECENT_STEPS + 20)
    assert client.redis.zcard(keys.recent(route.pool)) == keys.RECENT_STEPS
    newest = list(reversed(queued))[:keys.RECENT_STEPS]
    assert ids(client, [route.pool], limit=keys.RECENT_STEPS + 100) == newest

    small = client.pools.add("Small")
    small_route = Route(small.queue, small.slug, small.name)
    few = queue(client, small_route, 5, StepStore(client.redis, recent_cap=3))
    assert ids(client, [small.slug]) == list(reversed(few))[:3]
    # Enqueued again under its id (a resumed deployment's run), a step is not indexed twice.
    score = client.redis.zscore(keys.recent(small.slug), few[-1])
    client.store.enqueue(ScriptStep(script="true", pool=small.name), small_route, 3600, 3600,
                         step_id=few[-1])
    assert client.redis.zscore(keys.recent(small.slug), few[-1]) == score
    assert client.redis.zcard(keys.recent(small.slug)) == 3


def test_a_step_whose_record_expired_is_skipped_and_dropped(client):
    route = parked(client)
    oldest, middle, newest = queue(client, route, 3)
    client.redis.delete(keys.step(newest))  # as its TTL would, result_ttl after it ended
    # The newest two read first hold one stored record: the whole index is read for two.
    assert ids(client, [route.pool], limit=2) == [middle, oldest]
    assert client.redis.zrange(keys.recent(route.pool), 0, -1) == [oldest, middle]
    client.redis.delete(keys.step(middle), keys.step(oldest))
    # A field a late writer sets on an expired record makes no step of it.
    client.redis.hset(keys.step(oldest), "missing_since", "0 0")
    assert ids(client, [route.pool]) == []
    assert client.redis.zcard(keys.recent(route.pool)) == 0


def test_a_runners_enqueue_is_indexed_and_a_worker_reads_its_own_pool_only(
        client, start_worker, redis_url, settings):
    alpha, beta = client.pools.add(ALPHA), client.pools.add(BETA)
    worker = start_worker(ALPHA)
    url = credentials.issue(client.redis, redis_url, credentials.RUNNER).url
    runner = Client(redis_url=url, settings=settings)
    try:
        handle = runner.run(ScriptStep(script="echo from a runner", pool=ALPHA))
        assert handle.wait(timeout=60).state == SUCCESS
        listed = recent_steps(runner.redis, [alpha.slug, beta.slug])
    finally:
        runner.close()
    assert [(s.id, s.state, s.worker) for s in listed] == [(handle.id, SUCCESS, worker.name)]
    own = redis.Redis.from_url(worker.url, decode_responses=True)
    assert [s.id for s in recent_steps(own, [alpha.slug])] == [handle.id]
    with pytest.raises(redis.exceptions.NoPermissionError):
        recent_steps(own, [beta.slug])


def test_a_servers_fenced_enqueue_is_indexed_only_with_the_newest_token(client):
    route = parked(client)
    client.redis.set(keys.SERVER_FENCE, "7")
    step = ScriptStep(script="true", pool=PARKED)
    stale = keys.step_id(route.pool, "stale-run")
    with pytest.raises(Fenced):
        client.store.enqueue(step, route, 60, 60, step_id=stale, fence=6)
    fresh = client.store.enqueue(step, route, 60, 60, step_id=keys.step_id(route.pool, "run"),
                                 fence=7)
    assert ids(client, [route.pool]) == [fresh]
    assert not client.redis.exists(keys.step(stale))
