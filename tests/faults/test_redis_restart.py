"""Redis stopped and restarted (AOF on) with steps queued on three pools and workers running,
and with a deployment in flight on `workerpool server`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
import redis
from conftest import HEARTBEAT, SECRET_KEY, TaskEvents, queue_appending, shared_file, wait_for

from workerpool import Client, ScriptStep
from workerpool.core import keys
from workerpool.core.settings import Settings
from workerpool.core.steps import TERMINAL
from workerpool.core.targets import TargetRegistry
from workerpool.server.embedded import EmbeddedRedis
from workerpool.server.stack import Stack
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
        ids = queue_appending(client, POOLS, runs, STEPS, 600, 0.01)
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


def _stopped(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def test_a_deployment_in_flight_survives_a_redis_restart_and_runs_each_step_once(own_redis,
                                                                                 tmp_path):
    """Redis stops while a deployment's runs are Running on a pool worker (their scripts end
    while it is down) and comes back with its data: the server's orchestrator, which died on
    the first Redis error before, resumes the deployment, which ends Success with every run
    enqueued and run once, and orchestrates the next deployment."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WORKERPOOL_")}
    env.update(WORKERPOOL_REDIS_URL=own_redis.url, WORKERPOOL_HOME=str(tmp_path / "home"),
               WORKERPOOL_HEARTBEAT_INTERVAL=str(HEARTBEAT), WORKERPOOL_KILL_GRACE="1")
    client = Client(settings=Settings.from_env(env))
    client.pools.add("Pool A")
    registry = TargetRegistry(client.redis)
    for n in range(1, 5):
        registry.add(f"web-{n:02d}", "Test", ("web",))
    server_env = {**env, "WORKERPOOL_SECRET_KEY": SECRET_KEY}  # the admin's; never a worker's
    worker_log, server_log = tmp_path / "worker.log", tmp_path / "server.log"
    with open(worker_log, "wb") as log:
        worker = subprocess.Popen([sys.executable, "-m", "workerpool", "worker", "start",
                                   "--pool", "Pool A", "--concurrency", "2", "--loglevel",
                                   "INFO"], env=env, stdout=log, stderr=subprocess.STDOUT)
    with open(server_log, "wb") as log:
        server = subprocess.Popen([sys.executable, "-m", "workerpool", "server"],
                                  env=server_env, stdout=log, stderr=subprocess.STDOUT)

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "workerpool", *args], env=server_env,
                              capture_output=True, text=True, timeout=60)

    def state(deployment_id: str) -> str:
        return str(client.redis.hget(keys.deployment(deployment_id), "state"))

    runs = shared_file(tmp_path / "runs")  # each run appends its step id: one line per run
    gate = tmp_path / "gate"
    process = tmp_path / "process.yaml"
    process.write_text(f"""
name: Through a restart
steps:
  - name: Prepare
    pool: Pool A
    script: echo "$WORKERPOOL_STEP_ID" >> {runs}
  - name: Roll out
    location: worker-per-target
    pool: Pool A
    roles: [web]
    max_parallelism: 2
    script: |
      echo "$WORKERPOOL_STEP_ID" >> {runs}
      while [ ! -e {gate} ]; do sleep 0.05; done
  - name: Finish
    pool: Pool A
    script: echo "$WORKERPOOL_STEP_ID" >> {runs}
""")
    try:
        wait_for(lambda: [w.state for w in client.workers.list() if w.pool == "pool-a"]
                 == ["Healthy"], 60, "the pool's worker")
        wait_for(lambda: client.redis.exists(keys.SERVER_HEARTBEAT), 60, "the server")
        submitted = cli("deploy", str(process), "--environment", "Test", "--detach")
        assert submitted.returncode == 0, submitted.stderr
        deployment_id = submitted.stdout.strip()
        # Prepare ran; two Roll out runs (of four) are Running, held by the gate.
        wait_for(lambda: len(runs.read_text().split()) == 3, 30, "two Roll out runs to start")
        assert state(deployment_id) == "Running"

        own_redis.stop()  # SIGTERM: Redis writes its AOF out
        wait_for(lambda: f"deployment {deployment_id}: Redis is unreachable"
                 in server_log.read_text(errors="replace"), 30,
                 "the orchestrator to lose Redis")
        gate.touch()  # the two running scripts end while Redis is away: their ends wait
        wait_for(lambda: worker_log.read_text(errors="replace").count(
            "could not record the end of step") >= 2, 30, "both runs to end with Redis away")
        wait_for(lambda: "workerpool: Redis at " in server_log.read_text(errors="replace"),
                 30, "the server's supervisor to say it lost Redis")
        own_redis.start()

        wait_for(lambda: state(deployment_id) in ("Success", "Failed"), 45,
                 "the deployment to end")
        shown = cli("deployments", "show", deployment_id, "--json")
        result = json.loads(shown.stdout)
        assert (result["state"], result["message"]) == ("Success", ""), result
        assert [(s["name"], s["state"], len(s["runs"])) for s in result["steps"]] == [
            ("Prepare", "Success", 1), ("Roll out", "Success", 4), ("Finish", "Success", 1)]
        run_ids = [r["id"] for s in result["steps"] for r in s["runs"]]
        assert all(r["state"] == "Success" for s in result["steps"] for r in s["runs"])
        ran = Counter(runs.read_text().split())
        assert set(ran) == set(run_ids) and set(ran.values()) == {1}, ran
        assert client.redis.scard(keys.DEPLOYMENTS_ACTIVE) == 0

        text = server_log.read_text(errors="replace")
        assert "Traceback" not in text, text[-3000:]
        said = [line for line in text.splitlines() if line.startswith("orchestrator: ")]
        assert said[0].startswith("orchestrator: Redis is unreachable (will retry): "), said
        assert said[1:] == ["orchestrator: Redis answers again; carrying on"], said
        assert f"deployment {deployment_id}: resumed" in text
        assert text.count("workerpool: Redis at ") == 1  # the supervisor's, once
        assert text.count("workerpool: Redis answers again") == 1

        # The server beats again and orchestrates the next deployment.
        wait_for(lambda: client.redis.exists(keys.SERVER_HEARTBEAT), 30, "the server to beat")
        again = cli("deploy", str(process), "--environment", "Test", "--json")
        assert again.returncode == 0, again.stderr
        after = json.loads(again.stdout)
        assert after["state"] == "Success"
        ran = Counter(runs.read_text().split())
        assert len(ran) == 12 and set(ran.values()) == {1}, ran
        assert set(ran) == set(run_ids) | {r["id"] for s in after["steps"] for r in s["runs"]}
    finally:
        _stopped(server)
        _stopped(worker)
        client.close()


