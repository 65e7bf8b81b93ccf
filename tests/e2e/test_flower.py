"""Flower tells workerpool's truth: each step state as Flower shows it, revoke and terminate from
Flower and the ``celery`` CLI cancelling the step, the Broker page and queue lengths, and
``/metrics`` behind Flower's login. A real Flower (``workerpool flower``) and real workers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from conftest import wait_for
from httpd import fetch, free_port

from workerpool import ScriptStep
from workerpool.core import credentials, keys

AUTH = "admin:s3cret"
SECRET = "hunter2-not-for-flower"


class Flower:
    def __init__(self, proc: subprocess.Popen[bytes], port: int, log: Path) -> None:
        self.proc, self.port, self.log = proc, port, log

    def get(self, path: str, auth: str | None = AUTH) -> tuple[int, str]:
        return fetch(f"http://127.0.0.1:{self.port}{path}", auth)

    def json(self, path: str) -> Any:
        status, body = self.get(path)
        assert status == 200, (path, status, body)
        return json.loads(body)

    def post(self, path: str) -> tuple[int, str]:
        return fetch(f"http://127.0.0.1:{self.port}{path}", AUTH, method="POST")

    def task(self, task_id: str) -> dict[str, Any]:
        status, body = self.get(f"/api/task/info/{task_id}")
        return json.loads(body) if status == 200 else {}

    def sees(self, *workers: Any) -> None:
        """Wait until Flower has had events from *workers*: its event receiver is subscribed
        (an event published before that is never Flower's)."""
        def seen() -> bool:
            data = json.loads(self.get("/workers?json=1")[1])["data"]
            return {w["hostname"].split("@")[0] for w in data} >= {w.name for w in workers}
        wait_for(seen, 30, "Flower to receive the workers' events")

    def state_of(self, task_id: str, state: str) -> dict[str, Any]:
        """Flower's info on *task_id* once it shows *state*."""
        return dict(wait_for(lambda: (info := self.task(task_id)).get("state") == state
                             and info, 30, f"Flower to show {task_id} {state}"))


@pytest.fixture
def flower(env: dict[str, str], tmp_path: Path) -> Iterator[Callable[..., Flower]]:
    started: list[subprocess.Popen[bytes]] = []

    def start(*extra: str) -> Flower:
        port = free_port()
        log = tmp_path / f"flower-{len(started)}.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "workerpool", "flower", "--port", str(port),
                 "--pools-port", str(free_port()), "--basic-auth", AUTH, *extra],
                env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
        started.append(proc)
        found = Flower(proc, port, log)

        def answers() -> bool:
            try:
                return found.get("/api/workers")[0] == 200
            except OSError:
                return False
        wait_for(answers, 30, "Flower to answer")
        return found

    yield start
    for proc in started:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_flower_shows_each_step_state_as_workerpool_does(client, start_worker, flower, env,
                                                         tmp_path):
    client.pools.add("Flower Pool")
    worker = start_worker("Flower Pool", concurrency=4)
    ui = flower()
    ui.sees(worker)
    ok = client.run(ScriptStep(script="echo fine", pool="Flower Pool", name="fine",
                               sensitive_variables={"Password": SECRET}))
    failed = client.run(ScriptStep(script="exit 3", pool="Flower Pool", name="three"))
    timed_out = client.run(ScriptStep(script="sleep 30", pool="Flower Pool", timeout=1))
    cancelled = client.run(ScriptStep(script="sleep 30", pool="Flower Pool"))
    wait_for(lambda: cancelled.result().state == "Running", 30, "the step to run")
    cancelled.cancel()
    for handle in (ok, failed, timed_out, cancelled):
        handle.wait(60)

    info = ui.state_of(ok.id, "SUCCESS")
    assert (info["name"], info["routing_key"]) == ("workerpool.run_step",
                                                    keys.queue_of("flower-pool"))
    assert info["worker"].startswith(worker.name + "@")
    assert "'state': 'Success'" in info["result"] and "'exit_code': 0" in info["result"]
    info = ui.state_of(failed.id, "FAILURE")
    assert "Failed: exit code 3" in info["exception"] and worker.name in info["exception"]
    info = ui.state_of(timed_out.id, "FAILURE")
    assert "TimedOut: exit code" in info["exception"]
    info = ui.state_of(cancelled.id, "REVOKED")
    listed = ui.json("/api/tasks")
    assert {tid: t["state"] for tid, t in listed.items()} == {
        ok.id: "SUCCESS", failed.id: "FAILURE", timed_out.id: "FAILURE",
        cancelled.id: "REVOKED"}
    assert SECRET not in json.dumps(listed)
    assert SECRET not in json.dumps([ui.task(h.id) for h in (ok, failed, timed_out, cancelled)])


