"""``workerpool up``: the embedded stack, found by other commands, stopped cleanly by Ctrl-C."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from conftest import pid_alive, start_up, wait_for

from workerpool import ScriptStep


def _descendants(pid: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def _session_members(sid_leaders: set[int]) -> set[int]:
    """Processes in the sessions of *sid_leaders* (workers run in sessions of their own)."""
    members = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[4]) in sid_leaders and fields[0] != "Z":
                members.add(int(entry))
    return members


def test_up_runs_the_stack_until_ctrl_c(tmp_path):
    home = tmp_path / "home"
    env = {k: v for k, v in os.environ.items() if not k.startswith("WORKERPOOL_")}
    env.update(WORKERPOOL_HOME=str(home), WORKERPOOL_HEARTBEAT_INTERVAL="0.5")
    up, _ = start_up([sys.executable, "-m", "workerpool", "up", "--pools",
                      "Database Worker Pool=2,Kubernetes Worker Pool=1"], env)
    try:
        def cli(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run([sys.executable, "-m", "workerpool", *args], env=env,
                                  capture_output=True, text=True, timeout=60)

        status = json.loads(cli("status", "--json").stdout)
        pools = {p["name"]: p for p in status["pools"]}
        assert [w["name"] for w in pools["Database Worker Pool"]["workers"]] == [
            "database-worker-01", "database-worker-02"]
        assert [w["name"] for w in pools["Kubernetes Worker Pool"]["workers"]] == [
            "kubernetes-worker-01"]
        assert status["builtin_worker"]["enabled"] is True
        assert [w["state"] for w in status["builtin_worker"]["workers"]] == ["Healthy"]
        done = cli("run", "--pool", "Database Worker Pool", "--script", "echo hi", "--json")
        assert json.loads(done.stdout)["worker"].startswith("database-worker-0")
        assert (home / "redis" / "appendonly.aof").exists() or \
            (home / "redis" / "appendonlydir").exists()

        family = _descendants(up.pid)
        assert len(family) >= 5  # redis, built-in worker, three pool workers (+ watchdogs)
        up.send_signal(signal.SIGINT)
        assert up.wait(60) == 0
        for pid in family:
            wait_for(lambda pid=pid: not pid_alive(pid), 10, f"child {pid} to exit")
        assert not _session_members(family)
        assert not (home / "embedded.json").exists()
        gone = cli("status")
        assert gone.returncode == 3 and "workerpool up" in gone.stderr
    finally:
        if up.poll() is None:
            up.kill()


def test_up_with_a_redis_url_starts_no_embedded_server(env, tmp_path, client):
    up, ready = start_up([sys.executable, "-m", "workerpool", "up", "--pools", "Ops=1"], env)
    try:
        assert "WORKERPOOL_REDIS_URL" in ready
        names = sorted(w.name for w in client.workers.list())
        assert names == ["builtin-worker-01", "ops-worker-01"]
        assert not any("redis-server" in Path(f"/proc/{pid}/cmdline").read_text()
                       for pid in _descendants(up.pid) if Path(f"/proc/{pid}").exists())
        assert not (Path(env["WORKERPOOL_HOME"]) / "embedded.json").exists()
        up.send_signal(signal.SIGINT)
        assert up.wait(60) == 0
        assert client.workers.list() == []
    finally:
        if up.poll() is None:
            up.kill()


def test_worker_list_shows_state_pool_and_running_steps(client, start_worker, cli):
    client.pools.add("Database Worker Pool")
    busy = start_worker("Database Worker Pool", concurrency=2)
    step = client.run(ScriptStep(script="sleep 300", pool="Database Worker Pool"))
    wait_for(lambda: step.result().state == "Running", 20, "step to run")
    wait_for(lambda: json.loads(cli("worker", "list", "--json").stdout)[0]["running"] == 1,
             10, "heartbeat to report the running step")
    [row] = json.loads(cli("worker", "list", "--pool", "database-worker-pool", "--json").stdout)
    assert row["name"] == busy.name == "database-worker-01"
    assert row["pool"] == "database-worker-pool" and row["state"] == "Healthy"
    assert row["concurrency"] == 2 and row["last_heartbeat"] is not None
    table = cli("worker", "list").stdout
    assert "database-worker-01" in table and "Healthy" in table
    status = json.loads(cli("status", "--json").stdout)
    [lease] = status["leases"]
    assert lease["step_id"] == step.id and lease["worker"] == busy.name
    step.cancel()
    assert step.wait(timeout=20).state == "Cancelled"
    busy.proc.kill()
    busy.proc.wait()
    wait_for(lambda: client.workers.list()[0].state == "Offline", 10, "Offline")
    assert json.loads(cli("worker", "list", "--json").stdout)[0]["state"] == "Offline"
