"""Bad input: one clear line on stderr, the documented exit code, never a traceback."""

from __future__ import annotations

import pytest


@pytest.mark.parametrize("args,needle", [
    (["run", "--script", ""], "script is empty"),
    (["run", "--script", "   \n"], "script is empty"),
    (["run", "--syntax", "cobol", "--script", "x"], "'cobol' is not one of"),
    (["run", "--var", "novalue", "--script", "x"], "NAME=VALUE"),
    (["run", "--var", "=v", "--script", "x"], "NAME=VALUE"),
    (["run", "--sensitive-var", "noequals", "--script", "x"], "NAME=VALUE"),
    (["run", "--timeout", "0", "--script", "x"], "timeout must be"),
    (["run", "--timeout", "soon", "--script", "x"], "'soon' is not a valid float"),
    (["run", "--lease-timeout", "-1", "--script", "x"], "lease timeout must be"),
    (["run", "--script", "x", "--script-file", "f"], "exactly one of"),
    (["run", "--script-file", "/nonexistent/deploy.sh"], "cannot read --script-file"),
    (["run", "--pool", "P", "--server", "--script", "x"], "either on the server or on a pool"),
    (["run", "--pool", "Unknown Pool", "--script", "x"], "no pool named 'Unknown Pool'"),
    (["pool", "add", ""], "pool name is empty"),
    (["pool", "add", "x" * 101], "limit is 100"),
    (["pool", "add", "!!!"], "no ASCII letters or digits"),
    (["pool", "remove", "Default Worker Pool"], "cannot be removed"),
    (["pool", "show", "ghost"], "no pool named 'ghost'"),
    (["worker", "start"], "exactly one of --pool NAME or --builtin"),
    (["worker", "start", "--pool", "ghost"], "no pool named 'ghost'"),
    (["logs", "0123456789abcdef"], "no step with id"),
    (["cancel", "0123456789abcdef"], "no step with id"),
    (["nosuchcommand"], "No such command"),
])
def test_refused_with_one_line_and_exit_2(cli, args, needle):
    done = cli(*args)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("workerpool: error: ")
    assert needle in lines[0]
    assert "Traceback" not in done.stderr


def test_powershell_without_pwsh_on_the_pool_is_refused(client, start_worker, cli):
    client.pools.add("Windows")
    start_worker("Windows")
    done = cli("run", "--pool", "Windows", "--syntax", "powershell", "--script", "Write-Host")
    assert done.returncode == 2
    assert "pwsh" in done.stderr and len(done.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("url,code,needle", [
    ("http://localhost:6379", 2, "must start with redis://"),
    ("redis://:6379/0", 2, "has no host"),
    ("redis://localhost:notaport/0", 2, "malformed"),
    ("redis://127.0.0.1:1/0", 3, "unreachable"),
])
def test_redis_url_problems(cli, url, code, needle):
    done = cli("status", extra_env={"WORKERPOOL_REDIS_URL": url})
    assert done.returncode == code, done.stderr
    assert needle in done.stderr and len(done.stderr.strip().splitlines()) == 1


def test_bad_setting_in_environment(cli):
    done = cli("status", extra_env={"WORKERPOOL_HEARTBEAT_INTERVAL": "fast"})
    assert done.returncode == 2 and "not a number" in done.stderr


def test_duplicate_explicit_worker_name_is_refused(client, start_worker, cli):
    client.pools.add("Pool")
    start_worker("Pool", name="db-worker-01")
    done = cli("worker", "start", "--pool", "Pool", "--name", "db-worker-01")
    assert done.returncode == 2 and "already online" in done.stderr
