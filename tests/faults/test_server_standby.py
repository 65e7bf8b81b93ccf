"""Two `workerpool server` nodes against one Redis: one leads under a lease with a fencing
token, the other stands by (core/leadership.py).

- The leader SIGKILLed mid-deployment: the standby takes the lease within twice its length and
  resumes every deployment, no step run twice and none dropped (the scripts' own append-only
  file says so).
- A leader paused (SIGSTOP) past its lease and woken (SIGCONT) writes nothing: its token is
  stale, and every orchestrator write (taking a deployment, its record, a step's enqueue) is
  refused by Redis, as a crafted call with the old token shows.
- Each node runs its own built-in worker, and server steps go to any live node.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
from conftest import deployment_ended, deployment_shown, gated_process, shared_file, wait_for

from workerpool import ScriptStep
from workerpool.core import keys
from workerpool.core.leadership import Fenced, FencedWrites, holder
from workerpool.core.routing import Route
from workerpool.core.store import StepStore
from workerpool.core.targets import TargetRegistry
from workerpool.core.workers import HEALTHY

LEASE = 2.0  # seconds: WORKERPOOL_SERVER_LEASE of both nodes
NODE_ENV = {"WORKERPOOL_SERVER_LEASE": str(LEASE)}


def leader_pid(raw) -> int | None:
    """The pid of the server node holding the lease (its node name is host:pid:random)."""
    held = holder(raw)
    return int(held[0].split(":")[1]) if held else None


def two_nodes(server, raw, tmp_path: Path):
    """Start a leader, then a standby (their output in server-0.log and server-1.log); both are
    up once the standby said it stands by."""
    first = server(extra_env=NODE_ENV)
    wait_for(lambda: leader_pid(raw) == first.pid, 20, "the first node to lead")
    second = server(extra_env=NODE_ENV)
    log = tmp_path / "server-1.log"
    wait_for(lambda: "this server stands by" in log.read_text(), 60, "the second to stand by")
    return first, second


def test_the_standby_takes_over_a_killed_leader_and_resumes_every_deployment(
        client, start_worker, server, cli, raw, tmp_path):
    client.pools.add("Web Pool")
    client.pools.add("Small Pool")
    for _ in range(2):
        start_worker("Web Pool", concurrency=4)
    start_worker("Small Pool")
    registry = TargetRegistry(client.redis)
    for n in range(1, 251):
        registry.add(f"web-{n:03d}", "Test", ("web",))
    first, second = two_nodes(server, raw, tmp_path)
    ran, gate = shared_file(tmp_path / "ran"), tmp_path / "gate"
    # After 40 runs, every run waits for the gate: the leader is killed with runs in flight.
    process = tmp_path / "process.yaml"
    process.write_text(f"""
name: Wide
steps:
  - name: Warm up
    location: worker-per-target
    pool: Web Pool
    roles: [web]
    max_parallelism: 8
    script: |
      echo "#{{Machine.Name}}" >> {ran}
      while [ ! -e {gate} ] && [ "$(wc -l < {ran})" -gt 40 ]; do sleep 0.05; done
  - name: After
    pool: Web Pool
    script: echo after >> {ran}
""")
    small = tmp_path / "small.yaml"
    small.write_text(f"""
name: Small
steps:
  - name: One
    pool: Small Pool
    script: |
      echo small-one >> {ran}
      while [ ! -e {gate} ]; do sleep 0.05; done
  - name: Two
    pool: Small Pool
    script: echo small-two >> {ran}
