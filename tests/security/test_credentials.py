"""Another pool's credentials, tried as an attacker holding them would: a Kubernetes worker's
login against the Database pool, the built-in worker and the pools; a runner's login against
the pools. Each attempt is refused by Redis itself (its ACL), whatever the client."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import redis
from conftest import ADMIN_PASSWORD, wait_for

from workerpool import Client, ScriptStep
from workerpool.core import credentials, keys, workers
from workerpool.core.routeview import read_route
from workerpool.core.sealing import Keyring, PoolKey, SealError, open_sealed
from workerpool.core.steps import SUCCESS
from workerpool.core.workers import Heartbeat, WorkerInfo
from workerpool.server.embedded import EmbeddedRedis

K8S, DB = "Kubernetes Worker Pool", "Database Worker Pool"


def login(cli, *args: str) -> redis.Redis:
    done = cli(*args, "--json")
    assert done.returncode == 0, done.stderr
    return redis.Redis.from_url(json.loads(done.stdout)["url"], decode_responses=True)


def refused(action) -> None:
    with pytest.raises(redis.exceptions.NoPermissionError):
        action()


def test_a_pool_workers_login_reaches_its_pool_only(client, cli, start_worker) -> None:
    client.pools.add(K8S)
    client.pools.add(DB)
    start_worker(DB)
    secret_step = client.run(ScriptStep(script="echo migrated", pool=DB, name="Migrate"))
    assert secret_step.wait(timeout=60).state == SUCCESS
    k8s = login(cli, "pool", "credentials", K8S)
    db_queue, db_step = keys.pool_queue("database-worker-pool"), keys.step(secret_step.id)
    message = '{"body": "forged"}'
    # What the issue names, and what follows from it.
    for name in keys.priority_lists(db_queue):  # onto any of the Database queue's lists
        refused(lambda name=name: k8s.lpush(name, message))
        refused(lambda name=name: k8s.lrange(name, 0, -1))
    refused(lambda: k8s.hincrby(keys.ended("database-worker-pool"), SUCCESS, 1))  # its tallies
    refused(lambda: k8s.lpush(keys.BUILTIN_QUEUE, message))  # onto the server's
    refused(lambda: k8s.hget(db_step, "script"))  # a Database step's record
    refused(lambda: k8s.xrange(keys.step_log(secret_step.id)))  # its log
    refused(lambda: k8s.set(keys.BUILTIN_DISABLED, "1"))  # the built-in worker's switch
    refused(lambda: k8s.delete(keys.BUILTIN_DISABLED))
    refused(lambda: k8s.hset(keys.POOLS, "kubernetes-worker-pool", "{}"))  # change a pool
    refused(lambda: k8s.set(keys.DEFAULT_POOL, "kubernetes-worker-pool"))
    refused(lambda: k8s.hset(keys.FEEDS, "evil", "{}"))  # add a feed
    refused(lambda: k8s.hgetall(keys.workers("database-worker-pool")))
    refused(lambda: k8s.zadd(keys.pending("database-worker-pool"), {"x": 1}))
    refused(lambda: k8s.publish(keys.control("database-worker-pool", "i"), db_step))
    refused(lambda: k8s.eval("return redis.call('HGET', KEYS[1], 'script')", 1, db_step))
    refused(lambda: k8s.keys("*"))
    refused(lambda: k8s.flushdb())
    refused(lambda: k8s.config_get("requirepass"))
    refused(lambda: k8s.acl_setuser("me", enabled=True, keys=["*"], commands=["+@all"]))
    # What a worker of its own pool needs does work.
    for name in keys.priority_lists(keys.pool_queue("kubernetes-worker-pool")):
        assert k8s.lpush(name, message) == 1
    assert "database-worker-pool" in k8s.hgetall(keys.POOLS)  # pools are readable
    assert k8s.set(keys.heartbeat("kubernetes-worker-pool", "i"), "{}") is True
    assert client.redis.hget(db_step, "script") == "echo migrated"  # untouched
    assert [client.redis.llen(name) for name in keys.priority_lists(db_queue)] == [0, 0, 0]
    assert client.redis.hget(keys.ended("database-worker-pool"), SUCCESS) == "1"


def test_another_pools_login_cannot_fake_or_hide_live_workers_of_this_pool(
        client, cli, start_worker) -> None:
    """Routing trusts a pool's live index (``keys.live``, ``keys.states``): a Kubernetes
    worker's login can neither add a fake live worker to the Database pool's index, nor drop
    its real one, nor change its state, directly or through a script."""
    client.pools.add(K8S)
    client.pools.add(DB)
    real = start_worker(DB)
    db_slug, k8s_slug = "database-worker-pool", "kubernetes-worker-pool"
    live, states = keys.live(db_slug), keys.states(db_slug)
    [instance] = client.redis.zrange(live, 0, -1)
    k8s = login(cli, "pool", "credentials", K8S)
    fake = WorkerInfo(name="fake", pool=db_slug, instance="fake", syntaxes=("bash",))
    refused(lambda: k8s.zadd(live, {"fake": 2**52}))
    refused(lambda: k8s.zrem(live, instance))
    refused(lambda: k8s.hset(states, instance, "Draining"))
    refused(lambda: k8s.delete(live, states))
    refused(lambda: workers.beat(k8s, db_slug, "fake", Heartbeat(time=0.0), 3600))
    refused(lambda: workers.register(k8s, fake, Heartbeat(time=0.0), "fake", "x-", 3600))
    refused(lambda: workers.deregister(k8s, db_slug, real.name, instance))
    with pytest.raises(redis.exceptions.ResponseError, match="access at least one of the keys"):
        k8s.eval("return redis.call('ZADD', ARGV[1], ARGV[2], 'fake')", 0, live, 2**52)
    # By value: the index holds the real worker alone, and routing sees it alone.
    assert client.redis.zrange(live, 0, -1) == [instance]
    assert client.redis.hgetall(states) == {instance: "Healthy"}
    assert [w.name for w in read_route(client.redis, DB).workers_in(db_slug)] == [real.name]
    # Its own pool's index it keeps.
    workers.beat(k8s, k8s_slug, "mine", Heartbeat(time=0.0), 60)
    assert client.redis.zrange(keys.live(k8s_slug), 0, -1) == ["mine"]


def test_a_runners_login_runs_steps_and_changes_no_pool(client, cli, start_worker,
                                                        settings) -> None:
    client.pools.add(DB)
    start_worker(DB)
    url = json.loads(cli("runner-credentials", "--json").stdout)["url"]
    runner = Client(redis_url=url, settings=settings)
    result = runner.run(ScriptStep(script="echo from a runner", pool=DB)).wait(timeout=60)
    assert result.state == SUCCESS and [e.text for e in result.log] == ["from a runner"]
    refused(lambda: runner.redis.hset(keys.POOLS, "evil", "{}"))
    refused(lambda: runner.redis.set(keys.BUILTIN_DISABLED, "1"))
    refused(lambda: runner.redis.hset(keys.FEEDS, "evil", "{}"))
    # Nor may it lead the server or stale its leader's token (core/leadership.py).
    refused(lambda: runner.redis.set(keys.SERVER_LEASE, "evil 1"))
    refused(lambda: runner.redis.incr(keys.SERVER_FENCE))
    env = {"WORKERPOOL_REDIS_URL": url}
    for args in (["pool", "add", "Evil Pool"], ["builtin-worker", "disable"],
                 ["pool", "remove", DB]):
        done = cli(*args, extra_env=env)
        assert done.returncode == 2, (args, done.stderr)
        assert "may not" in done.stderr and "Traceback" not in done.stderr
    assert not client.redis.exists(keys.BUILTIN_DISABLED)
    assert [p.name for p in client.pools.list()] == ["Default Worker Pool", DB]


def test_a_message_for_another_pools_step_is_discarded_unread(client, start_worker,
                                                              tmp_path: Path) -> None:
    """A Database step's message pushed onto the Kubernetes queue (by an admin: no pool's
    login may): the Kubernetes worker discards it without reading the step, which stays
    queued for its own pool."""
    client.pools.add(K8S)
    client.pools.add(DB)
    worker = start_worker(K8S)
    step = client.run(ScriptStep(script="echo never here", pool=DB))
    raw_message = client.redis.rpop(keys.pool_queue("database-worker-pool"))
    client.redis.lpush(keys.pool_queue("kubernetes-worker-pool"), raw_message)
    wait_for(lambda: client.redis.llen(keys.pool_queue("kubernetes-worker-pool")) == 0, 20,
             "the Kubernetes worker to take the message")
    log = next(tmp_path.glob("worker-*.log"))
    wait_for(lambda: "not a step of pool kubernetes-worker-pool" in log.read_text(), 20,
             "the worker to discard it")
    assert step.result().state == "Queued"
    assert worker.proc.poll() is None


def test_credentials_written_to_an_acl_file_load_into_redis(tmp_path: Path, cli) -> None:
    """``--acl-file`` for a Redis configured by file: the line it writes loads with ACL LOAD,
    and the URL it prints logs in with the same rights as a live user."""
    acl = tmp_path / "users.acl"
    acl.write_text(f"user default on >{ADMIN_PASSWORD} ~* &* +@all\n")
    server = EmbeddedRedis(tmp_path / "redis", extra_args=("--aclfile", str(acl)),
                           password=None)
    server.start()
    try:
        admin_url = f"redis://:{ADMIN_PASSWORD}@127.0.0.1:{server.port}/0"
        env = {"WORKERPOOL_REDIS_URL": admin_url}
        assert cli("pool", "add", DB, extra_env=env).returncode == 0
        done = cli("pool", "credentials", DB, "--acl-file", str(acl), "--json", extra_env=env)
        assert done.returncode == 0, done.stderr
        url = json.loads(done.stdout)["url"]
        admin = redis.Redis.from_url(admin_url, decode_responses=True)
        assert admin.acl_load()
        db = redis.Redis.from_url(url, decode_responses=True)
        assert db.lpush(keys.pool_queue("database-worker-pool"), "x") == 1
        refused(lambda: db.lpush(keys.BUILTIN_QUEUE, "x"))
        refused(lambda: db.hset(keys.POOLS, "evil", "{}"))
        admin.close()
        db.close()
    finally:
        server.stop()


def test_no_pools_login_reaches_a_pool_whose_name_starts_with_its_own(client,
                                                                       redis_url) -> None:
    """``db`` and ``db-2``, ``target`` and a target's agent ``target:web-01``, ``builtin`` and
    ``builtin-x``: each first one's login, tried on the second one's queue, step and channel."""
    for pool, other in (("db", "db-2"), ("target", "target:web-01"), ("builtin", "builtin-x")):
        made = credentials.issue(client.redis, redis_url, pool)
        own = redis.Redis.from_url(made.url, decode_responses=True)
        step = keys.step(keys.step_id(other, "0123456789abcdef"))
        refused(lambda own=own, other=other: own.lpush(keys.queue_of(other), "x"))
        refused(lambda own=own, step=step: own.hset(step, "state", "Queued"))
        refused(lambda own=own, other=other: own.publish(keys.control(other, "i"), "x"))
        assert own.lpush(keys.queue_of(pool), "x") == 1  # its own, to show the login works
        own.close()


def test_a_kubernetes_workers_keys_do_not_open_a_database_steps_secrets(client, cli) -> None:
    """Even given a Database step's record (which its Redis login may not read), a Kubernetes
    worker's key opens nothing of it, whichever pool it claims the record is of."""
    client.pools.add(K8S)
    client.pools.add(DB)
    secret = "db-" + os.urandom(8).hex()
    step = client.run(ScriptStep(script="true", pool=DB, sensitive_variables={"Pw": secret}))
    sealed = client.redis.hget(keys.step(step.id), "secrets")
    assert sealed.startswith("sealed:v2:") and secret not in sealed
    k8s = json.loads(cli("pool", "credentials", K8S, "--json").stdout)["pool_key"]
    stolen = Keyring([], [PoolKey.parse(part, "test") for part in k8s.split(",")])
    for claimed in ("database-worker-pool", "kubernetes-worker-pool"):
        with pytest.raises(SealError) as caught:
            stolen.open_map(sealed, claimed, "an attacker")
        assert secret not in str(caught.value)
    with pytest.raises(ValueError):
        open_sealed(PoolKey.parse(k8s.split(",")[0], "test"), sealed)
    db = json.loads(cli("pool", "credentials", DB, "--json").stdout)["pool_key"]
    owner = Keyring([], [PoolKey.parse(db, "test")])
    assert owner.open_map(sealed, "database-worker-pool", "its worker") == {"Pw": secret}
