"""A worker SIGKILLed mid-step: WorkerLost within about two heartbeats, never run twice at once."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from conftest import HEARTBEAT, pid_alive, shared_file, wait_for, watchdog_groups

from workerpool import ScriptStep
from workerpool.worker.workdirs import workdir_root

# Appends "start <pid>" and notes an overlap if an earlier run of this step is still running.
# A killed process can stay a zombie until init reaps it (about 1 s on some machines); a
# zombie runs nothing, so only states other than Z count as an overlap.
RECORDING_SCRIPT = """
if [ -s {log} ]; then
  prev=$(tail -n 1 {log} | cut -d' ' -f2)
  state=$(sed 's/.*) //' /proc/$prev/stat 2>/dev/null | cut -d' ' -f1)
  if [ -n "$state" ] && [ "$state" != Z ]; then echo "overlap $prev $state" >> {log}; fi
fi
echo "start $$" >> {log}
{body}
"""


def _wait_started(log: Path, count: int = 1) -> list[int]:
    def started() -> list[int] | None:
        lines = log.read_text().splitlines() if log.exists() else []
        pids = [int(line.split()[1]) for line in lines if line.startswith("start")]
        return pids if len(pids) >= count else None

    return list(wait_for(started, 30, f"{count} start(s)"))  # type: ignore[arg-type]


def test_sigkilled_worker_ends_the_step_worker_lost(client, start_worker, tmp_path):
    client.pools.add("Database Worker Pool")
    victim = start_worker("Database Worker Pool")
    log = tmp_path / "runs"
    handle = client.run(ScriptStep(
        script=RECORDING_SCRIPT.format(log=log, body="sleep 300"), pool="Database Worker Pool"))
    [script_pid] = _wait_started(log)
    killed_at = time.monotonic()
    victim.proc.kill()
    result = handle.wait(timeout=30)
    detected = time.monotonic() - killed_at
    assert result.state == "WorkerLost"
    assert result.worker == victim.name
    assert any(victim.name in e.text and "heartbeat" in e.text for e in result.log)
    # Heartbeat TTL is two intervals; the waiting client checks twice per interval.
    assert detected < 2 * HEARTBEAT * 2.5, f"WorkerLost took {detected:.2f}s"
    wait_for(lambda: not pid_alive(script_pid), 5, "orphaned script to be killed")
    # A new worker in the pool does not pick the step up again.
    start_worker("Database Worker Pool")
    after = client.run(ScriptStep(script="true", pool="Database Worker Pool")).wait(timeout=30)
    assert after.state == "Success"
    assert log.read_text().count("start") == 1
    assert client.step(handle.id).result().state == "WorkerLost"


def test_opted_in_step_runs_once_more_elsewhere_and_never_overlaps(client, start_worker,
                                                                   tmp_path):
    client.pools.add("Database Worker Pool")
    first = start_worker("Database Worker Pool")
    log = shared_file(tmp_path / "runs")  # both workers' scripts append to it
    body = '[ "$(grep -c start ' + str(log) + ')" -ge 2 ] || sleep 300'
    handle = client.run(ScriptStep(script=RECORDING_SCRIPT.format(log=log, body=body),
                                   pool="Database Worker Pool", retry_on_worker_lost=True))
    _wait_started(log)
    second = start_worker("Database Worker Pool")
    first.proc.kill()
    result = handle.wait(timeout=30)
    assert result.state == "Success"
    assert result.worker == second.name
    lines = log.read_text().splitlines()
    assert [line.split()[0] for line in lines] == ["start", "start"], lines
    assert any("queued once more" in e.text for e in result.log)


def test_twenty_kills_in_a_row_lose_nothing_and_never_overlap(client, start_worker, tmp_path):
    """Alternating SIGKILLs across two workers; each step ends terminal, none overlap."""
    client.pools.add("Chaos")
    workers = [start_worker("Chaos"), start_worker("Chaos")]
    outcomes = []
    for round_number in range(20):
        log = shared_file(tmp_path / f"runs-{round_number}")  # the scripts of two workers
        retry = round_number % 2 == 0
        body = '[ "$(grep -c start ' + str(log) + ')" -ge 2 ] || sleep 300'
        handle = client.run(ScriptStep(script=RECORDING_SCRIPT.format(log=log, body=body),
                                       pool="Chaos", retry_on_worker_lost=retry))
        _wait_started(log)
        running_on = handle.result().worker
        victim = next(w for w in workers if w.name == running_on)
        workers.remove(victim)
        victim.proc.kill()
        workers.append(start_worker("Chaos"))
        result = handle.wait(timeout=30)
        outcomes.append(result.state)
        assert result.state == ("Success" if retry else "WorkerLost"), result.log
        assert "overlap" not in log.read_text()
        assert log.read_text().count("start") == (2 if retry else 1)
    assert outcomes.count("Success") == 10 and outcomes.count("WorkerLost") == 10


def test_stopping_a_worker_lets_short_steps_finish_and_ends_long_ones(client, start_worker,
                                                                      tmp_path):
    client.pools.add("Graceful")
    worker = start_worker("Graceful", concurrency=2, extra_env={"WORKERPOOL_SHUTDOWN_GRACE": "1"})
    log = tmp_path / "runs"
    long = client.run(ScriptStep(script=RECORDING_SCRIPT.format(log=log, body="sleep 300"),
                                 pool="Graceful"))
    gate = tmp_path / "short-started"
    short = client.run(ScriptStep(script=f"touch {gate}; sleep 0.5; echo finished",
                                  pool="Graceful"))
    [script_pid] = _wait_started(log)
    wait_for(gate.exists, 20, "short step to start")
    worker.proc.terminate()
    assert worker.proc.wait(20) == 0
    assert short.wait(timeout=10).state == "Success"
    result = long.wait(timeout=10)
    assert result.state == "WorkerLost"
    assert any("stopped while the step ran" in e.text for e in result.log)
    wait_for(lambda: not pid_alive(script_pid), 5, "script to be killed")
    output = (tmp_path / "worker-0.log").read_text()
    assert "Traceback" not in output
    assert client.workers.list("Graceful") == []  # deregistered on a clean stop


def test_the_watchdog_kills_the_script_group_of_a_sigkilled_worker(client, start_worker,
                                                                   tmp_path):
    """A process that stays in the script's group but clears its environment carries no step
    token: only the group, listed in the table the worker shares with its watchdog, finds it."""
    client.pools.add("Database Worker Pool")
    victim = start_worker("Database Worker Pool")
    pid_file = tmp_path / "hidden"
    handle = client.run(ScriptStep(pool="Database Worker Pool", script=(
        f"env -i sh -c 'echo $$ > {pid_file}.tmp && mv {pid_file}.tmp {pid_file} && "
        "exec sleep 300' &\nsleep 300\n")))
    wait_for(pid_file.exists, 30, "the hidden process to start")
    hidden = int(pid_file.read_text())
    assert b"WORKERPOOL_STEP_TOKEN" not in Path(f"/proc/{hidden}/environ").read_bytes()
    table, groups = watchdog_groups(victim.proc.pid)
    assert groups == [os.getpgid(hidden)]
    # A slot naming a group that is not the worker's (a pgid reused since, say): ignored.
    bystander = subprocess.Popen(["sleep", "300"], start_new_session=True)
    with table.open("r+b") as fh:
        fh.seek(4 * 100)
        fh.write(bystander.pid.to_bytes(4, sys.byteorder))
    assert sorted(watchdog_groups(victim.proc.pid)[1]) == sorted([os.getpgid(hidden),
                                                                  bystander.pid])
    [info] = [w for w in client.workers.list() if w.pid == victim.pid]
    root = workdir_root(info.name, info.instance)
    assert root.is_dir()
    victim.proc.kill()
    wait_for(lambda: not pid_alive(hidden), 10, "the hidden process to be killed")
    assert handle.wait(timeout=30).state == "WorkerLost"
    wait_for(lambda: not root.exists(), 10,
             "the watchdog to remove the worker's directory")
    assert bystander.poll() is None, "the watchdog killed a group that was not the worker's"
    bystander.kill()
    bystander.wait()
