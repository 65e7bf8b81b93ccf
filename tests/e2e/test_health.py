"""Pool health checks: required tools and check scripts, on real workers; the Offline bound."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import redis
from conftest import HEARTBEAT, TOOL, Worker, put_tool, wait_for

from workerpool import Client, ScriptStep
from workerpool.core import keys, messages
from workerpool.core.settings import Settings
from workerpool.core.workers import WorkerInfo
from workerpool.worker.identity import register
from workerpool.worker.isolation.users import ScriptUsers
from workerpool.worker.runtime import Runtime

Cli = Callable[..., subprocess.CompletedProcess[str]]
StartWorker = Callable[..., Worker]

HEALTH_INTERVAL = 0.5
POOL = "Kubernetes Worker Pool"
QUEUE = keys.pool_queue("kubernetes-worker-pool")






def worker_env(tools: Path) -> dict[str, str]:
    return {"PATH": f"{tools}{os.pathsep}{os.environ['PATH']}",
            "WORKERPOOL_HEALTH_INTERVAL": str(HEALTH_INTERVAL)}


def info(client: Client, worker: Worker) -> WorkerInfo:
    return next(w for w in client.workers.list() if w.name == worker.name)


def reason(client: Client, worker: Worker) -> str:
    heartbeat = info(client, worker).heartbeat
    return heartbeat.reason if heartbeat else "(offline)"


def wait_state(client: Client, worker: Worker, state: str, timeout: float = 10) -> None:
    wait_for(lambda: info(client, worker).state == state, timeout, f"{worker.name} to be {state}")


def stays_queued(handle_state: Callable[[], str], raw: redis.Redis) -> None:
    """Across several health intervals, the step is neither claimed nor taken off its queue."""
    deadline = time.monotonic() + 4 * HEALTH_INTERVAL
    while time.monotonic() < deadline:
        assert handle_state() == "Queued"
        assert raw.llen(QUEUE) == 1
        time.sleep(0.05)


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, (result.stdout, result.stderr)
    return result.stdout


def refused(result: subprocess.CompletedProcess[str], *words: str) -> None:
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert result.stderr.startswith("workerpool: error: ") and "Traceback" not in result.stderr
    for word in words:
        assert word in result.stderr, (word, result.stderr)


# --- pool definitions ----------------------------------------------------------------------------


def test_pool_requirements_round_trip_through_the_cli(cli: Cli, client: Client,
                                                      tmp_path: Path) -> None:
    script = tmp_path / "check.sh"
    script.write_text("test -S /var/run/docker.sock || { echo no docker; exit 1; }\n")
    ok(cli("pool", "add", POOL, "--requires", "kubectl, az,kubectl",
           "--health-check-file", str(script)))
    shown = json.loads(ok(cli("pool", "show", POOL, "--json")))
    assert shown["requires"] == ["kubectl", "az"]
    assert shown["health_check"] == "test -S /var/run/docker.sock || { echo no docker; exit 1; }"
    table = ok(cli("pool", "show", POOL))
    assert "requires: kubectl, az" in table
    assert "health check:\n  test -S /var/run/docker.sock" in table

    ok(cli("pool", "edit", POOL, "--requires", "helm", "--health-check", ""))
    pool = client.pools.get(POOL)
    assert (pool.requires, pool.health_check) == (("helm",), "")
    ok(cli("pool", "edit", POOL, "--description", "k8s"))
    assert client.pools.get(POOL).requires == ("helm",)  # kept when not given
    ok(cli("pool", "edit", POOL, "--requires", ""))
    assert json.loads(ok(cli("pool", "show", POOL, "--json")))["requires"] == []


@pytest.mark.parametrize("tools", ["kubectl,/usr/bin/az", "kube ctl", "az\tcli"])
def test_bad_tool_names_are_refused(cli: Cli, client: Client, tools: str) -> None:
    refused(cli("pool", "add", POOL, "--requires", tools), "is not a command name")
    assert [p.name for p in client.pools.list()] == ["Default Worker Pool"]


def test_health_check_and_its_file_are_exclusive(cli: Cli, tmp_path: Path) -> None:
    script = tmp_path / "check.sh"
    script.write_text("exit 0\n")
    refused(cli("pool", "add", POOL, "--health-check", "exit 0", "--health-check-file",
                str(script)), "not both")


# --- real workers --------------------------------------------------------------------------------


def test_tool_leaving_the_path_stops_consumption_until_it_returns(
        client: Client, start_worker: StartWorker, tools: Path, raw: redis.Redis,
        cli: Cli) -> None:
    client.pools.add(POOL, requires=[TOOL])
    put_tool(tools)
    worker = start_worker(POOL, extra_env=worker_env(tools))
    assert client.run(ScriptStep("echo ok", pool=POOL)).wait(timeout=20).state == "Success"

    (tools / TOOL).unlink()
    wait_state(client, worker, "Unhealthy")
    # At once: Unhealthy is published only when nothing more is fetched, not even by a BRPOP
    # the worker sent before it stopped consuming.
    step = client.run(ScriptStep("echo ran", pool=POOL))
    stays_queued(lambda: step.result().state, raw)
    # Never popped: a message taken and put back (kombu requeues one that reaches a cancelled
    # consumer) comes back marked redelivered.
    assert raw.lrange(QUEUE, 0, -1) == [messages.for_record(step.id, 0,
                                                            client.store.record(step.id))]
    assert reason(client, worker) == f"{TOOL} is not on PATH"
    listed = ok(cli("worker", "list"))
    assert listed.splitlines()[0].split()[-1] == "REASON"
    assert "Unhealthy" in listed and f"{TOOL} is not on PATH" in listed
    assert json.loads(ok(cli("worker", "list", "--json")))[0]["reason"] == f"{TOOL} is not on PATH"

    put_tool(tools)
    wait_state(client, worker, "Healthy")
    assert reason(client, worker) == ""
    result = step.wait(timeout=20)
    assert (result.state, result.worker) == ("Success", worker.name)


def test_running_step_finishes_after_the_worker_turns_unhealthy(
        client: Client, start_worker: StartWorker, tools: Path, tmp_path: Path) -> None:
    client.pools.add(POOL, requires=[TOOL])
    put_tool(tools)
    worker = start_worker(POOL, extra_env=worker_env(tools))
    flag = tmp_path / "flag"
    step = client.run(ScriptStep(f"while [ ! -f {flag} ]; do sleep 0.05; done; echo finished",
                                 pool=POOL))
    wait_for(lambda: step.result().state == "Running", 20, "step to run")
    (tools / TOOL).unlink()
    wait_state(client, worker, "Unhealthy")
    flag.touch()
    result = step.wait(timeout=20)
    assert result.state == "Success" and [e.text for e in result.log][:1] == ["finished"]


def test_worker_that_starts_unhealthy_takes_nothing(
        client: Client, start_worker: StartWorker, tools: Path, raw: redis.Redis) -> None:
    client.pools.add(POOL, requires=[TOOL])
    step = client.run(ScriptStep("echo ran", pool=POOL))  # waiting before the worker starts
    worker = start_worker(POOL, extra_env=worker_env(tools), expect="Unhealthy")
    assert reason(client, worker) == f"{TOOL} is not on PATH"
    stays_queued(lambda: step.result().state, raw)
    put_tool(tools)
    wait_state(client, worker, "Healthy")
    assert step.wait(timeout=20).state == "Success"


def test_failing_check_script_and_pool_edits_apply_without_restart(
        client: Client, start_worker: StartWorker, tools: Path, cli: Cli) -> None:
    client.pools.add(POOL, health_check='echo "kubeconfig expired" >&2; exit 1')
    worker = start_worker(POOL, extra_env=worker_env(tools), expect="Unhealthy")
    assert reason(client, worker) == "kubeconfig expired"

    ok(cli("pool", "edit", POOL, "--health-check", "", "--requires", "wp-other-tool"))
    wait_for(lambda: reason(client, worker) == "wp-other-tool is not on PATH", 10,
             "the new requirement to apply")
    assert info(client, worker).state == "Unhealthy"
    ok(cli("pool", "edit", POOL, "--requires", ""))
    wait_state(client, worker, "Healthy")
    assert client.run(ScriptStep("echo ok", pool=POOL)).wait(timeout=20).state == "Success"


def test_unhealthy_runtime_hands_a_message_back_unclaimed(
        client: Client, settings: Settings, raw: redis.Redis) -> None:
    """Belt and braces: a message that reaches an unhealthy worker goes back, unclaimed."""
    client.pools.add(POOL, requires=[TOOL])  # not on this test process's PATH
    identity = register(client.redis, settings, "kubernetes-worker-pool", None, 1)
    runtime = Runtime(settings, client.url, identity,
                      ScriptUsers(settings.script_user, 1, settings.script_uids))
    try:
        assert runtime.check_health() is False
        step = client.run(ScriptStep("echo ran", pool=POOL))
        message = raw.rpop(QUEUE)  # what the worker's BRPOP would have taken
        runtime.execute(step.id, 0)
        assert step.result().state == "Queued"
        assert raw.lrange(QUEUE, 0, -1) == [message]
        assert raw.zscore(keys.running("kubernetes-worker-pool"), step.id) is None
    finally:
        runtime.shutdown()


def test_silent_worker_is_offline_within_two_heartbeat_intervals(
        client: Client, start_worker: StartWorker) -> None:
    client.pools.add(POOL)
    worker = start_worker(POOL)
    os.kill(worker.pid, signal.SIGSTOP)  # alive, but no more heartbeats
    stopped = time.monotonic()
    try:
        wait_state(client, worker, "Offline", timeout=10)
        assert time.monotonic() - stopped <= 2 * HEARTBEAT + 0.5
    finally:
        os.kill(worker.pid, signal.SIGCONT)
    wait_state(client, worker, "Healthy", timeout=5 * HEARTBEAT)
    assert client.run(ScriptStep("echo back", pool=POOL)).wait(timeout=20).worker == worker.name
