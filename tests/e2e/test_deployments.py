"""Deployments end to end: the real `workerpool server`, real pool workers and target agents."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import uuid
from pathlib import Path

from conftest import monitored, shared_file, wait_for

from workerpool.core import keys, scripts, workers
from workerpool.core.connection import connect
from workerpool.core.sealing import Keyring
from workerpool.core.store import StepStore
from workerpool.core.targets import TargetRegistry
from workerpool.core.workers import Heartbeat, WorkerInfo
from workerpool.server.orchestrator import Orchestrator
from workerpool.spec.processes import load_process


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "process.yaml"
    path.write_text(text)
    return path


def targets(client, count: int, role: str = "web", environment: str = "Test") -> None:
    registry = TargetRegistry(client.redis)
    for n in range(1, count + 1):
        registry.add(f"{role}-{n:02d}", environment, (role,))


def deploy_json(cli, process: Path, *args: str) -> tuple[int, dict]:
    done = cli("deploy", str(process), "--environment", "Test", "--json", *args, timeout=120)
    assert done.stdout, done.stderr
    return done.returncode, json.loads(done.stdout)


def test_worker_per_target_respects_max_parallelism(client, start_worker, server, cli,
                                                    tmp_path):
    client.pools.add("Kubernetes Worker Pool")
    workers = {start_worker("Kubernetes Worker Pool", concurrency=2).name for _ in range(3)}
    targets(client, 12)
    server()
    events = shared_file(tmp_path / "events")  # appended by the scripts of three workers
    process = write(tmp_path, f"""
name: Warm up
variables:
  Greeting:
    - {{value: normal}}
    - {{value: special, target: web-03}}
steps:
  - name: Warm up
    location: worker-per-target
    pool: Kubernetes Worker Pool
    roles: [web]
    max_parallelism: 4
    script: |
      echo "start #{{Machine.Name}} $(date +%s.%N)" >> {events}
      sleep 0.4
      echo "end #{{Machine.Name}} $(date +%s.%N) #{{Machine.Roles}} #{{Greeting}}" >> {events}
""")
    code, result = deploy_json(cli, process)
    assert code == 0 and result["state"] == "Success"
    [step] = result["steps"]
    runs = step["runs"]
    assert sorted(r["target"] for r in runs) == [f"web-{n:02d}" for n in range(1, 13)]
    assert all(r["state"] == "Success" and r["worker"] in workers for r in runs)
    assert {r["pool"] for r in runs} == {"kubernetes-worker-pool"}
    lines = [line.split() for line in events.read_text().splitlines()]
    starts = {parts[1]: float(parts[2]) for parts in lines if parts[0] == "start"}
    ends = {parts[1]: (float(parts[2]), parts[3], parts[4]) for parts in lines
            if parts[0] == "end"}
    assert sorted(starts) == sorted(ends) == [f"web-{n:02d}" for n in range(1, 13)]
    assert all(roles == "web" for _, roles, _ in ends.values())
    assert {name: greeting for name, (_, _, greeting) in ends.items() if greeting != "normal"} \
        == {"web-03": "special"}
    moments = sorted([(t, 1) for t in starts.values()] + [(e[0], -1) for e in ends.values()])
    running = peak = 0
    for _, change in moments:
        running += change
        peak = max(peak, running)
    assert peak <= 4
    assert peak >= 2, "runs should overlap up to the limit"


def test_a_run_dispatched_right_after_another_ends_is_listed_while_it_runs(
        client, start_worker, server, cli, tmp_path):
    """The orchestrator writes a deployment's list of runs at most every SAVE_PERIOD: a run
    dispatched just after a save still shows while it runs, with no other run ending."""
    client.pools.add("Web Worker Pool")
    start_worker("Web Worker Pool")
    targets(client, 2)
    server()
    started, gate = tmp_path / "started", tmp_path / "gate"
    process = write(tmp_path, f"""
name: One at a time
steps:
  - name: Deploy
    location: worker-per-target
    pool: Web Worker Pool
    roles: [web]
    max_parallelism: 1
    script: |
      if [ "#{{Machine.Name}}" = web-02 ]; then
        touch {started}
        while [ ! -e {gate} ]; do sleep 0.05; done
      fi
