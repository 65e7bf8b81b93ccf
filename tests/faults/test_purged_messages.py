"""Messages purged with the real ``celery purge`` (or lost): status counts the Queued step
records, shows how many have no message, and the reaper pushes each message again within the
documented bound (three heartbeat intervals while the pool is reaped), once; a step whose
message is on its way to a worker is never pushed twice."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import redis
from conftest import HEARTBEAT, CountingConnection, TaskEvents, shared_file, wait_for
from httpd import fetch
from promtext import value

from workerpool import ScriptStep
from workerpool.core import keys
from workerpool.core.leases import Leases
from workerpool.core.messages import task_id
from workerpool.core.store import StepStore
from workerpool.server import web

CELERY = Path(sys.executable).parent / "celery"
BOUND = 3 * HEARTBEAT  # docs/reliability.md: pushed again within three heartbeat intervals
SLACK = 2.0  # a shared 2-core machine: the reaping thread may be scheduled late


def append_id(runs: Path) -> str:
    return f'echo "$WORKERPOOL_STEP_ID" >> {runs}'


def purge(redis_url: str, queue: str, expected: int) -> None:
    """``celery purge`` of *queue*, as an operator would run it, which removed *expected*."""
    done = subprocess.run([str(CELERY), "-b", redis_url, "purge", "-Q", queue, "-f"],
                          capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr
    assert f"{expected} messages" in done.stdout, done.stdout


def test_purged_messages_are_counted_and_pushed_again_once(client, cli, start_worker, redis_url,
                                                          raw, tmp_path):
    client.pools.add("Parked")  # no worker yet
    # Reaped before, as a pool that had workers would be: its check for messages lost in a
    # Redis restart (once per Redis run, and the session's Redis has just started) is done.
    client.reap(["parked"])
    runs = shared_file(tmp_path / "runs.txt")
    handles = [client.run(ScriptStep(script=append_id(runs), pool="Parked")) for _ in range(3)]
    queue = keys.pool_queue("parked")
    assert raw.llen(queue) == 3
    purge(redis_url, queue, 3)
    assert raw.llen(queue) == 0

    status = cli("status", "--json")
    assert status.returncode == 0, status.stderr
    parked = next(p for p in json.loads(status.stdout)["pools"] if p["slug"] == "parked")
    assert (parked["queued"], parked["without_message"], parked["running"]) == (3, 3, 0)
    table = cli("status").stdout
    assert any(line.startswith("Parked") and "3 (3 without a message)" in line
               for line in table.splitlines()), table
    page = web.start(redis_url, 0)
    try:
        html = fetch(f"http://127.0.0.1:{page.port}/")[1]
        assert "3 queued, 3 without a message" in html
        api = json.loads(fetch(f"http://127.0.0.1:{page.port}/api/pools")[1])
        assert next(p for p in api["pools"] if p["slug"] == "parked")["without_message"] == 3
        metrics = fetch(f"http://127.0.0.1:{page.port}/metrics")[1]
        assert value(metrics, "workerpool_queued_steps", pool="parked") == 3
        assert value(metrics, "workerpool_queued_steps_without_message", pool="parked") == 3
    finally:
        web.stop(page)

    worker = start_worker("Parked")  # its heartbeat reaps the pool every interval
    healthy = time.monotonic()
    wait_for(lambda: not client.snapshot(detail=True).counts("parked").without_message,
             BOUND + SLACK, "the purged messages to be pushed again")
    pushed_within = time.monotonic() - healthy
    for handle in handles:
        assert handle.wait(60).state == "Success"
    assert sorted(runs.read_text().split()) == sorted(h.id for h in handles)  # once each
    assert pushed_within <= BOUND + SLACK
    log = (tmp_path / "worker-0.log").read_text()
    assert "pushed again the message of 3 Queued step(s) of pool parked" in log, log
    assert "discarded message" not in log, log  # no step's message was pushed twice
    counts = client.snapshot(detail=True).counts("parked")
    assert (counts.records, counts.without_message, raw.llen(queue)) == (0, 0, 0)
    assert worker.proc.poll() is None


def test_steps_flowing_to_busy_workers_are_never_pushed_twice(client, start_worker, redis_url,
                                                             raw, tmp_path):
    """A backlog drains through two workers while a reaper looks for missing messages without
    pause: messages popped and not yet held, held and not yet claimed, steps queued long ago
    and just now all pass under it, and none is pushed again."""
    client.pools.add("Busy")
    runs = shared_file(tmp_path / "runs.txt")
    workers = [start_worker("Busy"), start_worker("Busy")]
    events = TaskEvents(raw)
    reaper = redis.Redis.from_url(redis_url, decode_responses=True)
    leases = Leases(reaper, StepStore(reaper))
    stop = threading.Event()
    pushed: list[int] = []

    def reap_without_pause() -> None:
        while not stop.is_set():
            leases.reap(["busy"], message_grace=HEARTBEAT)  # the counts, and a look if short
            pushed.append(leases.push_lost("busy", HEARTBEAT))  # a look whatever the counts

    looking = threading.Thread(target=reap_without_pause, daemon=True)
    looking.start()
    try:
        handles = [client.run(ScriptStep(script=f"sleep 0.05; {append_id(runs)}", pool="Busy"))
                   for _ in range(30)]  # most wait longer than the grace behind the others
        for _ in range(10):
            handles.append(client.run(ScriptStep(script=append_id(runs), pool="Busy")))
        for handle in handles:
            assert handle.wait(120).state == "Success"
    finally:
        stop.set()
        looking.join(30)
        reaper.close()
    assert len(pushed) > 10 and sum(pushed) == 0  # it looked, often, and found nothing missing
    assert sorted(runs.read_text().split()) == sorted(h.id for h in handles)
    wait_for(lambda: sum(e["type"] == "task-succeeded" for e in events.collect())
             >= len(handles), 10, "every step's succeeded event")
    received = [e["uuid"] for e in events.collect() if e["type"] == "task-received"]
    events.close()
    assert sorted(received) == sorted(task_id(h.id, 0) for h in handles)  # each task once
    for n in range(len(workers)):
        log = (tmp_path / f"worker-{n}.log").read_text()
        assert "discarded message" not in log and "pushed again" not in log, log


def test_a_reap_that_finds_nothing_missing_costs_no_extra_round_trip(client, redis_url, raw):
    """The counts ride in the one pipeline that also takes the restart check, lists the
    overdue steps and runs lost.lua, its scripts sent by EVALSHA without SCRIPT EXISTS: a reap
    of a pool is the lock, INFO and that pipeline (it was the lock, INFO, SCRIPT EXISTS, the
    pipeline and lost.lua)."""
    client.pools.add("Quiet")
    handles = [client.run(ScriptStep(script="true", pool="Quiet")) for _ in range(3)]
    counted = redis.Redis(connection_pool=redis.ConnectionPool.from_url(
        redis_url, decode_responses=True, connection_class=CountingConnection))
    leases = Leases(counted, StepStore(counted))
    schedule = dict(every=60.0, restart_grace=1.0, message_grace=HEARTBEAT)
    wait_for(lambda: raw.info("server")["uptime_in_seconds"] >= 1, 5,
             "Redis to be up past the restart grace (workers may be judged lost)")
    leases.reap(["quiet"], **schedule)  # loads the scripts, takes the restart check
    for reaped in range(2):
        raw.delete(keys.reaper("quiet"))
        CountingConnection.sent = 0
        assert leases.reap(["quiet"], **schedule) == 0
        assert CountingConnection.sent == 3, reaped
    # Purged: the counts tell, and the pool is looked at (noted now, pushed a grace later).
    raw.delete(keys.pool_queue("quiet"))
    raw.delete(keys.reaper("quiet"))
    CountingConnection.sent = 0
    leases.reap(["quiet"], **schedule)
    assert CountingConnection.sent > 3
    assert {raw.hget(keys.step(h.id), "missing_since") is not None for h in handles} == {True}
    assert raw.llen(keys.pool_queue("quiet")) == 0  # one look is never enough
    counted.close()
