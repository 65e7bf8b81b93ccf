"""A pool worker's health check: its pool's required tools on the PATH, then the pool's script.

No Redis and no Celery here: the worker's runtime re-reads its pool, calls ``check`` every
``WORKERPOOL_HEALTH_INTERVAL`` seconds, and stops or resumes consuming on the answer. An
exclusive worker runs its pool's cleanup script after each step with the same ``run_script``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Callable, Iterator, Mapping
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


def clean_up(pool: Pool, env: Mapping[str, str], user: ScriptUser | None, cwd: Path | None,
             timeout: float = DEFAULT_TIMEOUT,
             output: Callable[[str], None] | None = None) -> Health:
    """Run *pool*'s cleanup script (PASSED if it has none) as a health check script is run, in
    *cwd*. Never raises: a cleanup that cannot run has failed."""
    if not pool.cleanup_script.strip():
        return PASSED
    try:
        return run_script(pool.cleanup_script, env, timeout, user, cwd, "cleanup", output)
    except Exception as exc:  # e.g. *cwd* gone; the worker must not take the next step
        return Health(False, _one_line(f"cleanup could not run: {exc}"))


def run_script(script: str, env: Mapping[str, str], timeout: float,
               user: ScriptUser | None = None, cwd: Path | None = None,
               what: str = "health check", output: Callable[[str], None] | None = None) -> Health:
    """Run *script* with bash, as *user*, in its own process group, in *cwd* (None: a fresh
    directory); the group is killed on timeout, and so is anything the script leaves running
    (with *user*'s own uid, every process of it). *what* names it in the reason; *output*, if
    given, gets what it printed (its first 64 KiB)."""
    bash = shutil.which("bash", path=env.get("PATH", os.defpath))
    if bash is None:
        return Health(False, f"bash is not on PATH, so the {what} script cannot run")
    # Output goes to a file, not a pipe: a background child holding the pipe open cannot make
    # a finished check look like a hung one.
    with tempfile.TemporaryFile() as printed, _directory(cwd, user) as workdir:
        options: dict[str, Any] = {}
        if user is not None:
            env = {**env, **user.env(workdir)}
            options = {"user": user.uid, "group": user.gid, "extra_groups": [],
                       "umask": SCRIPT_UMASK}
        process = subprocess.Popen([bash, "-c", script], stdin=subprocess.DEVNULL, stdout=printed,
                                   stderr=subprocess.STDOUT, env=dict(env), cwd=workdir,
                                   start_new_session=True, **options)
        try:
            code = process.wait(timeout)
        except subprocess.TimeoutExpired:
            return Health(False, f"{what} timed out after {timeout:g}s")
        finally:
            _kill_group(process)
            if user is not None and user.exclusive:
                signal_user(user.uid, signal.SIGKILL)
            if output is not None:
                output(_text(printed))
        return Health(True) if code == 0 else Health(False, _failure(code, printed, what))


@contextlib.contextmanager
def _directory(cwd: Path | None, user: ScriptUser | None) -> Iterator[Path]:
    """*cwd* as it is, or a fresh directory given to *user*, removed afterwards."""
    if cwd is not None:
        yield cwd
        return
    with tempfile.TemporaryDirectory(prefix="workerpool-health-") as fresh:
        hand_over(Path(fresh), user)
        yield Path(fresh)


def _kill_group(process: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):  # the group is gone
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def _text(output: IO[bytes]) -> str:
    output.seek(0)
    return output.read(_OUTPUT_READ).decode(errors="replace")


def _failure(code: int, output: IO[bytes], what: str) -> str:
    """The script's first line of output, else how it ended."""
    text = _text(output)
    first = next((line.strip() for line in text.splitlines() if line.strip()), "")
    if first:
        return _one_line(first)
    if code < 0:
        return f"{what} was killed by signal {-code}"
    return f"{what} exited with code {code}"


def _one_line(text: str) -> str:
    line = one_line(text)
    return line if len(line) <= MAX_REASON else line[: MAX_REASON - 3] + "..."
