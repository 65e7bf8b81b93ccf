"""The per-pool index of live workers (``keys.live``, ``keys.states``) kept by register,
heartbeats, deregister, reap and pool changes; and routing through ``read_route``, which reads
the step's pool and its live workers only."""

from __future__ import annotations

import json
import uuid

import pytest
import redis
from conftest import monitored, wait_for

from workerpool import ScriptStep
from workerpool.core import keys, workers
from workerpool.core.errors import NoWorker, PoolConflict, UnknownPool
from workerpool.core.pools import slugify
from workerpool.core.routeview import read_route
from workerpool.core.routing import BUILTIN_ROUTE, Route, route
from workerpool.core.steps import SUCCESS
from workerpool.core.workers import DRAINING, HEALTHY, STARTING, Heartbeat, WorkerInfo

DB, DB_SLUG = "Database Worker Pool", "database-worker-pool"
DEFAULT_SLUG = "default-worker-pool"


def redis_ms(raw: redis.Redis) -> int:
    seconds, micros = raw.time()
    return int(seconds) * 1000 + int(micros) // 1000


def enrol(client, pool: str, ttl: float = 60.0, syntaxes: tuple[str, ...] = ("bash", "sh"),
          state: str = STARTING) -> WorkerInfo:
    """Register a worker record in *pool* (a slug) as ``worker start`` does, without running
    one: its first heartbeat lasts *ttl* seconds."""
    info = WorkerInfo(name="", pool=pool, instance=uuid.uuid4().hex, host="test", pid=1,
                      syntaxes=syntaxes)
    name = workers.register(client.redis, info, Heartbeat(time=0.0, state=state), None,
                            "test-worker-", ttl)
    assert name
    return WorkerInfo(name=name, pool=pool, instance=info.instance, syntaxes=syntaxes)


def live_now(raw: redis.Redis, pool: str) -> list[str]:
    return sorted(raw.zrangebyscore(keys.live(pool), redis_ms(raw), "+inf"))


def nothing_enqueued(raw: redis.Redis) -> bool:
    return raw.keys(keys.space("*") + "step:*") == [] and raw.keys("workerpool.*") == []


# --- the index -----------------------------------------------------------------------------------


def test_register_puts_the_worker_in_its_pools_live_index_with_its_state(client, raw) -> None:
    client.pools.add(DB)
    before = redis_ms(raw)
    worker = enrol(client, DB_SLUG, ttl=30)
    score = raw.zscore(keys.live(DB_SLUG), worker.instance)
    assert score is not None and before + 30_000 <= score <= redis_ms(raw) + 30_000
    assert raw.hget(keys.states(DB_SLUG), worker.instance) == STARTING
    assert raw.zcard(keys.live(DEFAULT_SLUG)) == 0  # in its own pool's index only


def test_a_heartbeat_turn_tries_the_reaper_lock_and_reads_its_steps_in_the_same_call(
        client, raw) -> None:
    """The worker's whole turn is one call: the beat, the pool's reaper lock (taken once per
    its expiry, not by the next turn), and each running step's state, holder and cancel."""
    client.pools.add(DB)
    worker = enrol(client, DB_SLUG)
    mine, cancelled = keys.step_id(DB_SLUG, "a" * 16), keys.step_id(DB_SLUG, "b" * 16)
    raw.hset(keys.step(mine), mapping={"state": "Running", "instance": worker.instance})
    raw.hset(keys.step(cancelled), mapping={"state": "Running", "instance": "other",
                                            "cancel": "1"})
    gone = keys.step_id(DB_SLUG, "c" * 16)  # no record: its row is blank
    turn = workers.beat(client.redis, DB_SLUG, worker.instance, Heartbeat(time=1.0), 30,
                        lock_ms=60_000, steps=[mine, cancelled, gone])
    assert turn.locked and 59_000 < raw.pttl(keys.reaper(DB_SLUG)) <= 60_000
    assert turn.steps == (("Running", worker.instance, ""), ("Running", "other", "1"),
                          ("", "", ""))
    again = workers.beat(client.redis, DB_SLUG, worker.instance, Heartbeat(time=2.0), 30,
                         lock_ms=60_000)
    assert not again.locked and again.steps == ()  # held: the next turn does not reap
    assert raw.hget(keys.states(DB_SLUG), worker.instance) == HEALTHY
    raw.delete(keys.reaper(DB_SLUG))
    plain = workers.beat(client.redis, DB_SLUG, worker.instance, Heartbeat(time=3.0), 30)
    assert not plain.locked and not raw.exists(keys.reaper(DB_SLUG))  # a plain beat tries none