def test_the_server_heartbeat_lapses_once_the_orchestrator_stops(settings, raw, cli, tmp_path,
                                                                 capsys):
    """Only the orchestrator's own loop beats. With it stopped while the rest of the stack
    supervises on (reaping, talking to Redis), the heartbeat lapses and `deploy` refuses: the
    supervisor used to keep it fresh for an orchestrator that was gone."""
    stack = Stack(settings, builtin=False, orchestrate=True)
    stop = threading.Event()
    with stack:
        supervisor = threading.Thread(target=stack.supervise, args=(stop,), daemon=True)
        supervisor.start()
        try:
            wait_for(lambda: raw.exists(keys.SERVER_HEARTBEAT), 30, "the server heartbeat")
            first = float(raw.get(keys.SERVER_HEARTBEAT))
            wait_for(lambda: float(raw.get(keys.SERVER_HEARTBEAT) or 0) > first, 10,
                     "the orchestrator to beat again")
            orchestrator = stack.orchestrator
            assert orchestrator is not None
            stack.stop_orchestrator()
            orchestrator.join(10)
            assert not orchestrator.is_alive()
            wait_for(lambda: not raw.exists(keys.SERVER_HEARTBEAT), 15,
                     "the heartbeat to lapse")
            assert supervisor.is_alive()  # the stack supervises on, without beating
            wait_for(lambda: "the deployment orchestrator stopped" in capsys.readouterr().err,
                     10, "the supervisor to say so")
            process = tmp_path / "process.yaml"
            process.write_text("name: X\nsteps:\n  - {name: A, location: server, "
                               "script: echo}\n")
            done = cli("deploy", str(process), "--environment", "Test")
            assert done.returncode == 2 and "no workerpool server is running" in done.stderr
            assert not raw.exists(keys.SERVER_HEARTBEAT)
        finally:
            stop.set()
            supervisor.join(10)
