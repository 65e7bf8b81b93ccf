"""Redis Sentinel: the master killed (SIGKILL) with steps queued on two pools and workers
running; Sentinel promotes the replica and every component follows by itself."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import redis
from conftest import (
    HEARTBEAT,
    SECRET_KEY,
    one_line_error,
    queue_appending,
    shared_file,
    wait_for,
)

from workerpool import Client, ScriptStep
from workerpool.core import credentials, keys
from workerpool.core.pools import slugify
from workerpool.core.sentinel import parse_sentinel
from workerpool.core.settings import Settings
from workerpool.core.steps import TERMINAL
from workerpool.server.embedded import EmbeddedRedis, free_port, redis_server_binary

MASTER = "wpmaster"  # not Sentinel's usual name: proves WORKERPOOL_REDIS_SENTINEL_MASTER is read
PASSWORD = "data-password"
POOLS = ("Pool A", "Pool B")
STEPS = 300
CONCURRENCY = 2


@dataclass
class Node:
    port: int
    args: list[str]
    log: Path
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen([redis_server_binary(), *self.args],
                                        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.STDOUT, start_new_session=True)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)

    def client(self, password: str | None = PASSWORD) -> redis.Redis:
        return redis.Redis(port=self.port, password=password, decode_responses=True,
                           socket_connect_timeout=1, socket_timeout=2)


@dataclass
class SentinelCluster:
    """One master, one replica, three sentinels, on free ports of 127.0.0.1."""

    master: Node
    replica: Node
    sentinels: list[Node] = field(default_factory=list)

    @property
    def url(self) -> str:
        first, *others = (node.port for node in self.sentinels)
        return ";".join([f"sentinel://:{PASSWORD}@127.0.0.1:{first}/0",
                         *(f"sentinel://127.0.0.1:{port}" for port in others)])

    def master_port(self) -> int | None:
        """The master's port as a majority of the sentinels names it, if they agree."""
        named = Counter[int]()
        for node in self.sentinels:
            try:
                named[int(node.client(None).sentinel_get_master_addr_by_name(MASTER)[1])] += 1
            except (redis.RedisError, TypeError):
                continue
        port, votes = named.most_common(1)[0] if named else (None, 0)
        return port if votes >= 2 else None

    def ready(self) -> bool:
        """Every sentinel knows the other two and the replica, and the replica is in sync."""
        try:
            states = [node.client(None).sentinel_master(MASTER) for node in self.sentinels]
            link = self.replica.client().info("replication")["master_link_status"]
        except redis.RedisError:
            return False
        return link == "up" and all(int(s["num-other-sentinels"]) == 2
                                    and int(s["num-slaves"]) == 1 for s in states)

    def stop(self) -> None:
        for node in (*self.sentinels, self.replica, self.master):
            node.kill()


def _data_node(tmp_path: Path, name: str, port: int, *extra: str) -> Node:
    data = tmp_path / name
    data.mkdir()
    return Node(port, ["--port", str(port), "--bind", "127.0.0.1", "--dir", str(data),
                       "--save", "", "--appendonly", "no", "--requirepass", PASSWORD,
                       "--masterauth", PASSWORD, "--logfile", str(data / "redis.log"),
                       *extra], data / "redis.log")


def _sentinel_node(tmp_path: Path, number: int, master_port: int) -> Node:
    port, data = free_port(), tmp_path / f"sentinel-{number}"
    data.mkdir()
    conf = data / "sentinel.conf"  # Sentinel rewrites its own file: one each
    conf.write_text(f"port {port}\nbind 127.0.0.1\ndir {data}\n"
                    f"logfile {data / 'sentinel.log'}\n"
                    f"sentinel monitor {MASTER} 127.0.0.1 {master_port} 2\n"
                    f"sentinel auth-pass {MASTER} {PASSWORD}\n"
                    f"sentinel down-after-milliseconds {MASTER} 1000\n"
                    f"sentinel failover-timeout {MASTER} 5000\n")
    return Node(port, [str(conf), "--sentinel"], data / "sentinel.log")


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[SentinelCluster]:
    master_port, replica_port = free_port(), free_port()
    # The master refuses writes while its replica is away (min-replicas-to-write): a write it
    # accepts is one the replica is streamed.
    found = SentinelCluster(
        _data_node(tmp_path, "master", master_port, "--min-replicas-to-write", "1",
                   "--min-replicas-max-lag", "10"),
        _data_node(tmp_path, "replica", replica_port, "--replicaof", "127.0.0.1",
                   str(master_port)))
    found.master.start()
    found.replica.start()
    found.sentinels = [_sentinel_node(tmp_path, n, master_port) for n in range(3)]
    for node in found.sentinels:
        node.start()
    try:
        wait_for(found.ready, 30, "the sentinels to know each other and the replica",
                 interval=0.1)
        yield found
    finally:
        found.stop()