def test_a_heartbeat_refreshes_the_score_and_the_state(client, raw) -> None:
    client.pools.add(DB)
    worker = enrol(client, DB_SLUG, ttl=1)
    first = raw.zscore(keys.live(DB_SLUG), worker.instance)
    workers.beat(client.redis, DB_SLUG, worker.instance, Heartbeat(time=1.0, state=DRAINING), 30)
    assert raw.zscore(keys.live(DB_SLUG), worker.instance) >= first + 29_000
    assert raw.hget(keys.states(DB_SLUG), worker.instance) == DRAINING
    assert json.loads(raw.get(keys.heartbeat(DB_SLUG, worker.instance)))["state"] == DRAINING
    assert 29_000 < raw.pttl(keys.heartbeat(DB_SLUG, worker.instance)) <= 30_000


def test_a_real_worker_beats_into_the_index_drains_and_leaves_it(client, start_worker, raw,
                                                                 tmp_path) -> None:
    client.pools.add(DB)
    worker = start_worker(DB)
    [instance] = raw.zrange(keys.live(DB_SLUG), 0, -1)
    assert raw.hget(keys.states(DB_SLUG), instance) == HEALTHY
    first = raw.zscore(keys.live(DB_SLUG), instance)
    wait_for(lambda: raw.zscore(keys.live(DB_SLUG), instance) > first, 10, "a later beat")
    gate = tmp_path / "go"
    step = client.run(ScriptStep(script=f"while [ ! -e {gate} ]; do sleep 0.05; done",
                                 pool=DB))
    wait_for(lambda: step.result().state == "Running", 30, "the step to run")
    client.workers.drain(worker.name)
    wait_for(lambda: raw.hget(keys.states(DB_SLUG), instance) == DRAINING, 10,
             "its heartbeat to say Draining")
    gate.touch()
    assert step.wait(timeout=30).state == SUCCESS
    worker.proc.wait(30)
    assert raw.zscore(keys.live(DB_SLUG), instance) is None  # deregistered
    assert raw.hget(keys.states(DB_SLUG), instance) is None
    assert raw.hlen(keys.workers(DB_SLUG)) == 0


def test_deregister_removes_the_entry(client, raw) -> None:
    client.pools.add(DB)
    worker = enrol(client, DB_SLUG)
    workers.deregister(client.redis, DB_SLUG, worker.name, worker.instance)
    assert raw.zcard(keys.live(DB_SLUG)) == 0 and raw.hlen(keys.states(DB_SLUG)) == 0


def test_a_lapsed_worker_is_offline_not_live_and_reap_prunes_it(client, raw) -> None:
    client.pools.add(DB)
    kept = enrol(client, DB_SLUG, ttl=60)
    lapsing = enrol(client, DB_SLUG, ttl=0.05)
    wait_for(lambda: live_now(raw, DB_SLUG) == [kept.instance], 10, "its heartbeat to lapse")
    assert raw.hlen(keys.workers(DB_SLUG)) == 2  # still registered: Offline = 2 - 1 live
    assert [w.name for w in read_route(client.redis, DB).workers_in(DB_SLUG)] == [kept.name]
    client.leases.reap([DB_SLUG])
    assert raw.zrange(keys.live(DB_SLUG), 0, -1) == [kept.instance]
    assert raw.hkeys(keys.states(DB_SLUG)) == [kept.instance]
    assert raw.hget(keys.workers(DB_SLUG), lapsing.name) is not None  # the record stays