def test_flower_shows_steps_the_reaper_ends_as_failures(client, start_worker, flower, tmp_path):
    client.pools.add("Flower Pool")
    client.pools.add("Nobody Pool")
    worker = start_worker("Flower Pool")
    ui = flower()
    ui.sees(worker)
    unleased = client.run(ScriptStep(script="true", pool="Nobody Pool", name="unleased",
                                     lease_timeout=1))
    lost = client.run(ScriptStep(script=marker_script(tmp_path, "lost"), pool="Flower Pool",
                                 name="lost"))
    wait_for((tmp_path / "lost.pgid").exists, 30, "the step's script")
    worker.proc.kill()  # no warm stop: only the reaper can end its step
    assert unleased.wait(30).state == "LeaseTimeout"  # waiting, the client reaps
    assert lost.wait(60).state == "WorkerLost"

    info = ui.state_of(unleased.id, "FAILURE")
    assert info["exception"].startswith("LeaseTimeout: exit code none")
    assert info["name"] == "workerpool.run_step" and "step='unleased'" in info["args"]
    assert info["routing_key"] == keys.queue_of("nobody-pool")
    info = ui.state_of(lost.id, "FAILURE")
    assert info["exception"].startswith(f"WorkerLost: exit code none, worker {worker.name}")
    assert info["worker"].startswith(worker.name + "@")  # the worker Flower saw run it
    listed = ui.json("/api/tasks")
    assert {tid: t["state"] for tid, t in listed.items()} == {unleased.id: "FAILURE",
                                                               lost.id: "FAILURE"}


def marker_script(folder: Path, name: str, seconds: int = 60) -> str:
    """A script that writes its process group id to *folder*/<name>, then sleeps."""
    return f"echo $(ps -o pgid= $$) > {folder}/{name}.pgid; sleep {seconds}"


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False


def test_revoke_and_terminate_from_flower_cancel_the_step(client, start_worker, flower,
                                                          tmp_path):
    client.pools.add("Flower Pool")
    worker = start_worker("Flower Pool", concurrency=1)
    ui = flower()
    ui.sees(worker)
    running = client.run(ScriptStep(script=marker_script(tmp_path, "running"),
                                    pool="Flower Pool"))
    queued = client.run(ScriptStep(script=f"touch {tmp_path}/queued-ran", pool="Flower Pool"))
    pgid_file = tmp_path / "running.pgid"
    wait_for(pgid_file.exists, 30, "the running step's script")
    pgid = int(pgid_file.read_text())
    assert queued.result().state == "Queued"  # the worker's one slot is taken

    status, body = ui.post(f"/api/task/revoke/{queued.id}")  # Flower's Revoke button
    assert status == 200, body
    assert queued.wait(10).state == "Cancelled"
    ui.state_of(queued.id, "REVOKED")
    status, body = ui.post(f"/api/task/revoke/{running.id}?terminate=true")  # Terminate
    assert status == 200, body
    result = running.wait(30)
    assert result.state == "Cancelled"
    assert "process group was killed" in result.message
    assert not group_alive(pgid)
    ui.state_of(running.id, "REVOKED")
    assert not (tmp_path / "queued-ran").exists()
    after = client.run(ScriptStep(script="echo next", pool="Flower Pool"))
    assert after.wait(30).state == "Success"


