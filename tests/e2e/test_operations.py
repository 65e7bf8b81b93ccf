"""Operating pools: pause and resume a pool, drain a worker, one-step workers (``--max-steps``),
end to end against real workers and Redis."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

from conftest import HEARTBEAT, one_line_error, wait_for
from httpd import fetch

from workerpool import ScriptStep
from workerpool.core import keys
from workerpool.server import web


def beats_after(raw, worker, moment: float, count: int = 2) -> None:
    """Wait until *worker* has heartbeat *count* intervals after *moment*: its reaper and its
    queue gate have had that long to act (a condition, not a sleep)."""
    slug = worker.pool_slug

    def beaten() -> bool:
        found = [json.loads(v) for v in raw.hvals(keys.workers(slug))]
        instance = next(w["instance"] for w in found if w["name"] == worker.name)
        beat = raw.get(keys.heartbeat(slug, instance))
        return bool(beat) and json.loads(beat)["time"] > moment + count * HEARTBEAT
    wait_for(beaten, 30, f"{worker.name} to heartbeat {count} intervals on")


def pools_page(redis_url: str) -> str:
    """The pools page's HTML, from a page server started for it."""
    server = web.start(redis_url, 0)
    try:
        return fetch(f"http://127.0.0.1:{server.port}/")[1]
    finally:
        web.stop(server)


def state(client, worker) -> str:
    found = [w for w in client.workers.list() if w.name == worker.name]
    return found[0].state if found else "gone"


def test_a_paused_pool_takes_steps_runs_none_and_resumes_them(client, start_worker, raw, cli,
                                                              redis_url, tmp_path):
    client.pools.add("Ops Pool")
    workers = [start_worker("Ops Pool", concurrency=2) for _ in range(2)]
    gate = tmp_path / "go"
    running = client.run(ScriptStep(script=f"while [ ! -e {gate} ]; do sleep 0.05; done",
                                    pool="Ops Pool", name="already running"))
    wait_for(lambda: running.result().state == "Running", 30, "the first step to run")

    paused = cli("pool", "pause", "Ops Pool", "--reason", "database maintenance", "--json")
    assert paused.returncode == 0, paused.stderr
    assert json.loads(paused.stdout)["paused"] is True
    moment = time.time()
    # One file per step: scripts run as users of their own, which cannot write each other's.
    waiting = [client.run(ScriptStep(script=f"echo {i} > {tmp_path}/ran-{i}", pool="Ops Pool",
                                     lease_timeout=3)) for i in range(3)]
    for worker in workers:
        beats_after(raw, worker, moment, count=int(4 / HEARTBEAT))  # past the lease timeout
    assert [w.result().state for w in waiting] == ["Queued"] * 3
    assert not list(tmp_path.glob("ran-*"))
    assert {state(client, w) for w in workers} == {"Healthy"}

    listed = {p["name"]: p for p in json.loads(cli("pool", "list", "--json").stdout)}
    ops = listed["Ops Pool"]
    assert (ops["paused"], ops["paused_reason"], ops["queued"]) == \
        (True, "database maintenance", 3)
    assert abs(ops["paused_since"] - moment) < 30
    status = json.loads(cli("status", "--json").stdout)
    assert next(p for p in status["pools"] if p["name"] == "Ops Pool")["paused"] is True
    assert "Ops Pool (paused)" in cli("status").stdout
    assert 'data-paused="1">Paused: database maintenance' in pools_page(redis_url)

    restarted = start_worker("Ops Pool")  # a worker that starts while the pool is paused
    beats_after(raw, restarted, time.time())
    assert [w.result().state for w in waiting] == ["Queued"] * 3

    gate.touch()
    assert running.wait(30).state == "Success"  # running steps go on
    resumed = cli("pool", "resume", "Ops Pool")
    assert resumed.returncode == 0, resumed.stderr
    assert [w.wait(30).state for w in waiting] == ["Success"] * 3
    assert sorted(f.read_text().strip() for f in tmp_path.glob("ran-*")) == ["0", "1", "2"]
    assert json.loads(cli("pool", "show", "Ops Pool", "--json").stdout)["paused"] is False

    unknown = cli("pool", "pause", "No Such Pool")
    assert "no pool named 'No Such Pool'" in one_line_error(unknown)
    long_reason = cli("pool", "pause", "Ops Pool", "--reason", "x" * 201)
    assert "at most 200 characters" in one_line_error(long_reason)


