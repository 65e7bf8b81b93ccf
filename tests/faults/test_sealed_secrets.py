"""Sensitive values never rest or travel in clear: sealed to the key of the pool that runs them.

Every command Redis receives is recorded with MONITOR while a step (and a deployment) that uses
secrets runs, and every key is read back during and after; the secret must appear in neither.
The script itself must still see the real value.
"""

from __future__ import annotations

import json
import secrets
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from conftest import SECRET_KEY, wait_for

from workerpool import ScriptStep
from workerpool.core import keys
from workerpool.core.sealing import Keyring, derive, new_key, seal


class Monitor:
    """Every command Redis executes (including inside Lua scripts), recorded in a thread."""

    def __init__(self, url: str) -> None:
        self.connection = redis.Redis.from_url(url)
        self.commands: list[str] = []
        self._stop = threading.Event()
        self._monitor = self.connection.monitor()
        self._monitor.__enter__()
        self._thread = threading.Thread(target=self._record, daemon=True)
        self._thread.start()

    def _record(self) -> None:
        while not self._stop.is_set():
            try:
                self.commands.append(self._monitor.next_command()["command"])
            except (redis.ConnectionError, ValueError):
                return

    def stop(self) -> list[str]:
        self._stop.set()
        self.connection.ping()  # wakes the reader; the ping itself is recorded last
        self._thread.join(10)
        self._monitor.__exit__(None, None, None)
        return self.commands


@pytest.fixture
def monitor(redis_url: str) -> Iterator[Monitor]:
    recorder = Monitor(redis_url)
    yield recorder
    recorder.stop()


def every_value(url: str) -> str:
    """Every key of this database and everything it holds, as one text."""
    r = redis.Redis.from_url(url)
    parts: list[str] = []
    read = {"string": r.get, "hash": r.hgetall, "list": lambda k: r.lrange(k, 0, -1),
            "set": r.smembers, "zset": lambda k: r.zrange(k, 0, -1, withscores=True),
            "stream": r.xrange, "none": lambda k: None}
    for key in r.scan_iter(count=1000):
        value = read[r.type(key).decode()](key)
        parts.append(f"{key!r} {value!r}")
    assert parts, "the database is empty: the scan read the wrong one"
    return "\n".join(parts)


def test_a_step_secret_is_sealed_in_redis_and_in_every_command(
        client, start_worker, monitor, redis_url, tmp_path):
    client.pools.add("Database Worker Pool")
    start_worker("Database Worker Pool")
    secret = "pw-" + secrets.token_hex(12)
    proof, release = tmp_path / "proof", tmp_path / "release"
    handle = client.run(ScriptStep(
        pool="Database Worker Pool", name="migrate",
        sensitive_variables={"DbPassword": secret},
        script=f'printf %s "$DbPassword" > {proof}\n'
               'echo "connecting with #{DbPassword}"\n'
               'set_workerpool_variable Used "$DbPassword"\n'
               f'while [ ! -e {release} ]; do sleep 0.05; done\n'))
    wait_for(proof.exists, 30, "the script to start")
    during = every_value(redis_url)
    release.touch()
    result = handle.wait(timeout=30)
    after = every_value(redis_url)
    commands = "\n".join(map(str, monitor.stop()))

    assert result.state == "Success", result.message
    assert proof.read_text() == secret  # the script saw the real value
    assert [e.text for e in result.log] == ["connecting with ********"]
    assert result.output_variables == {"Used": "********"}
    assert "sealed:v2:" in during  # the record holds the sealed form
    for where, text in (("Redis during the step", during), ("Redis after it", after),
                        ("the commands Redis received", commands)):
        assert secret not in text, f"the secret is in clear in {where}"