def _env(cluster: SentinelCluster, tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WORKERPOOL_")}
    env.update(WORKERPOOL_REDIS_URL=cluster.url, WORKERPOOL_REDIS_SENTINEL_MASTER=MASTER,
               WORKERPOOL_HOME=str(tmp_path / "home"),
               WORKERPOOL_HEARTBEAT_INTERVAL=str(HEARTBEAT), WORKERPOOL_KILL_GRACE="1")
    return env


def _stopped(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def test_steps_end_exactly_once_across_a_sentinel_failover(cluster, tmp_path):
    env = _env(cluster, tmp_path)
    # The steps must survive the master's death: each enqueue returns once the replica has it.
    client = Client(settings=Settings.from_env({**env, "WORKERPOOL_REDIS_WAIT_REPLICAS": "1"}))
    for name in POOLS:
        client.pools.add(name)
    # Pool A's worker logs in as its pool's own ACL user, set on the replica too (Redis does
    # not replicate ACL users); Pool B's as the admin.
    logins = [credentials.issue(client.redis, cluster.url, slugify(POOLS[0])).url, cluster.url]
    on_replica = redis.Redis(port=cluster.replica.port, socket_connect_timeout=1,
                             username=credentials.user_name(slugify(POOLS[0])),
                             password=parse_sentinel(logins[0]).password)
    assert on_replica.acl_whoami() == "workerpool-pool-pool-a"
    on_replica.close()
    logs = [open(tmp_path / f"worker-{n}.log", "wb") for n in range(len(POOLS))]  # noqa: SIM115
    workers = [subprocess.Popen([sys.executable, "-m", "workerpool", "worker", "start",
                                 "--pool", name, "--concurrency", str(CONCURRENCY),
                                 "--loglevel", "INFO"],
                                env={**env, "WORKERPOOL_REDIS_URL": login}, stdout=log,
                                stderr=subprocess.STDOUT)
               for name, login, log in zip(POOLS, logins, logs, strict=True)]
    try:
        wait_for(lambda: sum(w.state == "Healthy" for w in client.workers.list()) == 2, 60,
                 "two workers")
        runs = tmp_path / "runs"
        ids = queue_appending(client, POOLS, runs, STEPS, 30, 0.02)

        def ran() -> Counter[str]:
            return Counter(runs.read_text().split())

        wait_for(lambda: sum(ran().values()) >= STEPS // 5, 60, "a fifth of the steps to run")
        old_port = cluster.master.port
        cluster.master.kill()
        # A run during the failover waits and succeeds, or exits 3 in one line: never hangs.
        during: dict[str, subprocess.CompletedProcess[str]] = {}
        runner = threading.Thread(target=lambda: during.setdefault("run", subprocess.run(
            [sys.executable, "-m", "workerpool", "run", "--pool", "Pool A", "--script", "true"],
            env=env, capture_output=True, text=True, timeout=60)))
        runner.start()
        wait_for(lambda: cluster.master_port() == cluster.replica.port, 30,
                 "Sentinel to promote the replica", interval=0.1)
        assert cluster.master_port() != old_port

        def states() -> Counter[str]:
            pipe = client.redis.pipeline(transaction=False)
            for step_id in ids:
                pipe.hget(keys.step(step_id), "state")
            return Counter(client.guard(pipe.execute))

        wait_for(lambda: set(states()) <= TERMINAL, 90, "every step to end", interval=0.2)
        assert states() == Counter({"Success": STEPS})
        runner.join(60)
        done = during["run"]
        assert (done.returncode, len(done.stderr.strip().splitlines()) <= 1) in (
            (0, True), (3, True)), done.stderr
        counted = ran()
        assert set(ids) <= set(counted)
        # Bound: a step runs twice only if the master died before its replica had the claim
        # (replication is asynchronous): at most one step per slot, those running at the kill.
        again = sum(counted[step_id] for step_id in ids) - STEPS
        print(f"through the failover: {STEPS} steps, {STEPS - len(set(counted) & set(ids))} "
              f"lost, {again} run twice; run during it: exit {done.returncode}")
        assert 0 <= again <= CONCURRENCY * len(POOLS), counted.most_common(5)
        wait_for(lambda: sum(w.state == "Healthy" for w in client.workers.list()) == 2, 30,
                 "workers on the new master by themselves")
        # The new master has no replica, so WAIT would fail: a client that does not ask.
        plain = Client(settings=Settings.from_env(env))
        try:
            after = plain.run(ScriptStep(script="true", pool="Pool B"))
            assert after.wait(30).state == "Success"
        finally:
            plain.close()
    finally:
        for proc in workers:
            _stopped(proc)
        for log in logs:
            log.close()
        client.close()


def test_the_server_follows_a_failover_and_ends_its_deployment(cluster, tmp_path):
    env = {**_env(cluster, tmp_path), "WORKERPOOL_SECRET_KEY": SECRET_KEY}
    client = Client(settings=Settings.from_env(env))
    client.pools.add("Pool A")
    ran, gate = shared_file(tmp_path / "ran"), tmp_path / "gate"
    process = tmp_path / "process.yaml"
    process.write_text(f"""
name: Across a failover
steps:
  - name: Migrate
    pool: Pool A
    script: |
      echo migrate >> {ran}
      while [ ! -e {gate} ]; do sleep 0.05; done
  - name: After
    pool: Pool A
    script: echo after >> {ran}
  - name: On the server
    location: server
    script: echo server >> {ran}
""")
    logs = [open(tmp_path / name, "wb") for name in ("worker.log", "server.log")]  # noqa: SIM115
    procs = [subprocess.Popen([sys.executable, "-m", "workerpool", *argv], env=env,
                              stdout=log, stderr=subprocess.STDOUT)
             for argv, log in zip((["worker", "start", "--pool", "Pool A"], ["server"]), logs,
                                  strict=True)]
    try:
        wait_for(lambda: client.redis.exists(keys.SERVER_HEARTBEAT) and sum(
            w.state == "Healthy" for w in client.workers.list()) == 2, 60,
                 "the server, its built-in worker and the pool's worker")
        deployed = _cli(env, "deploy", str(process), "--environment", "Test", "--detach")
        assert deployed.returncode == 0, deployed.stderr
        deployment_id = deployed.stdout.strip()
        wait_for(lambda: "migrate" in ran.read_text(), 60, "the first step to start")
        old_port = cluster.master.port
        cluster.master.kill()
        wait_for(lambda: cluster.master_port() == cluster.replica.port, 30,
                 "Sentinel to promote the replica", interval=0.1)
        assert cluster.master_port() != old_port
        gate.touch()  # the step ends on the new master

        def shown() -> dict[str, object] | None:
            done = _cli(env, "deployments", "show", deployment_id, "--json")
            if done.returncode != 0:  # exit 3 while the clients find the new master
                return None
            found: dict[str, object] = json.loads(done.stdout)
            return found if found["state"] in ("Success", "Failed") else None

        result = wait_for(shown, 90, "the deployment to end", interval=0.2)
        assert result["state"] == "Success", result
        assert ran.read_text().splitlines() == ["migrate", "after", "server"]
        # The built-in worker's consumer followed the failover on workerpool's transport (on
        # kombu's stock one, its credentials refused the first call and Celery stopped).
        assert "Unrecoverable error" not in (tmp_path / "server.log").read_text()
    finally:
        for proc in reversed(procs):
            _stopped(proc)
        for log in logs:
            log.close()
        client.close()


def _cli(env: dict[str, str], *args: str, **extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "workerpool", *args], env={**env, **extra},
                          capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)


def test_a_wrong_master_name_or_a_master_without_replica_is_one_line_exit_3(cluster, tmp_path):
    env = _env(cluster, tmp_path)
    wrong = _cli(env, "pool", "list", WORKERPOOL_REDIS_SENTINEL_MASTER="nope")
    assert one_line_error(wrong, 3) == (
        f"workerpool: error: the Redis Sentinels at "
        f"{', '.join(f'127.0.0.1:{node.port}' for node in cluster.sentinels)} monitor no "
        f"master named 'nope' (they know {MASTER}); set WORKERPOOL_REDIS_SENTINEL_MASTER")
    added = _cli(env, "pool", "add", "Pool A")
    assert added.returncode == 0, added.stderr
    cluster.replica.kill()
    wait_for(lambda: cluster.master.client().info("replication")["connected_slaves"] == 0, 10,
             "the master to lose its replica")
    # min-replicas-to-write: the master refuses the step rather than keep what it could lose.
    refused = _cli(env, "run", "--pool", "Pool A", "--script", "true")
    assert "takes no writes for now (NOREPLICAS" in one_line_error(refused, 3)


def test_sentinels_that_require_a_password_take_it_from_the_environment(tmp_path):
    """WORKERPOOL_REDIS_SENTINEL_PASSWORD reaches the sentinels (and only them: the URL's
    password is the master's)."""
    port, data = free_port(), tmp_path / "sentinel"
    data.mkdir()
    conf = data / "sentinel.conf"
    conf.write_text(f"port {port}\nbind 127.0.0.1\ndir {data}\nrequirepass sentinel-pw\n"
                    f"sentinel monitor {MASTER} 127.0.0.1 {free_port()} 1\n")
    node = Node(port, [str(conf), "--sentinel"], data / "sentinel.log")
    node.start()
    try:
        wait_for(lambda: node.client("sentinel-pw").ping(), 10, "the sentinel", interval=0.1)
        env = {k: v for k, v in os.environ.items() if not k.startswith("WORKERPOOL_")}
        env.update(WORKERPOOL_REDIS_URL=f"sentinel://:{PASSWORD}@127.0.0.1:{port}/0",
                   WORKERPOOL_REDIS_SENTINEL_MASTER=MASTER,
                   WORKERPOOL_HOME=str(tmp_path / "home"))
        refused = one_line_error(_cli(env, "pool", "list"), 3)
        assert refused.endswith(f"Sentinels at 127.0.0.1:{port} refused the login; set "
                                "WORKERPOOL_REDIS_SENTINEL_PASSWORD to their password "
                                "(requirepass)")
        # Let in, the sentinel names a master that is not running.
        let_in = one_line_error(_cli(env, "pool", "list",
                                     WORKERPOOL_REDIS_SENTINEL_PASSWORD="sentinel-pw"), 3)
        assert "the Redis master the sentinels of sentinel://:***@" in let_in
        assert PASSWORD not in let_in
    finally:
        node.kill()


def test_an_enqueue_no_replica_acknowledges_exits_3_naming_the_step(tmp_path):
    """WORKERPOOL_REDIS_WAIT_REPLICAS with no replica to answer WAIT (any URL): the step is on
    the master, and the run says so instead of returning as if it were safe."""
    server = EmbeddedRedis(tmp_path / "redis")
    server.start()
    try:
        env = {k: v for k, v in os.environ.items() if not k.startswith("WORKERPOOL_")}
        env.update(WORKERPOOL_REDIS_URL=server.url, WORKERPOOL_HOME=str(tmp_path / "home"))
        assert _cli(env, "pool", "add", "Pool A").returncode == 0
        done = _cli(env, "run", "--pool", "Pool A", "--script", "true",
                    WORKERPOOL_REDIS_WAIT_REPLICAS="1", WORKERPOOL_REDIS_WAIT_TIMEOUT="0.2")
        line = one_line_error(done, 3)
        assert " is stored on the Redis master, but only 0 of the 1 replicas " in line
        step_id = line.split("step ", 1)[1].split()[0]
        stored = redis.Redis.from_url(server.url, decode_responses=True)
        assert stored.hget(keys.step(step_id), "state") == "Queued"
        stored.close()
    finally:
        server.stop()


def test_a_worker_waits_out_a_master_that_takes_no_writes(cluster, tmp_path):
    # The master refuses writes (NOREPLICAS) while its replica is away: min-replicas-to-write
    # 1. A step that ends meanwhile is reported once the replica is back; the worker lives.
    env = _env(cluster, tmp_path)
    master = cluster.master.client()
    master.config_set("min-replicas-max-lag", "1")
    client = Client(settings=Settings.from_env(env))
    client.pools.add("Pool B")
    gate = tmp_path / "gate"
    log = open(tmp_path / "worker.log", "wb")  # noqa: SIM115
    worker = subprocess.Popen([sys.executable, "-m", "workerpool", "worker", "start", "--pool",
                               "Pool B"], env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: any(w.state == "Healthy" for w in client.workers.list()), 60,
                 "the worker")
        handle = client.run(ScriptStep(script=f"while [ ! -e {gate} ]; do sleep 0.05; done; "
                                              "echo done", pool="Pool B"))
        wait_for(lambda: handle.result().state == "Running", 30, "the step to run")
        cluster.replica.kill()

        def refused() -> bool:
            try:
                master.set("probe", "1")
            except redis.ResponseError as exc:
                return str(exc).startswith("NOREPLICAS")
            return False

        wait_for(refused, 30, "the master to refuse writes")
        gate.touch()
        # Its end is retried each second; three tries are about 16 refused heartbeat retries.
        wait_for(lambda: (tmp_path / "worker.log").read_text().count(
            "could not record the end of step ") >= 3, 30, "the step's end to be retried")
        assert handle.result().state == "Running"  # its end waits for the master
        cluster.replica.start()
        result = handle.wait(timeout=60)
        assert result.state == "Success" and [e.text for e in result.log] == ["done"]
        assert worker.poll() is None
        text = (tmp_path / "worker.log").read_text()
        assert "Unrecoverable error" not in text  # (kombu logs its own retries' tracebacks)
        assert text.count("heartbeat failed") == 1  # one line for the outage, not one a retry
    finally:
        _stopped(worker)
        log.close()
        client.close()
        master.close()
