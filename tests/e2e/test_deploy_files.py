"""The compose file's one-shot ``init`` script, run against a real Redis: it creates the pools
the workers consume, and a second run still succeeds (the files themselves are checked in
tests/unit/deploy/)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from deployfiles import SEED_POOLS, WORKERS, service_argv, services

from workerpool import Client


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