""")
    deployment_id = cli("deploy", str(process), "--environment", "Test", "--detach"
                        ).stdout.strip()

    def runs() -> list[dict]:
        shown = json.loads(cli("deployments", "show", deployment_id, "--json").stdout)
        return shown["steps"][0]["runs"]

    wait_for(started.exists, 30, "the second target's run to start")
    listed = wait_for(lambda: len(shown := runs()) == 2 and shown, 10, "both runs to be listed")
    assert [(r["target"], r["state"]) for r in listed] == [("web-01", "Success"),
                                                           ("web-02", "Running")]
    gate.touch()
    wait_for(lambda: json.loads(cli("deployments", "show", deployment_id, "--json").stdout
                                )["state"] == "Success", 30, "the deployment to end")


def test_failed_step_skips_success_steps_and_runs_failure_and_always(client, start_worker,
                                                                     server, cli, tmp_path):
    client.pools.add("Database Worker Pool")
    start_worker("Database Worker Pool")
    server()
    process = write(tmp_path, """
name: Failing
steps:
  - {name: Migrate, location: worker, pool: Database Worker Pool, script: exit 3}
  - {name: Smoke test, location: worker, pool: Database Worker Pool, script: echo never}
  - {name: Roll back, location: worker, pool: Database Worker Pool, condition: failure,
     priority: high, script: echo rolling back}
  - {name: Notify, location: server, condition: always, script: echo notified}
""")
    code, result = deploy_json(cli, process)
    assert code == 1 and result["state"] == "Failed"
    states = {s["name"]: s["state"] for s in result["steps"]}
    assert states == {"Migrate": "Failed", "Smoke test": "Skipped", "Roll back": "Success",
                      "Notify": "Success"}
    migrate = result["steps"][0]["runs"][0]
    assert migrate["exit_code"] == 3 and migrate["state"] == "Failed"
    assert result["steps"][1]["runs"] == []
    assert result["steps"][3]["runs"][0]["pool"] == "builtin"
    run_priority = {s["name"]: client.step(s["runs"][0]["id"]).result().priority
                    for s in result["steps"] if s["runs"]}
    assert run_priority == {"Migrate": "normal", "Roll back": "high", "Notify": "normal"}


def test_retries_record_every_run(client, start_worker, server, cli, tmp_path):
    client.pools.add("Database Worker Pool")
    start_worker("Database Worker Pool")
    server()
    counter = tmp_path / "count"
    process = write(tmp_path, f"""
name: Flaky
steps:
  - name: Flaky
    location: worker
    pool: Database Worker Pool
    retries: 2
    script: |
      n=$(( $(cat {counter} 2>/dev/null || echo 0) + 1 )); echo $n > {counter}
      [ $n -ge 3 ]
""")
    code, result = deploy_json(cli, process)
    assert code == 0 and result["state"] == "Success"
    runs = result["steps"][0]["runs"]
    assert [r["state"] for r in runs] == ["Failed", "Failed", "Success"]
    assert counter.read_text().strip() == "3"


def test_outputs_flow_to_later_steps_and_no_script_runs_on_the_orchestrator(
        client, start_worker, server, cli, tmp_path, env):
    client.pools.add("Database Worker Pool")
    client.pools.add("Kubernetes Worker Pool")
    pool_workers = {start_worker("Database Worker Pool").name,
                    start_worker("Kubernetes Worker Pool").name}
    targets(client, 2)
    agents = []
    for name in ("web-01", "web-02"):
        agents.append(subprocess.Popen(
            [sys.executable, "-m", "workerpool", "agent", "start", "--target", name], env=env,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    try:
        wait_for(lambda: sum(w.state == "Healthy" for w in client.workers.list()
                             if w.pool.startswith("target:")) == 2, 60, "target agents")
        server()
        seen = shared_file(tmp_path / "seen")  # appended by workers, agents and the server
        process = write(tmp_path, f"""
name: Outputs
steps:
  - name: Migrate
    pool: Database Worker Pool
    script: set_workerpool_variable Version 1.2.3
  - name: Warm up
    location: worker-per-target
    pool: Kubernetes Worker Pool
    roles: [web]
    script: |
      echo "warm #{{Machine.Name}} #{{Action[Migrate].Output.Version}}" >> {seen}
      set_workerpool_variable Warmed "#{{Machine.Name}}"
  - name: On target
    location: target
    roles: [web]
    script: |
      echo "agent $WORKERPOOL_WORKER_NAME #{{Action[Warm up].Output[web-02].Warmed}}" >> {seen}
  - name: Report
    location: server
    script: |
      echo "server #{{Action[Migrate].Output.Version}}" >> {seen}