""")
    wide = cli("deploy", str(process), "--environment", "Test", "--detach").stdout.strip()
    wait_for(lambda: len(ran.read_text().splitlines()) > 40, 60, "41 runs to start")
    narrow = cli("deploy", str(small), "--environment", "Test", "--detach").stdout.strip()
    wait_for(lambda: "small-one" in ran.read_text(), 60, "the small deployment to start")
    assert raw.smembers(keys.DEPLOYMENTS_ACTIVE) == {wide, narrow}

    killed = time.monotonic()
    first.kill()
    first.wait()
    gate.touch()  # runs in flight end while no node leads
    wait_for(lambda: leader_pid(raw) == second.pid, 2 * LEASE + 5, "the standby to lead")
    takeover = time.monotonic() - killed
    print(f"takeover after SIGKILL of the leader: {takeover:.2f} s (lease {LEASE:g} s)")
    assert takeover <= 2 * LEASE

    for deployment_id in (wide, narrow):
        result = deployment_ended(cli, deployment_id)
        assert result["state"] == "Success", result
    lines = ran.read_text().splitlines()
    names = [line for line in lines if line.startswith("web-")]
    assert sorted(names) == [f"web-{n:03d}" for n in range(1, 251)]  # each once, none lost
    assert sorted(set(lines) - set(names)) == ["after", "small-one", "small-two"]
    assert len(lines) == 253
    steps = deployment_shown(cli, wide)["steps"]
    assert [len(step["runs"]) for step in steps] == [250, 1]
    assert raw.scard(keys.DEPLOYMENTS_ACTIVE) == 0


def test_a_paused_leader_that_wakes_cannot_write(client, start_worker, server, cli, raw,
                                                 tmp_path):
    client.pools.add("Database Pool")
    start_worker("Database Pool")
    first, second = two_nodes(server, raw, tmp_path)
    ran, gate = shared_file(tmp_path / "ran"), tmp_path / "gate"
    process = gated_process(tmp_path / "process.yaml", "Database Pool", ran, gate)
    deployment_id = cli("deploy", str(process), "--environment", "Test", "--detach"
                        ).stdout.strip()
    wait_for(lambda: "migrate" in ran.read_text(), 60, "the first step to start")
    old_token = holder(raw)[1]
    first.send_signal(signal.SIGSTOP)
    try:
        wait_for(lambda: leader_pid(raw) == second.pid, 2 * LEASE + 5, "the standby to lead")
        gate.touch()  # the old leader's blocked read may be handed this run's end
        assert deployment_ended(cli, deployment_id)["state"] == "Success"
        settled = raw.hgetall(keys.deployment(deployment_id))
    finally:
        first.send_signal(signal.SIGCONT)
    log = tmp_path / "server-0.log"
    wait_for(lambda: "this server lost the lease" in log.read_text(), 30,
             "the woken node to find its lease gone")
    wait_for(lambda: f"deployment {deployment_id}: left to the server that leads now"
             in log.read_text(), 30, "the woken node's deployment thread to stop")
    assert ran.read_text().splitlines() == ["migrate", "after"]
    assert raw.hgetall(keys.deployment(deployment_id)) == settled
    assert raw.scard(keys.DEPLOYMENTS_ACTIVE) == 0
    assert leader_pid(raw) == second.pid and first.poll() is None

    # What the woken node would send, sent by hand with its stale token, once neither node
    # runs (a live leader would take the queued deployment itself): Redis refuses each.
    for node in (first, second):
        node.send_signal(signal.SIGTERM)
        node.wait(30)
    writes = FencedWrites(raw)
    raw.lpush(keys.DEPLOYMENTS_QUEUE, "queued-one")
    with pytest.raises(Fenced):
        writes.take(old_token)
    with pytest.raises(Fenced):
        writes.write(old_token, deployment_id, {"state": "Failed"}, active="+")
    store = StepStore(raw)
    step_id = keys.step_id("database-pool", "stale-run")
    with pytest.raises(Fenced):
        store.enqueue(ScriptStep(script="echo stale", pool="Database Pool"),
                      Route(keys.pool_queue("database-pool"), "database-pool",
                            "Database Pool"), 60, 60, step_id=step_id, fence=old_token)
    assert raw.lrange(keys.DEPLOYMENTS_QUEUE, 0, -1) == ["queued-one"]
    assert raw.hgetall(keys.deployment(deployment_id)) == settled
    assert not raw.smembers(keys.DEPLOYMENTS_ACTIVE)
    assert not raw.exists(keys.step(step_id))


def builtin_workers(client) -> dict[int, str]:
    """The server node (parent pid) of each Healthy built-in worker -> the worker's name."""
    found = {}
    for worker in client.workers.list():
        if worker.pool == keys.BUILTIN_POOL and worker.state == HEALTHY:
            try:
                stat = Path(f"/proc/{worker.pid}/stat").read_text()
            except FileNotFoundError:  # gone, and not yet Offline
                continue
            found[int(stat.rpartition(")")[2].split()[1])] = worker.name
    return found


def test_each_node_runs_a_built_in_worker_and_server_steps_go_to_any_live_node(
        client, server, raw, tmp_path):
    first, second = two_nodes(server, raw, tmp_path)
    nodes = wait_for(lambda: len(w := builtin_workers(client)) == 2 and w, 60,
                     "both nodes' built-in workers")
    assert set(nodes) == {first.pid, second.pid}
    gate = tmp_path / "gate"
    # Each built-in worker runs one step at a time and takes no other meanwhile: two steps held
    # at once run one on each node.
    held = [client.run(ScriptStep(script=f"while [ ! -e {gate} ]; do sleep 0.05; done",
                                  location="server")) for _ in range(2)]
    running = wait_for(lambda: all(h.result().state == "Running" for h in held)
                       and [h.result().worker for h in held], 30, "both steps to run")
    assert sorted(running) == sorted(nodes.values())
    gate.touch()
    assert [h.wait(timeout=30).state for h in held] == ["Success", "Success"]

    first.kill()
    first.wait()
    wait_for(lambda: list(builtin_workers(client)) == [second.pid], 30,
             "the killed node's built-in worker to leave")
    after = client.run(ScriptStep(script="echo on the live node", location="server"))
    result = after.wait(timeout=30)
    assert result.state == "Success" and result.worker == nodes[second.pid]
    assert os.path.exists(f"/proc/{second.pid}")
