"""Routing against real workers: pools are isolated, leasing spreads, the built-in worker rules."""

from __future__ import annotations

import json
from collections import Counter

from conftest import wait_for

from workerpool import ScriptStep
from workerpool.core import keys, messages
from workerpool.core.routing import BUILTIN_ROUTE, Route


def test_steps_stay_in_their_pool_and_spread_over_its_workers(client, start_worker, cli):
    client.pools.add("Pool A")
    client.pools.add("Pool B")
    a1, a2 = start_worker("Pool A"), start_worker("Pool A")
    b1 = start_worker("pool-b")
    builtin = start_worker(None)
    script = "sleep 0.3; echo done"
    a_steps = [client.run(ScriptStep(script=script, pool="Pool A")) for _ in range(8)]
    b_steps = [client.run(ScriptStep(script=script, pool="pool-b")) for _ in range(3)]
    a_results = [h.wait(timeout=60) for h in a_steps]
    b_results = [h.wait(timeout=60) for h in b_steps]

    assert all(r.state == "Success" for r in a_results + b_results)
    assert {r.pool for r in a_results} == {"pool-a"}
    assert {r.pool for r in b_results} == {"pool-b"}
    assert Counter(r.worker for r in b_results) == {b1.name: 3}
    a_workers = Counter(r.worker for r in a_results)
    assert set(a_workers) == {a1.name, a2.name}, "both workers of pool A must take steps"
    assert builtin.name not in a_workers
    assert a1.name == "pool-a-worker-01" and a2.name == "pool-a-worker-02"


def test_default_pool_without_workers_goes_to_builtin_worker(client, start_worker):
    builtin = start_worker(None)
    result = client.run(ScriptStep(script="echo on builtin")).wait(timeout=30)
    assert result.state == "Success"
    assert result.pool == "builtin"
    assert result.worker == builtin.name
    assert [e.text for e in result.log if e.stream == "stdout"] == ["on builtin"]


def test_default_pool_with_a_worker_does_not_use_builtin(client, start_worker):
    default_worker = start_worker("Default Worker Pool")
    start_worker(None)
    result = client.run(ScriptStep(script="true")).wait(timeout=30)
    assert result.pool == "default-worker-pool"
    assert result.worker == default_worker.name == "default-worker-01"


def test_disabled_builtin_worker_refuses_before_enqueue(cli, raw, start_worker):
    start_worker(None)
    assert cli("builtin-worker", "disable").returncode == 0
    before = set(raw.keys(keys.space("*") + "step:*"))
    done = cli("run", "--script", "echo never")
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "Default Worker Pool" in lines[0] and "built-in worker is disabled" in lines[0]
    assert "builtin-worker enable" in lines[0]
    assert "Traceback" not in done.stderr
    assert set(raw.keys(keys.space("*") + "step:*")) == before
    assert raw.llen(keys.BUILTIN_QUEUE) == 0

    server = cli("run", "--server", "--script", "echo never")
    assert server.returncode == 2 and "disabled" in server.stderr


def test_message_reaching_a_disabled_builtin_worker_is_refused_not_run(
        client, start_worker, tmp_path):
    start_worker(None)
    marker = tmp_path / "ran"
    client.builtin.disable()
    # Routing refuses this now; a message that was already queued (or pushed by hand) still
    # reaches the built-in queue, which is what enqueuing past routing reproduces.
    step_id = client.store.enqueue(ScriptStep(script=f"touch {marker}"), BUILTIN_ROUTE, 60, 60)
    result = client.step(step_id).wait(timeout=30)
    assert result.state == "Failed"
    assert result.worker is not None
    assert any("built-in worker is disabled" in e.text for e in result.log)
    assert not marker.exists()


def test_unknown_pool_is_refused_before_anything_is_enqueued(cli, raw):
    done = cli("run", "--pool", "No Such Pool", "--script", "true")
    assert done.returncode == 2
    assert "No Such Pool" in done.stderr and "pool add" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert raw.keys(keys.space("*") + "step:*") == []
    assert [k for k in raw.keys("workerpool.*")] == []


def test_pool_with_only_offline_workers_ends_lease_timeout(client, start_worker, cli, raw):
    client.pools.add("Kubernetes Worker Pool")
    worker = start_worker("Kubernetes Worker Pool")
    worker.proc.kill()  # SIGKILL: stays registered, heartbeat expires
    worker.proc.wait()
    wait_for(lambda: client.workers.list("Kubernetes Worker Pool")[0].state == "Offline",
             10, "worker to go Offline")
    done = cli("run", "--pool", "Kubernetes Worker Pool", "--script", "echo never",
               "--lease-timeout", "1.5", "--json")
    assert done.returncode == 1
    result = json.loads(done.stdout)
    assert result["state"] == "LeaseTimeout"
    assert result["worker"] is None
    assert any("Kubernetes Worker Pool" in e["text"] for e in result["log"])
    assert raw.llen(keys.pool_queue("kubernetes-worker-pool")) == 0, "message left in queue"


def test_a_worker_never_runs_a_step_of_another_pool(client, start_worker, raw, tmp_path):
    client.pools.add("Pool A")
    client.pools.add("Pool B")
    start_worker("Pool A")
    marker = tmp_path / "ran"
    route_b = Route(keys.pool_queue("pool-b"), "pool-b", "Pool B")
    step_id = client.store.enqueue(ScriptStep(script=f"touch {marker}"), route_b, 60, 60)
    # Push the same step's message onto pool A's queue by hand, then a real pool A step.
    raw.lpush(keys.pool_queue("pool-a"),
              messages.build(step_id, 0, keys.pool_queue("pool-a"), "hand-made"))
    after = client.run(ScriptStep(script="true", pool="Pool A")).wait(timeout=30)
    assert after.state == "Success"  # queue is FIFO with one slot: the bad message went first
    assert raw.llen(keys.pool_queue("pool-a")) == 0
    assert client.step(step_id).result().state == "Queued"
    assert not marker.exists()