def test_draining_a_worker_finishes_its_step_and_stops_it(client, start_worker, cli, env,
                                                          redis_url, tmp_path):
    client.pools.add("Ops Pool")
    worker = start_worker("Ops Pool", concurrency=2)
    gate = tmp_path / "go"
    step = client.run(ScriptStep(script=f"while [ ! -e {gate} ]; do sleep 0.05; done; "
                                        "echo finished", pool="Ops Pool"))
    wait_for(lambda: step.result().state == "Running", 30, "the step to run")
    drain = subprocess.Popen([sys.executable, "-m", "workerpool", "worker", "drain",
                              worker.name], env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    wait_for(lambda: state(client, worker) == "Draining", 30, "the worker to drain")
    listed = cli("worker", "list")
    assert f"{worker.name}" in listed.stdout and "Draining" in listed.stdout
    row = next(ln for ln in cli("status").stdout.splitlines() if ln.startswith("Ops Pool"))
    assert "1 Draining" in row, row  # counted by state
    one = cli("status", "--pool", "Ops Pool").stdout.splitlines()
    assert any(ln.startswith(worker.name) and ln.split()[1] == "Draining" for ln in one), one
    assert '<span class="state draining">Draining</span>' in pools_page(redis_url)
    later = client.run(ScriptStep(script="echo later", pool="Ops Pool"))
    timed_out = cli("worker", "drain", worker.name, "--timeout", "0.5")
    assert timed_out.returncode == 1 and "still draining after 0.5s" in timed_out.stderr
    assert worker.proc.poll() is None and later.result().state == "Queued"

    gate.touch()
    result = step.wait(30)
    assert result.state == "Success" and "finished" in [e.text for e in step.logs()]
    _, err = drain.communicate(timeout=30)
    assert drain.returncode == 0, err
    assert f"{worker.name} drained and stopped" in err
    assert worker.proc.wait(30) == 0
    assert state(client, worker) == "gone"  # deregistered
    assert later.result().state == "Queued"  # a drained worker took nothing new
    offline = cli("worker", "drain", worker.name)
    assert "no worker named" in one_line_error(offline)


def test_a_worker_with_max_steps_exits_after_that_many(client, start_worker, tmp_path):
    client.pools.add("Ops Pool")
    worker = start_worker("Ops Pool", extra_env={"WORKERPOOL_MAX_STEPS": "2"})
    steps = [client.run(ScriptStep(script=f"echo {i} > {tmp_path}/ran-{i}",
                                   pool="Ops Pool")) for i in range(3)]
    assert worker.proc.wait(60) == 0
    states = sorted(s.result().state for s in steps)
    assert states == ["Queued", "Success", "Success"]
    assert len(list(tmp_path.glob("ran-*"))) == 2


def test_a_pool_cap_holds_across_workers_under_a_race(client, start_worker, cli, tmp_path):
    client.pools.add("Ops Pool")
    capped = cli("pool", "edit", "Ops Pool", "--max-running", "3", "--json")
    assert json.loads(capped.stdout)["max_running"] == 3, capped.stderr
    row = next(ln for ln in cli("status").stdout.splitlines() if ln.startswith("Ops Pool"))
    assert row.rstrip().endswith("0 (max 3)")  # RUNNING, with its cap
    for _ in range(2):  # 20 free slots for a cap of 3
        start_worker("Ops Pool", concurrency=10)
    # Each script notes when it starts and ends, by the machine's clock, in a file of its own
    # (scripts run as users of their own, which cannot append to each other's files).
    script = (f'echo "start $(date +%s.%N)" >> {tmp_path}/times-$WORKERPOOL_STEP_ID; '
              f'sleep 0.3; echo "end $(date +%s.%N)" >> {tmp_path}/times-$WORKERPOOL_STEP_ID')
    steps = [client.run(ScriptStep(script=script, pool="Ops Pool")) for _ in range(12)]
    results = [s.wait(60) for s in steps]
    assert [r.state for r in results] == ["Success"] * 12, [r.message for r in results]
    events = sorted((float(t), +1 if kind == "start" else -1)
                    for f in tmp_path.glob("times-*")
                    for kind, t in (line.split() for line in f.read_text().splitlines()))
    assert len(events) == 24
    running = peak = 0
    for _, change in sorted(events, key=lambda e: (e[0], e[1])):  # an end before a start
        running += change
        peak = max(peak, running)
    assert peak == 3, events

    negative = cli("pool", "edit", "Ops Pool", "--max-running", "-1")
    assert "--max-running" in one_line_error(negative)
    cli("pool", "edit", "Ops Pool", "--max-running", "0")
    assert client.pools.get("Ops Pool").max_running == 0


def test_draining_an_offline_worker_is_refused(client, start_worker, cli):
    client.pools.add("Ops Pool")
    worker = start_worker("Ops Pool")
    worker.proc.kill()  # no deregistration: it stays listed, Offline once its heartbeat lapses
    worker.proc.wait()
    wait_for(lambda: state(client, worker) == "Offline", 30, "the worker to be Offline")
    refused = cli("worker", "drain", worker.name)
    assert f"worker {worker.name!r} is Offline" in one_line_error(refused)


def test_sigterm_is_a_warm_stop(client, start_worker, raw, tmp_path):
    """SIGTERM, as ``systemctl stop`` and ``docker stop`` send it: the worker shows Draining,
    its running step ends Success within the shutdown grace, a step enqueued after the signal
    stays Queued, and the worker deregisters and exits 0."""
    client.pools.add("Ops Pool")
    worker = start_worker("Ops Pool", concurrency=2,  # a free slot the later step could take
                          extra_env={"WORKERPOOL_SHUTDOWN_GRACE": "60"})
    gate = tmp_path / "go"
    step = client.run(ScriptStep(script=f"while [ ! -e {gate} ]; do sleep 0.05; done; "
                                        "echo finished", pool="Ops Pool"))
    wait_for(lambda: step.result().state == "Running", 30, "the step to run")
    worker.proc.send_signal(signal.SIGTERM)
    wait_for(lambda: state(client, worker) == "Draining", 30, "the worker to show Draining")
    later = client.run(ScriptStep(script="echo later", pool="Ops Pool"))
    beats_after(raw, worker, time.time())
    assert worker.proc.poll() is None and later.result().state == "Queued"

    gate.touch()
    result = step.wait(30)
    assert result.state == "Success" and "finished" in [e.text for e in step.logs()]
    assert worker.proc.wait(30) == 0
    assert state(client, worker) == "gone"  # deregistered
    assert later.result().state == "Queued"  # never taken
    assert not raw.hget(keys.step(later.id), "worker")


def test_pausing_during_a_burst_starts_no_step_after_the_pause(client, start_worker, raw, cli,
                                                                tmp_path):
    client.pools.add("Ops Pool")
    workers = [start_worker("Ops Pool", concurrency=4) for _ in range(2)]
    # One file per step, appended to by each run of it (scripts run as users of their own).
    script = f'echo "$(date +%s.%N)" >> {tmp_path}/ran-$WORKERPOOL_STEP_ID; sleep 0.2'
    steps = [client.run(ScriptStep(script=script, pool="Ops Pool")) for _ in range(40)]

    def started() -> int:
        pipe = raw.pipeline(transaction=False)
        for s in steps:
            pipe.hget(keys.step(s.id), "started_at")
        return sum(bool(t) for t in pipe.execute())

    wait_for(lambda: started() >= 3, 30, "a few steps of the burst to start")
    paused = cli("pool", "pause", "Ops Pool")
    assert paused.returncode == 0, paused.stderr
    moment = time.time()  # the claim reads the pool's record in its own script: no slack
    since = client.pools.get("Ops Pool").paused_since
    wait_for(lambda: all(s.result().state != "Running" for s in steps), 30,
             "the steps running at the pause to end")
    for worker in workers:
        beats_after(raw, worker, time.time())

    results = [s.result() for s in steps]
    ran = [r for r in results if r.started_at is not None]
    assert ran and max(r.started_at for r in ran) <= moment, (moment, sorted(
        r.started_at for r in ran)[-3:])
    assert [r for r in ran if r.finished_at and r.finished_at > since]  # running at the pause
    assert {r.state for r in ran} == {"Success"}, [r.message for r in ran]
    waiting = [r for r in results if r.started_at is None]
    assert waiting and {r.state for r in waiting} == {"Queued"}
    assert len(list(tmp_path.glob("ran-*"))) == len(ran)

    resumed = cli("pool", "resume", "Ops Pool")
    assert resumed.returncode == 0, resumed.stderr
    results = [s.wait(60) for s in steps]
    assert [r.state for r in results] == ["Success"] * 40, [r.message for r in results]
    files = {f.name.removeprefix("ran-"): f for f in tmp_path.glob("ran-*")}
    assert set(files) == {s.id for s in steps}
    assert {len(f.read_text().splitlines()) for f in files.values()} == {1}  # exactly once
