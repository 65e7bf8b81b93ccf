"""`workerpool server` killed (SIGKILL) mid-deployment: the next server resumes it.

Each run has a deterministic step id enqueued only if absent, and finished runs are pushed to the
deployment's done list by the worker, so a step that finished while no server ran is counted, and
no step runs twice (checked from the scripts' own append-only file).
"""

from __future__ import annotations

from conftest import deployment_ended, gated_process, wait_for

from workerpool.core import keys
from workerpool.spec.deployment import run_id


def test_killed_server_resumes_without_running_a_step_twice(client, start_worker, server, cli,
                                                            tmp_path, raw):
    client.pools.add("Database Worker Pool")
    start_worker("Database Worker Pool")
    first = server()
    ran = tmp_path / "ran"
    gate = tmp_path / "gate"
    process = gated_process(tmp_path / "process.yaml", "Database Worker Pool", ran, gate)
    deployment_id = cli("deploy", str(process), "--environment", "Test", "--detach"
                        ).stdout.strip()
    wait_for(lambda: ran.exists(), 30, "first step to start")
    first.kill()
    first.wait()
    gate.touch()  # the step finishes while no server runs
    server()
    result = deployment_ended(cli, deployment_id, 60)
    assert result["state"] == "Success"
    assert ran.read_text().splitlines() == ["migrate", "after"]
    assert [len(s["runs"]) for s in result["steps"]] == [1, 1]
    assert raw.scard(keys.DEPLOYMENTS_ACTIVE) == 0


def test_a_run_whose_record_is_lost_is_enqueued_again(client, start_worker, server, cli,
                                                      tmp_path, raw):
    # What a Redis master that failed over before its replica had the enqueue leaves: neither
    # the run's record nor its message. The orchestrator finds it missing and enqueues it again.
    client.pools.add("Database Worker Pool")
    server()
    ran = tmp_path / "ran"
    process = tmp_path / "process.yaml"
    process.write_text(f"""
name: Lost
steps:
  - name: Migrate
    pool: Database Worker Pool
    script: echo migrate >> {ran}
""")
    deployment_id = cli("deploy", str(process), "--environment", "Test", "--detach"
                        ).stdout.strip()
    queue = keys.pool_queue("database-worker-pool")
    step_id = keys.step_id("database-worker-pool", run_id(deployment_id, 0, None, 0))
    wait_for(lambda: raw.llen(queue), 30, "the run to be enqueued")
    assert raw.delete(keys.step(step_id), queue) == 2
    assert raw.zrem(keys.pending("database-worker-pool"), step_id) == 1
    start_worker("Database Worker Pool")
    result = deployment_ended(cli, deployment_id, 60)
    assert result["state"] == "Success"
    assert ran.read_text().splitlines() == ["migrate"]
    assert [run["id"] for run in result["steps"][0]["runs"]] == [step_id]
