"""A step's life on a real worker: exit codes, timeout, cancel, secrets, output, streaming."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import pid_alive, wait_for

from workerpool import ScriptStep
from workerpool.core import keys

# Records the script's own pid and a background child's pid, then blocks.
GROUP_SCRIPT = """
sleep 300 &
echo "$! $$" > {pids}
echo started
wait
"""


@pytest.fixture
def pool(client, start_worker):
    client.pools.add("Work")
    return start_worker("Work")


def _pids(path: Path) -> list[int]:
    text = wait_for(lambda: path.exists() and path.read_text().strip(), 20, "pid file")
    return [int(p) for p in str(text).split()]


def test_nonzero_exit_is_failed_with_its_code(cli, pool):
    done = cli("run", "--pool", "Work", "--script", "echo about to fail; exit 7", "--json")
    assert done.returncode == 1
    result = json.loads(done.stdout)
    assert result["state"] == "Failed" and result["exit_code"] == 7
    assert result["worker"] == pool.name and result["pool"] == "work"
    assert set(result) == {"id", "state", "pool", "worker", "exit_code", "output_variables",
                           "log", "started_at", "finished_at", "priority"}
    assert result["priority"] == "normal"
    assert result["log"][0]["stream"] == "stdout" and result["log"][0]["text"] == "about to fail"
    assert result["started_at"] <= result["finished_at"]


def test_success_exits_zero_and_streams_to_the_terminal(cli, pool):
    done = cli("run", "--pool", "Work", "--script", "echo out; echo err >&2")
    assert done.returncode == 0
    assert done.stdout == "out\n"
    assert "err" in done.stderr and "Success" in done.stderr


def test_timeout_kills_the_whole_process_group(cli, pool, tmp_path):
    pids = tmp_path / "pids"
    done = cli("run", "--pool", "Work", "--timeout", "1", "--json",
               "--script", GROUP_SCRIPT.format(pids=pids))
    assert done.returncode == 1
    result = json.loads(done.stdout)
    assert result["state"] == "TimedOut"
    for pid in _pids(pids):
        wait_for(lambda pid=pid: not pid_alive(pid), 5, f"process {pid} to be gone")


def test_cancel_from_another_terminal_kills_the_group(cli, pool, tmp_path, client):
    pids = tmp_path / "pids"
    step_id = cli("run", "--pool", "Work", "--no-wait",
                  "--script", GROUP_SCRIPT.format(pids=pids)).stdout.strip()
    processes = _pids(pids)
    assert client.step(step_id).result().state == "Running"
    cancelled = cli("cancel", step_id)
    assert cancelled.returncode == 0 and "Running" in cancelled.stdout
    result = client.step(step_id).wait(timeout=20)
    assert result.state == "Cancelled"
    for pid in processes:
        wait_for(lambda pid=pid: not pid_alive(pid), 5, f"process {pid} to be gone")


def test_cancel_of_a_queued_step_removes_it_from_the_queue(client, cli, raw):
    client.pools.add("Idle")  # no workers: the step stays queued
    handle = client.run(ScriptStep(script="true", pool="Idle"))
    assert raw.llen(keys.pool_queue("idle")) == 1
    assert cli("cancel", handle.id).returncode == 0
    assert handle.wait(timeout=5).state == "Cancelled"
    assert raw.llen(keys.pool_queue("idle")) == 0


def test_sensitive_values_never_leave_the_worker_in_clear(cli, client, pool, raw):
    secret = "Pa55-w0rd-xyzzy"
    script = ("echo the password is $DbPassword; echo \"$DbPassword\" >&2; "
              "set_workerpool_variable Leaked \"x${DbPassword}x\"")
    done = cli("run", "--pool", "Work", "--sensitive-var", f"DbPassword={secret}",
               "--script", script)
    assert done.returncode == 0
    assert secret not in done.stdout + done.stderr
    assert "the password is ********" in done.stdout
    as_json = cli("run", "--pool", "Work", "--sensitive-var", f"DbPassword={secret}",
                  "--script", script, "--json")
    assert secret not in as_json.stdout
    assert json.loads(as_json.stdout)["output_variables"] == {"Leaked": "x********x"}
    for key in raw.keys(keys.space("*") + "step:*:log"):
        assert secret not in json.dumps(raw.xrange(key))

    # The Celery message as Flower would show it: queue a step where no worker consumes.
    client.pools.add("Parked")
    client.run(ScriptStep(script="true", pool="Parked", name="migrate",
                          sensitive_variables={"DbPassword": secret}))
    [raw_message] = raw.lrange(keys.pool_queue("parked"), 0, -1)
    message = json.loads(raw_message)
    assert secret not in raw_message
    assert secret not in message["body"] and json.loads(message["body"])[1:] == [{}, {}]
    assert "migrate" in message["headers"]["argsrepr"]
    assert "Parked" in message["headers"]["argsrepr"]


@pytest.mark.parametrize("syntax,script", [
    ("bash", "set_workerpool_variable Version 1.2.3\n"
             "set_workerpool_variable Tricky \"it's [a|b]\"$'\\n'\"line2\""),
    ("sh", "set_workerpool_variable Version 1.2.3\n"
           "set_workerpool_variable Tricky \"it's [a|b]\n line2\""),
    ("python", "set_workerpool_variable('Version', '1.2.3')\n"
               "set_workerpool_variable('Tricky', \"it's [a|b]\\n line2\")"),
])
def test_set_variable_helpers_land_in_output_variables(client, pool, syntax, script):
    result = client.run(ScriptStep(script=script, syntax=syntax, pool="Work")).wait(timeout=30)
    assert result.state == "Success", result.log
    assert result.output_variables["Version"] == "1.2.3"
    expected = "it's [a|b]\nline2" if syntax == "bash" else "it's [a|b]\n line2"
    assert result.output_variables["Tricky"] == expected
    assert not any(e.text.startswith("##workerpool[") for e in result.log)


def test_raw_service_message_and_unknown_ones(client, pool):
    script = ("echo \"##workerpool[setVariable name='Build' value='42']\"\n"
              "echo \"##workerpool[frobnicate name='x']\"\n")
    result = client.run(ScriptStep(script=script, pool="Work")).wait(timeout=30)
    assert result.output_variables == {"Build": "42"}
    assert any("unknown service message 'frobnicate'" in e.text for e in result.log)


def test_logs_follow_shows_lines_before_the_script_ends(cli, client, pool, tmp_path, env):
    gate = tmp_path / "gate"
    step_id = cli("run", "--pool", "Work", "--no-wait", "--script",
                  f"echo first; while [ ! -e {gate} ]; do sleep 0.05; done; echo second"
                  ).stdout.strip()
    follower = subprocess.Popen([sys.executable, "-m", "workerpool", "logs", step_id,
                                 "--follow"], env=env, stdout=subprocess.PIPE, text=True)
    assert follower.stdout is not None
    assert follower.stdout.readline() == "first\n"
    assert client.step(step_id).result().state == "Running"
    gate.touch()
    rest, _ = follower.communicate(timeout=20)
    assert rest == "second\n"
    assert follower.returncode == 0


def test_log_is_capped_with_a_visible_marker(client, pool):
    result = client.run(ScriptStep(script="seq 1 12000", pool="Work")).wait(timeout=60)
    assert result.state == "Success"
    stdout = [e.text for e in result.log if e.stream == "stdout"]
    assert len(stdout) == 10_000
    assert stdout[0] == "1" and stdout[-1] == "10000"
    system = [e.text for e in result.log if e.stream == "system"]
    assert any("capped at 10000 lines" in t for t in system)
    assert any("2000 more lines were not stored" in t for t in system)


def test_variables_reach_the_environment_and_worker_settings_do_not(client, pool):
    script = 'echo "$DbName|${Weird_Name_x_}|${WORKERPOOL_REDIS_URL:-unset}|$WORKERPOOL_POOL"'
    result = client.run(ScriptStep(script=script, pool="Work",
                                   variables={"DbName": "orders", "Weird.Name[x]": "w"})
                        ).wait(timeout=30)
    assert [e.text for e in result.log if e.stream == "stdout"] == ["orders|w|unset|work"]


def test_python_step_and_workdir_removed(client, pool):
    script = "import os, sys\nprint(os.getcwd())\nsys.exit(3)"
    result = client.run(ScriptStep(script=script, syntax="python", pool="Work")).wait(30)
    assert result.state == "Failed" and result.exit_code == 3
    workdir = Path(result.log[0].text)
    assert workdir.name.startswith(result.id)
    # The end is recorded first, so the caller never waits on the removal.
    wait_for(lambda: not workdir.exists(), 10, "working directory to be removed")


def test_lease_timeout_removes_a_target_runs_message_from_its_queue(client, raw):
    """Deployment runs carry their target in the message label; the timed-out message is
    rebuilt from the record byte for byte, so it really leaves the queue."""
    from workerpool.core.routing import Route

    client.pools.add("Idle")
    route = Route(keys.pool_queue("idle"), "idle", "Idle")
    step_id = client.store.enqueue(ScriptStep(script="true", name="Warm up"), route, 0.2, 60,
                                   target="web-07")
    assert "target='web-07'" in raw.lindex(keys.pool_queue("idle"), 0)
    result = client.step(step_id).wait(timeout=10)
    assert result.state == "LeaseTimeout"
    assert raw.llen(keys.pool_queue("idle")) == 0
