"""Exclusive workers (``worker start --exclusive``) and pools' cleanup scripts, end to end
against real workers and Redis."""

from __future__ import annotations

import itertools
import json
import time
from pathlib import Path

import pytest
from conftest import HEARTBEAT, one_line_error, wait_for

from workerpool import ScriptStep
from workerpool.core import keys
from workerpool.core.errors import BadInput
from workerpool.core.pools import MAX_CLEANUP_SCRIPT_BYTES

POOL = "Exclusive Pool"
# Each run writes its own file, named after its step: scripts of different slots (and the
# cleanup, as the step's user) cannot write each other's files.
STEP = ('echo "start $(date +%s.%N)" > {dir}/step-$WORKERPOOL_STEP_ID; touch left-behind; '
        '{body}; echo "end $(date +%s.%N)" >> {dir}/step-$WORKERPOOL_STEP_ID')
CLEANUP = ('seen=no; [ -e left-behind ] && seen=yes; '
           'echo "$(date +%s.%N) $seen $(id -u)" > {dir}/cleanup-$WORKERPOOL_STEP_ID; '
           'echo "cleaned after $WORKERPOOL_STEP_ID"')


def times(path: Path) -> dict[str, float]:
    """``start``/``end`` lines of a step's file."""
    return {word: float(value) for word, value in
            (line.split() for line in path.read_text().splitlines())}


def worker_of(client, worker):
    return next(w for w in client.workers.list() if w.name == worker.name)


def state(client, worker) -> str:
    return worker_of(client, worker).state


def beats_after(raw, worker, moment: float, count: int) -> None:
    """Wait until *worker* has heartbeat *count* intervals after *moment* (a condition, not a
    sleep): its health checks and queue gate have had that long to act."""
    def beaten() -> bool:
        found = [json.loads(v) for v in raw.hvals(keys.workers(worker.pool_slug))]
        instance = next(w["instance"] for w in found if w["name"] == worker.name)
        beat = raw.get(keys.heartbeat(worker.pool_slug, instance))
        return bool(beat) and json.loads(beat)["time"] > moment + count * HEARTBEAT
    wait_for(beaten, 30, f"{worker.name} to heartbeat {count} intervals on")


def test_an_exclusive_worker_runs_one_step_at_a_time_and_cleans_up_after_each(
        client, start_worker, cli, tmp_path):
    added = cli("pool", "add", POOL, "--cleanup-script", CLEANUP.format(dir=tmp_path), "--json")
    assert added.returncode == 0, added.stderr
    worker = start_worker(POOL, concurrency=4, flags=("--exclusive",))
    assert worker_of(client, worker).concurrency == 1  # registered as it runs: one slot
    log = tmp_path / "worker-0.log"
    assert "exclusive: one step at a time, and the pool's cleanup script after each " \
           "(--concurrency 4 asked; it runs 1)" in log.read_text()

    bodies = ["sleep 0.3", "sleep 0.3; exit 3", "sleep 60", "sleep 0.3"]
    handles = [client.run(ScriptStep(script=STEP.format(dir=tmp_path, body=body), pool=POOL,
                                     name=f"step {i}", timeout=2 if i == 2 else 60))
               for i, body in enumerate(bodies)]
    results = [h.wait(60) for h in handles]
    assert [r.state for r in results] == ["Success", "Failed", "TimedOut", "Success"]
    for h in handles:  # the last cleanup runs after its step's end is recorded
        wait_for(lambda h=h: (tmp_path / f"cleanup-{h.id}").exists(), 30, "every cleanup")

    runs = []
    for h, result in zip(handles, results, strict=True):
        step = times(tmp_path / f"step-{h.id}")
        stamp, seen, uid = (tmp_path / f"cleanup-{h.id}").read_text().split()
        end = step.get("end", result.finished_at)  # the timed-out one never wrote its end
        assert end is not None
        runs.append((step["start"], end, float(stamp)))
        assert seen == "yes", "the cleanup runs in the step's working directory"
        assert int(uid) == (tmp_path / f"step-{h.id}").stat().st_uid  # as the step's user
    runs.sort()
    for (start, end, cleaned), (next_start, _, _) in itertools.pairwise(runs):
        assert start < end < cleaned < next_start, runs  # one at a time, cleanup in between
    assert runs[-1][1] < runs[-1][2]
    text = log.read_text()
    for h in handles:
        assert f"cleanup after step {h.id}: cleaned after {h.id}" in text
        assert f"cleanup after step {h.id} passed" in text
    assert worker_of(client, worker).state == "Healthy"