def test_a_deployment_secret_is_sealed_at_rest(client, start_worker, server, cli, monitor,
                                              redis_url, tmp_path):
    client.pools.add("Database Worker Pool")
    start_worker("Database Worker Pool")
    server()
    project, step_secret, given = ("proj-" + secrets.token_hex(8), "step-" + secrets.token_hex(8),
                                   "given-" + secrets.token_hex(8))
    out = tmp_path / "seen"
    process = tmp_path / "process.yaml"
    process.write_text(f"""
name: Sealed
variables:
  ApiToken: {{value: {project}, sensitive: true}}
  Region: eu
  Override: {{value: unused, sensitive: true}}
steps:
  - name: Use
    pool: Database Worker Pool
    variables:
      StepPw: {{value: {step_secret}, sensitive: true}}
    script: |
      printf '%s %s %s %s' "#{{ApiToken}}" "#{{StepPw}}" "#{{Override}}" "#{{Region}}" > {out}
      echo "#{{ApiToken}} #{{StepPw}} #{{Override}}"
""")
    done = cli("deploy", str(process), "--environment", "Test", "--var", f"Override={given}",
               "--json", timeout=120)
    assert done.returncode == 0, done.stderr
    assert out.read_text() == f"{project} {step_secret} {given} eu"
    deployment_id = json.loads(done.stdout)["id"]
    logs = cli("logs", deployment_id)
    assert logs.stdout.splitlines() == ["******** ******** ********"]
    stored = every_value(redis_url)
    commands = "\n".join(map(str, monitor.stop()))
    for value in (project, step_secret, given):
        assert value not in stored
        assert value not in commands


def test_a_worker_without_its_pools_key_refuses_the_step_and_keeps_serving(
        client, start_worker, tmp_path):
    client.pools.add("Keyless Pool")
    start_worker("Keyless Pool", extra_env={"WORKERPOOL_POOL_KEY": ""})
    ran = tmp_path / "ran"
    refused = client.run(ScriptStep(pool="Keyless Pool", script=f"touch {ran}",
                                    sensitive_variables={"Token": "t0ken"})).wait(timeout=30)
    assert refused.state == "Failed"
    assert refused.message == (
        "refused: this worker has no key of keyless-pool (generation 1) to open the sensitive "
        "variables; give it the key `workerpool pool credentials keyless-pool` prints "
        "(WORKERPOOL_POOL_KEY)")
    assert not ran.exists()
    plain = client.run(ScriptStep(pool="Keyless Pool", script="echo plain")).wait(timeout=30)
    assert (plain.state, [e.text for e in plain.log]) == ("Success", ["plain"])


def test_another_pools_key_or_another_masters_opens_nothing(client, start_worker, tmp_path):
    client.pools.add("Database Worker Pool")
    client.pools.add("Other Key Pool")
    db_key = Keyring([SECRET_KEY]).publish(client.redis, "database-worker-pool")
    start_worker("Other Key Pool", extra_env={"WORKERPOOL_POOL_KEY": db_key.to_text()})
    step = {"script": 'echo "[$Token]"', "sensitive_variables": {"Token": "t0ken"}}
    other = client.run(ScriptStep(pool="Other Key Pool", **step)).wait(timeout=30)
    assert other.state == "Failed"
    assert "has no key of other-key-pool (generation 1)" in other.message
    forged = derive(new_key(), "other-key-pool", 1)  # the right pool, another master's
    assert forged.public().public != Keyring([SECRET_KEY]).key_for(
        "other-key-pool", 1).public().public
    start_worker("Other Key Pool", extra_env={"WORKERPOOL_POOL_KEY": forged.to_text()})
    results = [client.run(ScriptStep(pool="Other Key Pool", **step)).wait(timeout=30)
               for _ in range(4)]  # both workers take some
    assert any("does not open the sensitive variables" in r.message for r in results)
    assert all(r.state == "Failed" for r in results)


def test_a_rotated_pool_key_opens_old_and_new_steps(client, cli, start_worker, tmp_path):
    client.pools.add("Rotated Pool")
    parked = client.run(ScriptStep(pool="Rotated Pool", script='echo "[$Token]"',
                                   sensitive_variables={"Token": "before"}))  # generation 1
    done = cli("pool", "credentials", "Rotated Pool", "--rotate-key", "--json")
    assert done.returncode == 0, done.stderr
    both = json.loads(done.stdout)["pool_key"]
    assert [k.split(":")[1] for k in both.split(",")] == ["2", "1"]
    rotated = start_worker("Rotated Pool", extra_env={"WORKERPOOL_POOL_KEY": both})
    after = client.run(ScriptStep(pool="Rotated Pool", script='echo "[$Token]"',
                                  sensitive_variables={"Token": "after"}))
    assert "sealed:v2:2:" in client.redis.hget(keys.step(after.id), "secrets")
    assert "sealed:v2:1:" in client.redis.hget(keys.step(parked.id), "secrets")
    for handle in (parked, after):
        result = handle.wait(timeout=30)
        assert (result.state, [e.text for e in result.log]) == ("Success", ["[********]"])
    # A worker left with the old key alone opens no step sealed since the rotation.
    rotated.proc.terminate()
    assert rotated.proc.wait(30) == 0
    start_worker("Rotated Pool", extra_env={"WORKERPOOL_POOL_KEY": both.split(",")[1]})
    stale = client.run(ScriptStep(pool="Rotated Pool", script='echo "[$Token]"',
                                  sensitive_variables={"Token": "later"})).wait(timeout=30)
    assert stale.state == "Failed"
    assert "has no key of rotated-pool (generation 2)" in stale.message