def test_a_sigkilled_default_pool_worker_stops_counting(client, start_worker, raw) -> None:
    victim = start_worker("Default Worker Pool")
    builtin = start_worker(None)
    assert route(ScriptStep("true"), read_route(client.redis, None)).pool == DEFAULT_SLUG
    victim.proc.kill()
    victim.proc.wait()
    wait_for(lambda: not live_now(raw, DEFAULT_SLUG), 10, "its heartbeat to lapse")
    result = client.run(ScriptStep(script="echo after")).wait(timeout=30)
    assert (result.pool, result.worker) == ("builtin", builtin.name)
    assert raw.hlen(keys.workers(DEFAULT_SLUG)) == 1  # Offline, still registered
    client.leases.reap([DEFAULT_SLUG])
    assert raw.zcard(keys.live(DEFAULT_SLUG)) == 0 and raw.hlen(keys.states(DEFAULT_SLUG)) == 0


def test_a_name_taken_over_from_an_offline_worker_leaves_no_stale_entry(client, raw) -> None:
    client.pools.add(DB)
    old = enrol(client, DB_SLUG, ttl=0.05)
    wait_for(lambda: not live_now(raw, DB_SLUG), 10, "its heartbeat to lapse")
    new = enrol(client, DB_SLUG)
    assert new.name == old.name
    assert raw.zrange(keys.live(DB_SLUG), 0, -1) == [new.instance]
    assert raw.hkeys(keys.states(DB_SLUG)) == [new.instance]


def test_a_pool_renamed_keeping_its_slug_still_routes_to_its_live_workers(
        client, start_worker, raw) -> None:
    client.pools.add(DB)
    worker = start_worker(DB)
    client.pools.edit(DB, name="DATABASE worker pool")
    view = read_route(client.redis, "DATABASE worker pool")
    assert [w.name for w in view.workers_in(DB_SLUG)] == [worker.name]
    result = client.run(ScriptStep(script="true", pool="database WORKER pool")).wait(timeout=30)
    assert (result.state, result.worker) == (SUCCESS, worker.name)
    with pytest.raises(PoolConflict, match="workers are registered"):
        client.pools.edit(DB, name="Databases")  # a new slug: refused while registered
    assert raw.zcard(keys.live(DB_SLUG)) == 1


def test_pool_removal_and_a_slug_changing_rename_drop_the_index(client, raw) -> None:
    """A beat that lost the race with its worker's deregister leaves an entry with no record:
    the pool can be removed, and its index goes with it."""
    for name in (DB, "Pool B"):
        client.pools.add(name)
        slug = slugify(name)
        workers.beat(client.redis, slug, "late", Heartbeat(time=0.0), 60)
        assert raw.exists(keys.live(slug), keys.states(slug)) == 2
    client.pools.remove(DB)
    assert raw.exists(keys.live(DB_SLUG), keys.states(DB_SLUG)) == 0
    client.pools.edit("Pool B", name="Pool C")
    assert raw.exists(keys.live("pool-b"), keys.states("pool-b")) == 0


# --- routing through read_route ------------------------------------------------------------------


def test_a_named_pool_routes_to_its_queue_reading_it_and_the_default_only(client) -> None:
    client.pools.add(DB)
    client.pools.add("Kubernetes Worker Pool")
    worker = enrol(client, DB_SLUG)
    view = read_route(client.redis, "database worker pool")
    assert set(view.pools) == {DB_SLUG, DEFAULT_SLUG}
    assert [w.instance for w in view.workers_in(DB_SLUG)] == [worker.instance]
    assert route(ScriptStep("echo", pool="database worker pool"), view) == \
        Route(keys.pool_queue(DB_SLUG), DB_SLUG, DB)