def test_a_failing_cleanup_makes_the_worker_unhealthy_and_the_next_step_waits(
        client, start_worker, raw, tmp_path):
    dirty = tmp_path / "dirty"
    # The health check sees what the cleanup could not fix, so the worker stays Unhealthy
    # until someone does.
    client.pools.add(POOL, cleanup_script=f'touch {dirty}; echo "disk still dirty"; exit 1',
                     health_check=f'[ ! -e {dirty} ] || {{ echo "{dirty} is there"; exit 1; }}')
    worker = start_worker(POOL, extra_env={"WORKERPOOL_EXCLUSIVE": "1",
                                           "WORKERPOOL_HEALTH_INTERVAL": "1"})
    first = client.run(ScriptStep(script="true", pool=POOL))
    assert first.wait(30).state == "Success"  # a failed cleanup never changes the step's end
    wait_for(lambda: state(client, worker) == "Unhealthy", 30, "the worker to be Unhealthy")
    reason = worker_of(client, worker).heartbeat.reason
    assert reason in (f"cleanup after step {first.id} failed: disk still dirty",
                      f"{dirty} is there"), reason  # the cleanup's, or the next check's

    second = client.run(ScriptStep(script=f"echo ran > {tmp_path}/second", pool=POOL))
    beats_after(raw, worker, time.time(), count=int(3 / HEARTBEAT))  # three health checks
    assert second.result().state == "Queued"
    assert not (tmp_path / "second").exists()
    assert state(client, worker) == "Unhealthy"
    assert "cleanup after step" in (tmp_path / "worker-0.log").read_text()

    dirty.unlink()  # fixed by hand: the next health check passes and the worker goes on
    assert second.wait(30).state == "Success"
    assert (tmp_path / "second").read_text() == "ran\n"


def test_a_worker_that_is_not_exclusive_ignores_the_cleanup_script(client, start_worker,
                                                                   tmp_path):
    client.pools.add(POOL, cleanup_script=f"touch {tmp_path}/cleaned-$WORKERPOOL_STEP_ID")
    start_worker(POOL)
    assert "has a cleanup script; this worker runs steps side by side" in \
        (tmp_path / "worker-0.log").read_text()
    first, second = (client.run(ScriptStep(script="true", pool=POOL)) for _ in range(2))
    assert first.wait(30).state == second.wait(30).state == "Success"
    # An exclusive worker cleans up before its task returns, so before it takes the next step.
    assert not list(tmp_path.glob("cleaned-*"))


def test_pool_edit_cleanup_script_shows_in_pool_show(client, cli):
    assert cli("pool", "add", POOL).returncode == 0
    edited = cli("pool", "edit", POOL, "--cleanup-script", "docker system prune -f\n",
                 "--json")
    assert edited.returncode == 0, edited.stderr
    assert json.loads(edited.stdout)["cleanup_script"] == "docker system prune -f"
    shown = json.loads(cli("pool", "show", POOL, "--json").stdout)
    assert shown["cleanup_script"] == "docker system prune -f"
    assert "cleanup script (exclusive workers, after each step):\n  docker system prune -f" \
        in cli("pool", "show", POOL).stdout

    client.pools.pause(POOL)  # other changes keep it
    assert cli("pool", "edit", POOL, "--max-running", "2").returncode == 0
    assert client.pools.get(POOL).cleanup_script == "docker system prune -f"

    assert cli("pool", "edit", POOL, "--cleanup-script", "").returncode == 0
    assert json.loads(cli("pool", "show", POOL, "--json").stdout)["cleanup_script"] == ""
    assert client.pools.edit(POOL, cleanup_script="rm -rf /tmp/build").cleanup_script == \
        "rm -rf /tmp/build"


def test_a_too_long_cleanup_script_is_refused_in_one_line(client, cli):
    too_long = "x" * (MAX_CLEANUP_SCRIPT_BYTES + 1)
    line = one_line_error(cli("pool", "add", POOL, "--cleanup-script", too_long))
    assert f"the cleanup script is {MAX_CLEANUP_SCRIPT_BYTES + 1} bytes; the limit is " \
           f"{MAX_CLEANUP_SCRIPT_BYTES}" in line
    assert POOL not in {p.name for p in client.pools.list()}  # nothing was written
    assert cli("pool", "add", POOL).returncode == 0
    one_line_error(cli("pool", "edit", POOL, "--cleanup-script", too_long))
    with pytest.raises(BadInput, match="NUL byte"):
        client.pools.edit(POOL, cleanup_script="rm -rf x\x00")
    assert client.pools.get(POOL).cleanup_script == ""


def test_a_bad_exclusive_setting_is_refused_in_one_line(cli):
    done = cli("worker", "start", "--pool", POOL, extra_env={"WORKERPOOL_EXCLUSIVE": "maybe"})
    assert "WORKERPOOL_EXCLUSIVE='maybe' must be 1 or 0" in one_line_error(done)
