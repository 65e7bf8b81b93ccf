"""A pool's cleanup script as an exclusive worker runs it (``health.clean_up``), without Redis."""

from __future__ import annotations

import os
import time
from pathlib import Path

from conftest import pid_alive, wait_for

from workerpool.core.pools import Pool
from workerpool.worker.health import PASSED, clean_up


def test_no_cleanup_script_passes_without_running_anything(tmp_path: Path) -> None:
    assert clean_up(Pool("K", "k"), {"PATH": str(tmp_path)}, None, tmp_path) == PASSED


def test_the_cleanup_runs_in_the_directory_given_and_hands_over_its_output(
        tmp_path: Path) -> None:
    (tmp_path / "left-behind").touch()
    printed: list[str] = []
    pool = Pool("K", "k", cleanup_script='rm left-behind && echo "removed in $PWD"')
    assert clean_up(pool, dict(os.environ), None, tmp_path, output=printed.append) == PASSED
    assert not (tmp_path / "left-behind").exists()
    assert printed == [f"removed in {tmp_path}\n"]


def test_a_failed_cleanup_says_why(tmp_path: Path) -> None:
    env = dict(os.environ)
    assert clean_up(Pool("K", "k", cleanup_script="echo '  still mounted'; exit 1"), env,
                    None, tmp_path) == (False, "still mounted")
    assert clean_up(Pool("K", "k", cleanup_script="exit 4"), env, None, tmp_path) == \
        (False, "cleanup exited with code 4")
    assert clean_up(Pool("K", "k", cleanup_script="exit 0"), {"PATH": str(tmp_path)}, None,
                    tmp_path) == (False, "bash is not on PATH, so the cleanup script cannot run")


def test_a_cleanup_past_its_timeout_is_killed_with_what_it_left(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    pool = Pool("K", "k", cleanup_script=f"sleep 60 & echo $! > {pids}; sleep 60")
    started = time.monotonic()
    assert clean_up(pool, dict(os.environ), None, tmp_path, timeout=0.5) == \
        (False, "cleanup timed out after 0.5s")
    assert time.monotonic() - started < 5
    background = int(pids.read_text())
    wait_for(lambda: not pid_alive(background), 5, "the cleanup's background child to be killed")


def test_a_cleanup_that_cannot_start_has_failed(tmp_path: Path) -> None:
    failed = clean_up(Pool("K", "k", cleanup_script="true"), dict(os.environ), None,
                      tmp_path / "gone")
    assert not failed.healthy and failed.reason.startswith("cleanup could not run: ")
