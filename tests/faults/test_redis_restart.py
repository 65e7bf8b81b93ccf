"""Redis stopped and restarted (AOF on) with steps queued on three pools and workers running."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import redis
from conftest import HEARTBEAT, TaskEvents, wait_for

from workerpool import Client, ScriptStep
from workerpool.core import keys
from workerpool.core.routing import route
from workerpool.core.settings import Settings
from workerpool.core.steps import TERMINAL
from workerpool.server.embedded import EmbeddedRedis
from workerpool.worker.celery.app import make_app

POOLS = ("Pool A", "Pool B", "Pool C")
STEPS = 500


@pytest.fixture
def own_redis(tmp_path: Path):
    server = EmbeddedRedis(tmp_path / "redis")
    server.start()
    yield server
    server.stop()


def test_all_queued_steps_run_exactly_once_after_a_redis_restart(own_redis, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("WORKERPOOL_")}
    env.update(WORKERPOOL_REDIS_URL=own_redis.url, WORKERPOOL_HOME=str(tmp_path / "home"),
               WORKERPOOL_HEARTBEAT_INTERVAL=str(HEARTBEAT), WORKERPOOL_KILL_GRACE="1")
    client = Client(settings=Settings.from_env(env))
    for name in POOLS:
        client.pools.add(name)
    logs = [open(tmp_path / f"worker-{n}.log", "wb") for n in range(3)]  # noqa: SIM115
    workers = [subprocess.Popen([sys.executable, "-m", "workerpool", "worker", "start",
                                 "--pool", name, "--concurrency", "2", "--loglevel", "INFO"],
                                env=env, stdout=log, stderr=subprocess.STDOUT)
               for name, log in zip(POOLS, logs, strict=True)]
    try:
        wait_for(lambda: sum(w.state == "Healthy" for w in client.workers.list()) == 3, 60,
                 "three workers")
        runs = tmp_path / "runs"
        runs.touch(mode=0o666)  # every worker's script users append to it
        runs.chmod(0o666)
        snapshot = client.snapshot()
        ids = []
        for n in range(STEPS):
            step = ScriptStep(script=f'echo "$WORKERPOOL_STEP_ID" >> {runs}; sleep 0.01',
                              pool=POOLS[n % 3])
            ids.append(client.store.enqueue(step, route(step, snapshot), 600, 60))
        # Stop Redis while most steps are queued and some run; SIGTERM writes the AOF out.
        own_redis.stop()
        during = subprocess.run([sys.executable, "-m", "workerpool", "run", "--pool", "Pool A",
                                 "--script", "true"], env=env, capture_output=True, text=True,
                                timeout=60)
        assert during.returncode == 3 and "unreachable" in during.stderr
        assert len(during.stderr.strip().splitlines()) == 1
        time.sleep(3 * HEARTBEAT)  # long enough for every heartbeat key to have expired
        own_redis.start()

        def states() -> Counter[str]:
            pipe = client.redis.pipeline(transaction=False)
            for step_id in ids:
                pipe.hget(keys.step(step_id), "state")
            return Counter(pipe.execute())

        wait_for(lambda: set(states()) <= TERMINAL, 60, "every step to end")
        assert states() == Counter({"Success": STEPS})
        ran = Counter(runs.read_text().split())
        assert len(ran) == STEPS and set(ran.values()) == {1}, ran.most_common(3)
        wait_for(lambda: sum(w.state == "Healthy" for w in client.workers.list()) == 3, 30,
                 "workers reconnected by themselves")
        # Task events (for Flower) flow again too: the gathered events' timer restarted.
        events = TaskEvents(client.redis)
        after = client.run(ScriptStep(script="true", pool="Pool A"))
        assert after.wait(30).state == "Success"
        wait_for(lambda: any(e["type"] == "task-succeeded" and e["uuid"] == after.id
                             for e in events.collect()), 10,
                 "the task events of a step run after the restart")
        events.close()
    finally:
        for proc in workers:
            proc.terminate()
        for proc in workers:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
        for log in logs:
            log.close()
        client.close()


def test_an_ack_lost_with_redis_frees_its_prefetch_slot(own_redis):
    """A worker whose every slot held a message when Redis stopped (their acks failed) must
    fetch again once Redis is back: kombu's QoS kept the slot of a failed ack, so the worker
    stopped fetching for good (a pool of test_all_queued_steps... sat idle with steps queued)."""
    with make_app(own_redis.url).connection_for_write() as conn:
        channel = conn.default_channel
        channel.basic_qos(prefetch_count=1)
        with conn.SimpleQueue("workerpool.test.lost-ack", channel=channel) as queue:
            queue.put({"n": 1})
            held = queue.get(timeout=5)
            assert not channel.qos.can_consume()  # the one slot is taken
            own_redis.stop()
            with pytest.raises(redis.ConnectionError):
                held.ack()
            # Free again: the worker's next BRPOP fails, so it reconnects, and fetches once
            # Redis is back.
            assert channel.qos.can_consume()


def test_a_paused_pool_stays_paused_across_a_redis_restart(own_redis, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("WORKERPOOL_")}
    env.update(WORKERPOOL_REDIS_URL=own_redis.url, WORKERPOOL_HOME=str(tmp_path / "home"),
               WORKERPOOL_HEARTBEAT_INTERVAL=str(HEARTBEAT), WORKERPOOL_KILL_GRACE="1")
    client = Client(settings=Settings.from_env(env))
    client.pools.add("Pool A")

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "workerpool", *args], env=env,
                              capture_output=True, text=True, timeout=60)

    def listed() -> dict[str, object]:
        done = cli("pool", "list", "--json")
        assert done.returncode == 0, done.stderr
        return next(p for p in json.loads(done.stdout) if p["name"] == "Pool A")

    log_path = tmp_path / "worker.log"
    with open(log_path, "wb") as log:
        worker = subprocess.Popen([sys.executable, "-m", "workerpool", "worker", "start",
                                   "--pool", "Pool A", "--concurrency", "2", "--loglevel",
                                   "INFO"], env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: [w.state for w in client.workers.list()] == ["Healthy"], 60,
                 "the worker")
        paused = cli("pool", "pause", "Pool A", "--reason", "maintenance")
        assert paused.returncode == 0, paused.stderr
        # One file per step: scripts run as users of their own, one per slot.
        steps = [client.run(ScriptStep(script=f"echo ran >> {tmp_path}/ran-$WORKERPOOL_STEP_ID",
                                       pool="Pool A")) for _ in range(4)]
        own_redis.stop()  # SIGTERM: Redis writes its AOF out
        wait_for(lambda: "heartbeat failed" in log_path.read_text(errors="replace"), 30,
                 "the worker to lose Redis")
        own_redis.start()

        assert client.pools.get("Pool A").paused
        assert (listed()["paused"], listed()["paused_reason"]) == (True, "maintenance")
        # Its Celery consumer connected again (the start-up's line, then this one) ...
        wait_for(lambda: log_path.read_text(errors="replace").count(
            "celery.worker.consumer.connection: Connected to") >= 2, 30,
            "the worker's consumer to connect again")
        back = time.time()
        # ... and it beat twice more since, Healthy and taking nothing.
        wait_for(lambda: all(w.state == "Healthy" and w.heartbeat
                             and w.heartbeat.time > back + 2 * HEARTBEAT
                             for w in client.workers.list()), 30, "the worker to beat again")
        assert worker.poll() is None
        assert [s.result().state for s in steps] == ["Queued"] * 4
        assert not list(tmp_path.glob("ran-*"))

        resumed = cli("pool", "resume", "Pool A")
        assert resumed.returncode == 0, resumed.stderr
        assert [s.wait(30).state for s in steps] == ["Success"] * 4
        ran = {f.name.removeprefix("ran-"): f.read_text() for f in tmp_path.glob("ran-*")}
        assert ran == {s.id: "ran\n" for s in steps}
        assert listed()["paused"] is False
    finally:
        worker.terminate()
        try:
            worker.wait(30)
        except subprocess.TimeoutExpired:
            worker.kill()
        client.close()