def test_a_client_seals_without_any_key_of_its_own(cli, client, start_worker):
    start_worker()  # publishes the built-in worker's key, as a server does at start
    done = cli("run", "--sensitive-var", "Token=t0ken", "--script", 'echo "[$Token]"',
               extra_env={"WORKERPOOL_SECRET_KEY": ""})
    assert (done.returncode, done.stdout) == (0, "[********]\n"), done.stderr
    client.pools.add("Unkeyed Pool")
    refused = cli("run", "--pool", "Unkeyed Pool", "--sensitive-var", "Token=t0ken",
                  "--script", "true", extra_env={"WORKERPOOL_SECRET_KEY": ""})
    assert refused.returncode == 2
    assert refused.stderr.startswith("workerpool: error: sensitive values are sealed to the pool "
                                     "that runs them, and this pool has no key yet")
    assert len(refused.stderr.splitlines()) == 1


def test_malformed_keys_stop_a_worker_at_start_with_one_line(cli):
    for env, message in (
            ({"WORKERPOOL_SECRET_KEY": "abc"}, "WORKERPOOL_SECRET_KEY: key 1 is too short to be "
                                               "a master key (at least 32 characters); make one "
                                               "with `workerpool secret-key`"),
            ({"WORKERPOOL_POOL_KEY": "builtin:1:abc"}, "WORKERPOOL_POOL_KEY: 'builtin:1:abc'... "
                                                       "is not a pool key")):
        done = cli("worker", "start", "--builtin", extra_env=env)
        assert done.returncode == 2
        assert done.stderr.startswith(f"workerpool: error: {message}"), done.stderr
        assert len(done.stderr.splitlines()) == 1


def test_a_worker_given_the_master_key_says_so(start_worker, tmp_path):
    start_worker(extra_env={"WORKERPOOL_SECRET_KEY": SECRET_KEY})
    log = next(tmp_path.glob("worker-*.log")).read_text()
    assert "WARNING: this worker holds the admin's master key" in log


def test_a_server_without_the_key_fails_the_deployment_with_the_reason(
        client, start_worker, server, cli, tmp_path):
    start_worker()
    server(extra_env={"WORKERPOOL_SECRET_KEY": ""})
    process = tmp_path / "process.yaml"
    process.write_text("name: Keyless\nvariables:\n  T: {value: x, sensitive: true}\n"
                       "steps:\n  - name: Only\n    location: worker\n    script: echo hi\n")
    done = cli("deploy", str(process), "--environment", "Test", timeout=60)
    assert done.returncode == 1, done.stderr
    reason = ("refused: the server has no key of builtin (generation 1) to open the sensitive "
              "variables; give it the key `workerpool builtin-worker credentials` prints "
              "(WORKERPOOL_POOL_KEY)")
    assert f" Failed: {reason}\n" in done.stderr
    result = json.loads(cli("deployments", "list", "--json").stdout)[0]
    assert (result["state"], result["message"]) == ("Failed", reason)


def test_the_local_stack_makes_a_private_master_key_once(tmp_path):
    from workerpool.core.sealing import ensure_local_key, key_file
    from workerpool.core.settings import Settings

    settings = Settings(home=tmp_path / "home")
    ensure_local_key(settings)
    path: Path = key_file(settings)
    first = path.read_text()
    ensure_local_key(settings)
    assert path.read_text() == first
    assert path.stat().st_mode & 0o777 == 0o600
    keyring = Keyring.load(settings)
    key = keyring.key_for("p", 1)
    assert key is not None
    assert keyring.open(seal(key.public(), "v"), "p", "test") == "v"
