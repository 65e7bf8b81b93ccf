"""The compose file run against a real Redis: the one-shot ``init`` script creates the pools the
workers consume (and a second run still succeeds), and the credentials its header makes give a
worker service exactly the login and key it needs (the files themselves are checked in
tests/unit/deploy/)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import redis
from deployfiles import SEED_POOLS, WORKERS, header_commands, interpolated, service_argv, services

from workerpool import Client, ScriptStep
from workerpool.core import credentials
from workerpool.core.pools import slugify
from workerpool.core.steps import SUCCESS


def test_init_script_creates_the_seed_pools_and_can_run_again(env: dict[str, str],
                                                              client: Client) -> None:
    argv = service_argv(services()["init"])
    scripts_env = {**env, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"}
    assert shutil.which("workerpool", path=scripts_env["PATH"]), "workerpool is not installed"
    for attempt in (1, 2):
        done = subprocess.run(argv, env=scripts_env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, f"run {attempt}: {done.stdout}\n{done.stderr}"
    names = {p.name for p in client.pools.list()}
    assert names >= SEED_POOLS
    for pool in WORKERS.values():
        client.pools.get(pool)


# --- deploy/redis.conf ------------------------------------------------------------------------


def test_the_headers_credentials_start_a_worker_that_opens_its_pools_secrets(
        env: dict[str, str], client: Client, cli, start_worker) -> None:
    """Follow the top of docker-compose.yml: each `pool credentials ... --prefix` line appends
    to .env; the worker service then logs in as its pool's user and opens its steps' sensitive
    values without the admin's password or master key."""
    for pool in SEED_POOLS:
        client.pools.add(pool)
    dot_env: dict[str, str] = {}
    made = header_commands()
    assert {args[2] for args in made if args[:2] == ["pool", "credentials"]} == SEED_POOLS
    for args in made:
        done = cli(*args)
        assert done.returncode == 0, done.stderr
        for line in done.stdout.splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.partition("=")
                dot_env[name] = value
    admin_password = str(redis.Redis.from_url(env["WORKERPOOL_REDIS_URL"]).connection_pool
                         .connection_kwargs["password"])
    dot_env |= {"WORKERPOOL_ADMIN_PASSWORD": admin_password,
                "WORKERPOOL_SECRET_KEY": env["WORKERPOOL_SECRET_KEY"]}

    for service, pool in WORKERS.items():
        environment = interpolated(services()[service]["environment"], dot_env)
        login = redis.Redis.from_url(environment["WORKERPOOL_REDIS_URL"], decode_responses=True)
        assert login.acl_whoami() == credentials.user_name(slugify(pool))
        assert admin_password not in environment["WORKERPOOL_REDIS_URL"]

    pool = WORKERS["database-worker"]
    environment = interpolated(services()["database-worker"]["environment"], dot_env)
    start_worker(pool, extra_env=environment)
    secret = "db-" + os.urandom(8).hex()
    step = client.run(ScriptStep(script='printf "%s" "$Pw" | rev', pool=pool,
                                 sensitive_variables={"Pw": secret}))
    assert step.wait(timeout=60).state == SUCCESS
    assert secret[::-1] in "".join(e.text for e in step.logs())
