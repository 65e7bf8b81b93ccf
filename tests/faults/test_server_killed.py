"""`workerpool server` killed (SIGKILL) mid-deployment: the next server resumes it.

Each run has a deterministic step id enqueued only if absent, and finished runs are pushed to the
deployment's done list by the worker, so a step that finished while no server ran is counted, and
no step runs twice (checked from the scripts' own append-only file).
"""

from __future__ import annotations

import json

from conftest import wait_for

from workerpool.core import keys


def test_killed_server_resumes_without_running_a_step_twice(client, start_worker, server, cli,
                                                            tmp_path, raw):
    client.pools.add("Database Worker Pool")
    start_worker("Database Worker Pool")
    first = server()
    ran = tmp_path / "ran"
    gate = tmp_path / "gate"
    process = tmp_path / "process.yaml"
    process.write_text(f"""
name: Long
steps:
  - name: Migrate
    pool: Database Worker Pool
    script: |
      echo migrate >> {ran}
      while [ ! -e {gate} ]; do sleep 0.05; done
  - name: After
    pool: Database Worker Pool
    script: echo after >> {ran}
""")
    deployment_id = cli("deploy", str(process), "--environment", "Test", "--detach"
                        ).stdout.strip()
    wait_for(lambda: ran.exists(), 30, "first step to start")
    first.kill()
    first.wait()
    gate.touch()  # the step finishes while no server runs
    server()
    result = wait_for(lambda: (r := json.loads(cli("deployments", "show", deployment_id,
                                                   "--json").stdout))["state"] in
                      ("Success", "Failed") and r, 60, "deployment to end")
    assert result["state"] == "Success"
    assert ran.read_text().splitlines() == ["migrate", "after"]
    assert [len(s["runs"]) for s in result["steps"]] == [1, 1]
    assert raw.scard(keys.DEPLOYMENTS_ACTIVE) == 0