""")
        code, result = deploy_json(cli, process)
        assert code == 0, result
        lines = sorted(seen.read_text().splitlines())
        assert lines == ["agent web-01 web-02", "agent web-02 web-02", "server 1.2.3",
                         "warm web-01 1.2.3", "warm web-02 1.2.3"]
        registered = {w.name for w in client.workers.list()}
        runs = [r for s in result["steps"] for r in s["runs"]]
        assert all(r["worker"] in registered for r in runs)
        by_step = {s["name"]: {r["worker"] for r in s["runs"]} for s in result["steps"]}
        assert by_step["Migrate"] <= pool_workers and by_step["Warm up"] <= pool_workers
        assert by_step["On target"] == {"web-01", "web-02"}
        assert by_step["Report"] == {"builtin-worker-01"}
    finally:
        for proc in agents:
            proc.terminate()
            proc.wait(30)


def test_invalid_process_is_refused_before_anything_runs(client, server, cli, tmp_path, raw):
    server()
    process = write(tmp_path, """
name: Bad
steps:
  - {name: Migrate, location: somewhere, script: echo}
""")
    done = cli("deploy", str(process), "--environment", "Test")
    assert done.returncode == 2
    [line] = done.stderr.strip().splitlines()
    assert str(process) in line and "Migrate" in line and "location" in line
    assert raw.zcard(keys.DEPLOYMENTS_ALL) == 0


def test_deploy_without_a_server_is_refused(client, cli, tmp_path):
    process = write(tmp_path, "name: X\nsteps:\n  - {name: A, location: server, script: echo}\n")
    done = cli("deploy", str(process), "--environment", "Test")
    assert done.returncode == 2 and "workerpool server" in done.stderr


def test_python_deploy_variables_file_status_and_logs(client, start_worker, server, cli,
                                                      tmp_path):
    client.pools.add("Kubernetes Worker Pool")
    start_worker("Kubernetes Worker Pool")
    targets(client, 2)
    server()
    (tmp_path / "vars.yaml").write_text(
        "variables:\n"
        "  Region:\n    - {value: eu, environment: Test}\n    - {value: us, environment: Prod}\n"
        "  Token: {value: tok-3141, sensitive: true}\n")
    process = write(tmp_path, """
name: Vars
steps:
  - name: Show
    location: worker-per-target
    pool: Kubernetes Worker Pool
    roles: [web]
    script: |
      echo "#{Machine.Name} #{Region} #{Token}"
""")
    done = cli("deploy", str(process), "--environment", "Test", "--variables",
               str(tmp_path / "vars.yaml"))
    assert done.returncode == 0, done.stderr
    assert "Show [web-01] Success on kubernetes-worker-01" in done.stderr
    assert "Show [web-02] Success on kubernetes-worker-01" in done.stderr
    deployment_id = json.loads(cli("deployments", "list", "--json").stdout)[0]["id"]
    logs = cli("logs", deployment_id)
    assert logs.returncode == 0
    assert logs.stdout.splitlines() == ["web-01 eu ********", "web-02 eu ********"]
    assert "tok-3141" not in logs.stdout + logs.stderr

    from workerpool.spec.processes import load_process

    result = client.deploy(load_process(process), "Test", {"Region": "ap", "Token": "x"})
    assert result.state == "Success"
    assert set(result.to_json()) == {"id", "state", "environment", "message", "steps"}
    run_logs = [client.step(r.id).logs()[0].text for r in result.steps[0].runs]
    assert sorted(run_logs) == ["web-01 ap x", "web-02 ap x"]

    status = json.loads(cli("status", "--json").stdout)
    assert [t["name"] for t in status["targets"]] == ["web-01", "web-02"]
    assert all(t["agent"] == "none" for t in status["targets"])
    assert all(not p["workers"] or p["workers"][0]["pool"] == p["slug"]
               for p in status["pools"])


def test_the_server_runs_at_most_cap_deployments_at_once(client, start_worker, server, cli,
                                                         tmp_path):
    client.pools.add("Database Worker Pool")
    start_worker("Database Worker Pool", concurrency=2)
    server("--cap", "1")
    gates = [tmp_path / f"gate-{n}" for n in range(2)]
    started = [tmp_path / f"started-{n}" for n in range(2)]
    ids = []
    for n in range(2):
        process = tmp_path / f"process-{n}.yaml"
        process.write_text(f"""