def test_the_default_pool_with_and_without_live_workers(client, raw) -> None:
    view = read_route(client.redis, None)  # creates the default pool
    assert route(ScriptStep("echo"), view) == BUILTIN_ROUTE
    assert raw.hexists(keys.POOLS, DEFAULT_SLUG)
    worker = enrol(client, DEFAULT_SLUG)
    assert route(ScriptStep("echo"), read_route(client.redis, None)).pool == DEFAULT_SLUG
    workers.beat(client.redis, DEFAULT_SLUG, worker.instance, Heartbeat(time=0.0), 0.05)
    wait_for(lambda: not live_now(raw, DEFAULT_SLUG), 10, "its heartbeat to lapse")
    assert route(ScriptStep("echo"), read_route(client.redis, None)) == BUILTIN_ROUTE
    client.builtin.disable()
    with pytest.raises(NoWorker, match="has no live workers and the built-in worker is "
                                       "disabled"):
        client.run(ScriptStep(script="echo never"))
    assert nothing_enqueued(raw)


def test_a_syntax_no_live_worker_runs_is_refused_before_enqueue(client, raw) -> None:
    client.pools.add(DB)
    enrol(client, DB_SLUG, syntaxes=("bash", "sh"))
    with pytest.raises(NoWorker, match="pwsh is not installed"):
        client.run(ScriptStep(script="Write-Output hi", syntax="powershell", pool=DB))
    assert nothing_enqueued(raw)
    on_server = ScriptStep(script="Write-Output hi", syntax="powershell", location="server")
    enrol(client, keys.BUILTIN_POOL, syntaxes=("bash",))
    with pytest.raises(NoWorker, match="'built-in worker'"):
        client.run(on_server)
    assert nothing_enqueued(raw)


@pytest.mark.parametrize("ident", ["No Such Pool", "database_worker_pool", "builtin"])
def test_an_unknown_pool_names_every_pool(client, raw, ident: str) -> None:
    client.pools.add(DB)
    with pytest.raises(UnknownPool) as info:
        client.run(ScriptStep(script="true", pool=ident))
    message = str(info.value)
    assert repr(ident) in message and "pool add" in message
    assert "pools: Database Worker Pool, Default Worker Pool" in message
    assert nothing_enqueued(raw)


def test_another_pools_malformed_huge_workers_do_not_touch_routing(client, start_worker,
                                                                   raw) -> None:
    client.pools.add(DB)
    client.pools.add("Broken Pool")
    worker = start_worker(DB)
    broken = "broken-pool"
    pipe = raw.pipeline(transaction=False)
    for n in range(0, 20_000, 1000):
        pipe.hset(keys.workers(broken), mapping={f"w{n + i}": "not json {" for i in range(1000)})
        pipe.zadd(keys.live(broken), {f"i{n + i}": 2**52 for i in range(1000)})
    pipe.hset(keys.workers(DEFAULT_SLUG), "bad", "not json {")  # not read for a named pool
    pipe.execute()
    result = client.run(ScriptStep(script="echo fine", pool=DB)).wait(timeout=30)
    assert (result.state, result.worker) == (SUCCESS, worker.name)


def test_routing_a_step_sends_no_command_into_another_pools_space(client, redis_url) -> None:
    """Every command Redis runs for ``Client.run`` (those inside its scripts too), as MONITOR
    shows them: none names a key of another pool's space. The pools' workers are registered
    and live, and none runs: what MONITOR shows is the run's alone."""
    client.pools.add(DB)
    client.pools.add("Other Pool")
    enrol(client, DB_SLUG, state=HEALTHY)
    enrol(client, "other-pool")
    _, seen = monitored(redis_url, lambda: client.run(ScriptStep(script="true", pool=DB)))
    assert any(c.startswith(f"ZRANGEBYSCORE {keys.live(DB_SLUG)} ") for c in seen), seen
    assert not [c for c in seen if keys.space("other-pool") in c]
    assert not [c for c in seen if c.startswith("HGETALL")]  # no whole registry, no whole pool
    assert not [c for c in seen if c.startswith("HVALS") and keys.workers(DB_SLUG) not in c]