def celery(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    """The stock ``celery`` command line, as an operator runs it against workerpool's Redis."""
    return subprocess.run([sys.executable, "-m", "celery", "-b", url, *args],
                          capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)


def state_of(client, worker) -> tuple[str, str]:
    found = [w for w in client.workers.list() if w.name == worker.name]
    return (found[0].state, found[0].heartbeat.reason if found[0].heartbeat else "") \
        if found else ("gone", "")


def test_the_celery_cli_acts_on_pools_as_documented(client, start_worker, env, tmp_path):
    admin = env["WORKERPOOL_REDIS_URL"]
    client.pools.add("Flower Pool")
    worker = start_worker("Flower Pool", concurrency=1)
    queue = keys.queue_of("flower-pool")

    pong = celery(admin, "inspect", "ping", "-j")
    assert pong.returncode == 0, pong.stderr
    assert any(node.startswith(worker.name + "@") for node in json.loads(pong.stdout))
    queues = json.loads(celery(admin, "inspect", "active_queues", "-j").stdout)
    assert [[q["name"] for q in qs] for qs in queues.values()] == [[queue]]

    held = celery(admin, "control", "cancel_consumer", queue)
    assert held.returncode == 0 and f"no longer consuming from {queue}" in held.stdout
    wait_for(lambda: state_of(client, worker)[0] == "Unhealthy", 15, "the worker to stop")
    assert state_of(client, worker)[1].startswith("consumer cancelled by control command")
    waiting = client.run(ScriptStep(script="echo later", pool="Flower Pool"))
    other = celery(admin, "control", "add_consumer", keys.queue_of("another-pool"))
    assert "consumes only its pool's queue" in other.stdout + other.stderr
    assert waiting.result().state == "Queued"
    resumed = celery(admin, "control", "add_consumer", queue)
    assert resumed.returncode == 0, resumed.stderr
    assert waiting.wait(30).state == "Success"
    assert state_of(client, worker) == ("Healthy", "")

    running = client.run(ScriptStep(script=marker_script(tmp_path, "cli"), pool="Flower Pool"))
    queued = client.run(ScriptStep(script=f"touch {tmp_path}/cli-queued-ran",
                                   pool="Flower Pool"))
    wait_for((tmp_path / "cli.pgid").exists, 30, "the running step's script")
    pgid = int((tmp_path / "cli.pgid").read_text())
    revoked = celery(admin, "control", "revoke", queued.id)
    assert revoked.returncode == 0 and "cancelled" in revoked.stdout, revoked.stderr
    assert queued.wait(10).state == "Cancelled"
    terminated = celery(admin, "control", "terminate", "SIGKILL", running.id)
    assert terminated.returncode == 0, terminated.stderr
    assert running.wait(30).state == "Cancelled"
    assert not group_alive(pgid)
    assert not (tmp_path / "cli-queued-ran").exists()

    # Celery's shutdown command stops the worker before it can reply, so the CLI always says
    # "No nodes replied" (exit 69): what counts is the worker's warm stop.
    celery(admin, "control", "shutdown")
    assert worker.proc.wait(30) == 0
    assert state_of(client, worker) == ("gone", "")


def test_a_pool_login_cannot_send_control_commands(client, start_worker, raw, redis_url):
    client.pools.add("Flower Pool")
    client.pools.add("Other Pool")
    attacker = start_worker("Flower Pool")
    victim = start_worker("Other Pool")
    sent = celery(attacker.url, "control", "shutdown")
    assert sent.returncode != 0 and "no permissions" in sent.stderr
    # Without the CLI's reply queue in the way: the broadcast itself, as kombu publishes it.
    login = redis.Redis.from_url(attacker.url)
    db = redis_url.rsplit("/", 1)[1]
    with pytest.raises(redis.exceptions.NoPermissionError):
        login.publish(f"/{db}.celery.pidbox", b"{}")
    login.close()
    assert state_of(client, victim) == ("Healthy", "")
    assert state_of(client, attacker) == ("Healthy", "")
    assert victim.proc.poll() is None and attacker.proc.poll() is None


def test_broker_page_and_queue_lengths_show_every_pool(client, start_worker, flower):
    client.pools.add("Served Pool")
    client.pools.add("Idle Pool")
    start_worker("Served Pool")
    ui = flower()
    for _ in range(2):  # no worker of this pool: they wait in its queue
        client.run(ScriptStep(script="true", pool="Idle Pool"))
    served = client.run(ScriptStep(script="true", pool="Served Pool"))
    assert served.wait(30).state == "Success"

    lengths = {q["name"]: q["messages"] for q in ui.json("/api/queues/length")["active_queues"]}
    assert lengths == {keys.queue_of("default-worker-pool"): 0, keys.BUILTIN_QUEUE: 0,
                       keys.queue_of("served-pool"): 0, keys.queue_of("idle-pool"): 2}
    status, page = ui.get("/broker")
    assert status == 200
    assert keys.queue_of("idle-pool") in page and keys.queue_of("served-pool") in page
    assert ui.get("/broker", auth=None)[0] == 401


def test_flower_metrics_need_its_login_unless_made_public(flower):
    ui = flower()
    assert ui.get("/metrics", auth=None)[0] == 401
    assert ui.get("/metrics", auth="admin:wrong")[0] == 401
    status, text = ui.get("/metrics")
    assert status == 200 and "flower_events_total" in text
    public = flower("--public-metrics")
    status, text = public.get("/metrics", auth=None)
    assert status == 200 and "flower_events_total" in text
    assert public.get("/api/tasks", auth=None)[0] == 401


def test_a_login_issued_before_remote_control_still_runs_steps(client, start_worker, raw,
                                                               env):
    client.pools.add("Flower Pool")
    # The rules pool logins had before workers listened for control commands.
    rules = [r for r in credentials.worker_rules("flower-pool") if not r.startswith("(")
             and "pidbox" not in r]
    raw.execute_command("ACL", "SETUSER", "legacy-flower-pool", "reset", "on", ">legacy-pw",
                        *rules)
    url = credentials.url_for(env["WORKERPOOL_REDIS_URL"], "legacy-flower-pool", "legacy-pw")
    try:
        worker = start_worker("Flower Pool", extra_env={"WORKERPOOL_REDIS_URL": url})
        step = client.run(ScriptStep(script="echo still", pool="Flower Pool"))
        assert step.wait(30).state == "Success"
        assert state_of(client, worker) == ("Healthy", "")
        worker.proc.terminate()
        assert worker.proc.wait(30) == 0
        log = (Path(env["WORKERPOOL_HOME"]).parent / "worker-0.log").read_text()
        assert "may not listen for Celery control commands" in log
        assert "`workerpool pool credentials 'Flower Pool'` issues one that may" in log
        assert "NOPERM" not in log and "Traceback" not in log
    finally:
        raw.execute_command("ACL", "DELUSER", "legacy-flower-pool")
