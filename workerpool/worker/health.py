"""A pool worker's health check: its pool's required tools on the PATH, then the pool's script.

No Redis and no Celery here: the worker's runtime re-reads its pool, calls ``check`` every
``WORKERPOOL_HEALTH_INTERVAL`` seconds, and stops or resumes consuming on the answer.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any, NamedTuple

from workerpool.core.errors import one_line
from workerpool.core.pools import Pool
from workerpool.worker.isolation.containment import SCRIPT_UMASK, signal_user
from workerpool.worker.isolation.users import ScriptUser, hand_over

DEFAULT_TIMEOUT = 30.0
MAX_REASON = 200
_OUTPUT_READ = 64 * 1024


class Health(NamedTuple):
    healthy: bool
    reason: str = ""  # why not, for people: shown by `worker list`


PASSED = Health(True)  # the check passed (a worker state is workers.HEALTHY)


def check(pool: Pool, env: Mapping[str, str], timeout: float = DEFAULT_TIMEOUT,
          user: ScriptUser | None = None) -> Health:
    """Healthy when every tool *pool* requires is on *env*'s PATH and its health check script,
    run as *user* (None: this process's), exits 0 within *timeout*. Never raises: a check that
    cannot run makes the worker unhealthy."""
    try:
        path = env.get("PATH", os.defpath)
        for tool in pool.requires:
            if shutil.which(tool, path=path) is None:
                return Health(False, f"{tool} is not on PATH")
        if not pool.health_check.strip():
            return PASSED
        return run_script(pool.health_check, env, timeout, user)
    except Exception as exc:  # a broken check must not take the worker down
        return Health(False, _one_line(f"health check could not run: {exc}"))


def run_script(script: str, env: Mapping[str, str], timeout: float,
               user: ScriptUser | None = None) -> Health:
    """Run *script* with bash, as *user*, in its own process group and a fresh directory; the
    group is killed on timeout, and so is anything the script leaves running (with *user*'s
    own uid, every process of it)."""
    bash = shutil.which("bash", path=env.get("PATH", os.defpath))
    if bash is None:
        return Health(False, "bash is not on PATH, so the health check script cannot run")
    # Output goes to a file, not a pipe: a background child holding the pipe open cannot make
    # a finished check look like a hung one.
    with tempfile.TemporaryFile() as output, \
            tempfile.TemporaryDirectory(prefix="workerpool-health-") as workdir:
        options: dict[str, Any] = {}
        if user is not None:
            hand_over(Path(workdir), user)
            env = {**env, **user.env(Path(workdir))}
            options = {"user": user.uid, "group": user.gid, "extra_groups": [],
                       "umask": SCRIPT_UMASK}
        process = subprocess.Popen([bash, "-c", script], stdin=subprocess.DEVNULL, stdout=output,
                                   stderr=subprocess.STDOUT, env=dict(env), cwd=workdir,
                                   start_new_session=True, **options)
        try:
            code = process.wait(timeout)
        except subprocess.TimeoutExpired:
            return Health(False, f"health check timed out after {timeout:g}s")
        finally:
            _kill_group(process)
            if user is not None and user.exclusive:
                signal_user(user.uid, signal.SIGKILL)
        return Health(True) if code == 0 else Health(False, _failure(code, output))


def _kill_group(process: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):  # the group is gone
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def _failure(code: int, output: IO[bytes]) -> str:
    """The script's first line of output, else how it ended."""
    output.seek(0)
    text = output.read(_OUTPUT_READ).decode(errors="replace")
    first = next((line.strip() for line in text.splitlines() if line.strip()), "")
    if first:
        return _one_line(first)
    if code < 0:
        return f"health check was killed by signal {-code}"
    return f"health check exited with code {code}"


def _one_line(text: str) -> str:
    line = one_line(text)
    return line if len(line) <= MAX_REASON else line[: MAX_REASON - 3] + "..."
