"""Pool health checks: required tools and check scripts, on real workers; the Offline bound."""

from __future__ import annotations

import os
import time
from pathlib import Path

from conftest import TOOL, pid_alive, put_tool, wait_for

from workerpool.core.pools import Pool
from workerpool.worker.health import check

# --- the check itself (no Redis) -----------------------------------------------------------------


def test_check_names_the_missing_tool(tools: Path) -> None:
    pool = Pool("K", "k", requires=("sh", TOOL))
    assert check(pool, {"PATH": os.environ["PATH"]}) == (False, f"{TOOL} is not on PATH")
    put_tool(tools)
    assert check(pool, {"PATH": f"{tools}{os.pathsep}{os.environ['PATH']}"}) == (True, "")


def test_check_script_failure_reports_its_first_line() -> None:
    env = dict(os.environ)
    failing = Pool("K", "k", health_check='\necho "  disk /var is 99% full"\necho more\nexit 3')
    assert check(failing, env) == (False, "disk /var is 99% full")
    assert check(Pool("K", "k", health_check="exit 4"), env) == \
        (False, "health check exited with code 4")
    assert check(Pool("K", "k", health_check="kill -9 $$"), env) == \
        (False, "health check was killed by signal 9")
    assert check(Pool("K", "k", health_check="test -n \"$HOME\""), env) == (True, "")


def test_check_timeout_kills_the_whole_group(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    pool = Pool("K", "k", health_check=f"sleep 60 & echo $! > {pids}; sleep 60")
    started = time.monotonic()
    assert check(pool, dict(os.environ), timeout=0.5) == \
        (False, "health check timed out after 0.5s")
    assert time.monotonic() - started < 5
    background = int(pids.read_text())
    wait_for(lambda: not pid_alive(background), 5, "the script's background child to be killed")


def test_check_passes_despite_a_background_child_and_kills_it(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    pool = Pool("K", "k", health_check=f"sleep 60 & echo $! > {pids}; exit 0")
    started = time.monotonic()
    assert check(pool, dict(os.environ), timeout=10) == (True, "")
    assert time.monotonic() - started < 5
    background = int(pids.read_text())
    wait_for(lambda: not pid_alive(background), 5, "the script's background child to be killed")


def test_check_never_raises(tmp_path: Path) -> None:
    no_bash = check(Pool("K", "k", health_check="exit 0"), {"PATH": str(tmp_path)})
    assert no_bash == (False, "bash is not on PATH, so the health check script cannot run")
    broken = check(Pool("K", "k", health_check="exit 0"), {**os.environ, "BAD": "a\x00b"})
    assert not broken.healthy and broken.reason.startswith("health check could not run: ")