name: Gated {n}
steps:
  - name: Wait
    pool: Database Worker Pool
    script: |
      touch {started[n]}
      while [ ! -e {gates[n]} ]; do sleep 0.05; done
""")
        ids.append(cli("deploy", str(process), "--environment", "Test", "--detach"
                       ).stdout.strip())

    def state(deployment_id: str) -> str:
        return json.loads(cli("deployments", "show", deployment_id, "--json").stdout)["state"]

    def running() -> list[int]:
        return [n for n in range(2) if started[n].exists()]

    [first] = wait_for(running, 30, "one deployment to start")  # type: ignore[misc]
    other = 1 - first
    # A free worker slot is there, but the cap keeps the second deployment queued.
    assert state(ids[other]) == "Queued" and running() == [first]
    gates[first].touch()
    wait_for(lambda: state(ids[other]) == "Running" and started[other].exists(), 30,
             "the second deployment to start after the first")
    assert state(ids[first]) == "Success"
    gates[other].touch()
    wait_for(lambda: state(ids[other]) == "Success", 30, "the second deployment to end")


def test_the_orchestrator_routes_without_reading_another_pools_workers(
        client, start_worker, settings, redis_url, raw, tmp_path):
    """Routing a deployment's runs reads the pool they go to, once per step however many runs
    the step has, and nothing of another pool: no command Redis runs while the orchestrator
    takes and runs a deployment to pool A (those inside its scripts too, as MONITOR shows
    them) names a key of pool B's space, though pool B has live registered workers. The
    orchestrator runs in this process: a `workerpool server` also reaps every pool."""
    client.pools.add("Pool A")
    client.pools.add("Pool B")
    worker = start_worker("Pool A")
    for _ in range(2):  # registered as `worker start` does, heartbeating for a minute
        info = WorkerInfo(name="", pool="pool-b", instance=uuid.uuid4().hex, host="test",
                          pid=1, syntaxes=("bash", "sh"))
        assert workers.register(raw, info, Heartbeat(time=0.0), None, "b-worker-", 60.0)
    assert len([w for w in client.workers.list() if w.pool == "pool-b"]) == 2
    targets(client, 3)
    process = load_process(write(tmp_path, """
name: Pool A only
steps:
  - name: Migrate
    pool: Pool A
    script: echo migrated
  - name: Warm up
    location: worker-per-target
    pool: Pool A
    roles: [web]
    max_parallelism: 3
    script: |
      echo "warm #{Machine.Name}"
"""))
    route_sha = raw.script_load(scripts.source("route"))  # no NOSCRIPT retry under MONITOR
    orchestrator = Orchestrator(StepStore(connect(redis_url), settings.result_ttl,
                                          Keyring.load(settings)), settings)
    stop = threading.Event()
    serving = threading.Thread(target=orchestrator.serve, args=(stop,), daemon=True)
    serving.start()
    try:
        wait_for(orchestrator.ready.is_set, 10, "the orchestrator to take deployments")
        def deployed() -> object:
            deployment_id = client.deployments.submit(process, "Test")
            return wait_for(lambda: (found := client.deployments.result(deployment_id)
                                     ).done and found, 60, "the deployment to end")

        result, seen = monitored(redis_url, deployed)
    finally:
        stop.set()
        serving.join(10)
    assert result.state == "Success", result
    runs = [run for step in result.steps for run in step.runs]
    assert len(runs) == 4 and {(run.pool, run.worker) for run in runs} == {("pool-a",
                                                                             worker.name)}
    assert not [c for c in seen if keys.space("pool-b") in c]
    assert any(c.startswith(f"ZRANGEBYSCORE {keys.live('pool-a')} ") for c in seen), seen
    # One read of pool A's route by the client's check, then one per step (not one per run).
    reads = [c for c in seen if c.startswith(f"EVALSHA {route_sha} 0 pool pool-a ")]
    assert len(reads) == 3, reads
