"""Sensitive values never rest or travel in clear: sealed with WORKERPOOL_SECRET_KEY.

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
from conftest import wait_for

from workerpool import ScriptStep
from workerpool.core.sealing import new_key


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
    assert "sealed:v1:" in during  # the record holds the sealed form
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


def test_a_worker_without_the_key_refuses_the_step_and_keeps_serving(
        client, start_worker, tmp_path):
    client.pools.add("Keyless Pool")
    start_worker("Keyless Pool", extra_env={"WORKERPOOL_SECRET_KEY": ""})
    ran = tmp_path / "ran"
    refused = client.run(ScriptStep(pool="Keyless Pool", script=f"touch {ran}",
                                    sensitive_variables={"Token": "t0ken"})).wait(timeout=30)
    assert refused.state == "Failed"
    assert refused.message == (
        "refused: this worker has no WORKERPOOL_SECRET_KEY to open the sensitive variables; "
        "give it the same key as the client that submitted")
    assert not ran.exists()
    plain = client.run(ScriptStep(pool="Keyless Pool", script="echo plain")).wait(timeout=30)
    assert (plain.state, [e.text for e in plain.log]) == ("Success", ["plain"])


def test_a_worker_with_another_key_refuses_and_a_rotated_one_opens(
        client, start_worker, tmp_path, settings):
    client.pools.add("Other Key Pool")
    client.pools.add("Rotated Pool")
    start_worker("Other Key Pool", extra_env={"WORKERPOOL_SECRET_KEY": new_key()})
    start_worker("Rotated Pool", extra_env={
        "WORKERPOOL_SECRET_KEY": f"{new_key()},{settings.secret_key}"})
    step = {"script": 'echo "[$Token]"', "sensitive_variables": {"Token": "t0ken"}}
    other = client.run(ScriptStep(pool="Other Key Pool", **step)).wait(timeout=30)
    assert other.state == "Failed"
    assert "cannot open the sensitive variables (the keys differ)" in other.message
    rotated = client.run(ScriptStep(pool="Rotated Pool", **step)).wait(timeout=30)
    assert (rotated.state, [e.text for e in rotated.log]) == ("Success", ["[********]"])


def test_a_client_without_a_key_refuses_to_send_a_secret(cli, client, start_worker):
    start_worker()
    done = cli("run", "--sensitive-var", "Token=t0ken", "--script", "true",
               extra_env={"WORKERPOOL_SECRET_KEY": ""})
    assert done.returncode == 2
    assert done.stderr.startswith("workerpool: error: sensitive values are sealed before they "
                                  "are stored, and no secret key is configured")
    assert len(done.stderr.splitlines()) == 1
    plain = cli("run", "--script", "echo ok", extra_env={"WORKERPOOL_SECRET_KEY": ""})
    assert (plain.returncode, plain.stdout) == (0, "ok\n")


def test_a_malformed_key_stops_a_worker_at_start_with_one_line(cli):
    done = cli("worker", "start", "--builtin", extra_env={"WORKERPOOL_SECRET_KEY": "abc"})
    assert done.returncode == 2
    assert done.stderr == ("workerpool: error: WORKERPOOL_SECRET_KEY: key 1 is not a valid "
                           "secret key (44 characters of URL-safe base64); make one with "
                           "`workerpool secret-key`\n")


def test_a_server_without_the_key_fails_the_deployment_with_the_reason(
        client, start_worker, server, cli, tmp_path):
    start_worker()
    server(extra_env={"WORKERPOOL_SECRET_KEY": ""})
    process = tmp_path / "process.yaml"
    process.write_text("name: Keyless\nvariables:\n  T: {value: x, sensitive: true}\n"
                       "steps:\n  - name: Only\n    location: worker\n    script: echo hi\n")
    done = cli("deploy", str(process), "--environment", "Test", timeout=60)
    assert done.returncode == 1, done.stderr
    reason = ("refused: the server has no WORKERPOOL_SECRET_KEY to open the sensitive "
              "variables; give it the same key as the client that submitted")
    assert f" Failed: {reason}\n" in done.stderr
    result = json.loads(cli("deployments", "list", "--json").stdout)[0]
    assert (result["state"], result["message"]) == ("Failed", reason)


def test_the_local_stack_makes_a_private_key_once(tmp_path):
    from workerpool.core.sealing import Keyring, ensure_local_key, key_file
    from workerpool.core.settings import Settings

    settings = Settings(home=tmp_path / "home")
    ensure_local_key(settings)
    path: Path = key_file(settings)
    first = path.read_text()
    ensure_local_key(settings)
    assert path.read_text() == first
    assert path.stat().st_mode & 0o777 == 0o600
    keyring = Keyring.load(settings)
    assert keyring.open(keyring.seal("v"), "test") == "v"
