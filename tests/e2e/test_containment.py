"""A step's processes: found by token and killed, even outside their group; the pids cgroup
behind WORKERPOOL_STEP_MAX_PROCESSES; output cut into bounded lines."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from workerpool.core.variables import Masker
from workerpool.worker.isolation.containment import (
    NO_CGROUP,
)
from workerpool.worker.step.execution import OutputStream, ScriptRun, find_program
from workerpool.worker.step.steplog import StepLog


def test_worker_start_refuses_a_limit_it_cannot_enforce_where_there_is_no_cgroup(env):
    """The worker runs in a mount namespace whose cgroup file systems are hidden by a tmpfs."""
    hide = ("mount -t tmpfs none /sys/fs/cgroup && "
            f"exec {sys.executable} -m workerpool worker start --builtin")
    done = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", hide],
                          env={**env, "WORKERPOOL_STEP_MAX_PROCESSES": "9"},
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stderr
    assert done.stderr == f"workerpool: error: {NO_CGROUP}\n"


# -- output lines -------------------------------------------------------------------------------


@pytest.fixture
def steplog(raw) -> StepLog:
    return StepLog(raw, "p~" + "0" * 16, Masker(()), max_lines=5, max_line_bytes=10)


def test_output_lines_are_decoded_safely_and_long_lines_cut_once(steplog):
    out = OutputStream("stdout", steplog)
    for chunk in (b"a\0b\nbad \xff\n", b"x" * 25, b"y" * 25, b"z\nafter\nlast"):
        out.feed(chunk)
    out.close()
    texts = [p["x"] for p in steplog._pending if p["s"] == "stdout"]
    assert texts == ["a\ufffdb", "bad \ufffd", "x" * 10 + " [line cut at 10 chars]", "after",
                     "last"]


def test_a_full_log_only_counts_lines_but_still_reads_service_messages(steplog):
    out = OutputStream("stdout", steplog)
    out.feed(b"1\n2\n3\n4\n5\n" + b"more\n" * 100_000)
    out.feed(b"##workerpool[setVariable name='Late' value='yes']\n" + b"tail\n" * 10)
    out.close()
    assert steplog.written == 5 and steplog.dropped == 100_010
    assert steplog.outputs == {"Late": "yes"}


# -- starting the script ------------------------------------------------------------------------


def tool(directory: Path, says: str) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "mytool").write_text(f"#!/bin/sh\necho {says}\n")
    (directory / "mytool").chmod(0o755)


def test_a_program_is_found_on_the_scripts_path_and_found_again_once_moved(raw, tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    tool(first, "first")
    tool(second, "second")
    path = f"{first}:{second}:{os.defpath}"
    assert find_program("mytool", path) == str(first / "mytool")
    assert find_program("/bin/sh", path) is None  # a path is used as given

    def run() -> list[str]:
        steplog = StepLog(raw, "p~" + "1" * 16, Masker(()), max_lines=50, max_line_bytes=100)
        outcome = ScriptRun(["mytool"], tmp_path, {"PATH": path}, steplog, 30, 1).run()
        assert outcome.exit_code == 0
        return [p["x"] for p in steplog._pending if p["s"] == "stdout"]

    assert run() == ["first"]
    (first / "mytool").unlink()  # the remembered place is gone: the PATH is searched again
    assert run() == ["second"]
    assert find_program("mytool", path) == str(second / "mytool")
