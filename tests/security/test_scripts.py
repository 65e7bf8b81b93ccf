"""A script attacks its worker, from inside a step: it looks for the worker's secrets, reads a
concurrent step's files, changes what later steps load, and leaves processes behind.

The worker runs as root (as in the Dockerfile and compose), so by default its scripts run as
users of their own (worker/isolation/users.py). Every claim is checked by value: the Redis
password, the sealing key and the other step's secret do not appear in what the attack found,
while what the script may see (its own secret) does, so the search itself is shown to work.
"""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path
from urllib.parse import urlparse

import pytest
from conftest import ADMIN_PASSWORD, PROC_DUMP, SECRET_KEY, wait_for

from workerpool import ScriptStep
from workerpool.core.steps import CANCELLED, SUCCESS, TIMED_OUT

POOL = "Database Worker Pool"

# Everything a script could read of its machine that may hold the worker's settings: every
# process's environment, command line and open files (the worker, its watchdog and stager, the
# other step: PROC_DUMP), the worker's memory, the worker's home, the other step's working
# directory, and the folder of all working directories. Errors go to the dump too, as evidence
# of each attempt.
SEARCH = 'dump="$OUT"' + PROC_DUMP + r"""head -c 1048576 /proc/$WORKER_PID/mem >> "$dump" 2>&1
grep -ra . "$WORKER_HOME" >> "$dump" 2>&1
ls -la "$WORKER_HOME" >> "$dump" 2>&1
ls -la "$(dirname "$PWD")" >> "$dump" 2>&1
other=$(cat "$OTHER_DIR_FILE")
ls -la "$other" >> "$dump" 2>&1
cat "$other"/* >> "$dump" 2>&1
echo "searched as $(id -u)" >> "$dump"
"""


def test_a_script_finds_none_of_its_workers_secrets_nor_a_concurrent_steps(
        client, start_worker, tmp_path: Path) -> None:
    client.pools.add(POOL)
    worker = start_worker(POOL, concurrency=2)
    victim_secret, own_secret = "victim-" + os.urandom(8).hex(), "own-" + os.urandom(8).hex()
    other_dir, done, dump = tmp_path / "victim-dir", tmp_path / "done", tmp_path / "dump"
    victim = client.run(ScriptStep(
        pool=POOL, name="victim", sensitive_variables={"DbPassword": victim_secret},
        script=f'echo "$DbPassword" > secret.txt; echo "$PWD" > {other_dir}\n'
               f'while [ ! -e {done} ]; do sleep 0.05; done'))
    wait_for(other_dir.exists, 30, "the victim step to start")
    attack = client.run(ScriptStep(
        pool=POOL, name="attacker", script=SEARCH,
        sensitive_variables={"Own": own_secret},
        variables={"OUT": str(dump), "WORKER_PID": str(worker.pid),
                   "WORKER_HOME": str(tmp_path / "home"), "OTHER_DIR_FILE": str(other_dir)}))
    try:
        assert attack.wait(timeout=120).state == SUCCESS
    finally:
        done.touch()
    assert victim.wait(timeout=60).state == SUCCESS
    found = dump.read_bytes()
    # The search ran, as a user that is not root, and read environments: its own secret is in.
    assert b"searched as 0\n" not in found and b"searched as " in found
    assert own_secret.encode() in found
    own_password = str(urlparse(worker.url).password)  # its pool's Redis user's
    assert len(own_password) > 20
    pool_key = worker.pool_key.rpartition(":")[2]  # POOL:GENERATION:PRIVATE-KEY
    assert len(pool_key) > 40
    for secret in (ADMIN_PASSWORD, own_password, SECRET_KEY, pool_key, victim_secret):
        assert secret.encode() not in found, f"{secret[:8]}... was found by the script"
    assert b"Permission denied" in found  # the worker's files and the victim's folder


def test_a_script_cannot_change_what_later_steps_load(client, start_worker,
                                                       tmp_path: Path) -> None:
    client.pools.add(POOL)
    start_worker(POOL)
    report = tmp_path / "report"
    tamper = client.run(ScriptStep(pool=POOL, name="tamper", variables={"OUT": str(report)},
                                   script='root=$(dirname "$PWD")\n'
                                          '{ echo "echo PWNED" >> "$BASH_ENV"; } 2>> "$OUT"\n'
                                          'ls "$root/.staged" >> "$OUT" 2>&1\n'
                                          'touch "$root/support/evil" 2>> "$OUT"\n'
                                          'echo "tried as $(id -u)" >> "$OUT"'))
    assert tamper.wait(timeout=60).state == SUCCESS
    text = report.read_text()
    assert "tried as " in text and "tried as 0" not in text
    assert text.count("Permission denied") == 3
    later = client.run(ScriptStep(pool=POOL, script="echo clean")).wait(timeout=60)
    assert [e.text for e in later.log if e.stream == "stdout"] == ["clean"]


def test_a_script_runs_as_a_user_of_its_own_with_a_private_working_directory(
        client, start_worker) -> None:
    client.pools.add(POOL)
    start_worker(POOL)
    result = client.run(ScriptStep(pool=POOL, script=(
        'echo "$(id -u) $(id -g) $(id -G)"; stat -c "%u %a" .; echo "$HOME $USER"; '
        'touch mine; stat -c "%a" mine; grep NoNewPrivs /proc/self/status; '
        'grep -E "^(Uid|Gid):" /proc/self/status'))).wait(timeout=60)
    assert result.state == SUCCESS, result.message
    ids, folder, home, created, privs, uids, gids = [
        e.text for e in result.log if e.stream == "stdout"]
    uid, gid, groups = ids.split(" ", 2)
    assert 61000 <= int(uid) <= 61999 and gid == groups == "61000"
    assert folder == f"{uid} 700"
    assert home.split() == [home.split()[0], f"workerpool-{uid}"]
    assert created == "600"  # what a script creates is its own
    assert privs.split() == ["NoNewPrivs:", "1"]  # no way back to root by a setuid program
    assert uids.split() == ["Uid:", uid, uid, uid, uid]  # real, effective, saved, filesystem:
    assert gids.split() == ["Gid:", gid, gid, gid, gid]  # none of them left as root's


ESCAPES = ('env -i setsid sleep {a} >/dev/null 2>&1 < /dev/null &\n'
           'python3 -c "import os, sys\n'
           'if os.fork() == 0:\n'
           '    os.setsid()\n'
           '    if os.fork() == 0:\n'
           '        os.execve(\'/bin/sleep\', [\'sleep\', \'{b}\'], {{}})\n'
           '    os._exit(0)\n'
           'os.wait()"\n')


def sleeping(seconds: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if argv[:2] == [b"sleep", str(seconds).encode()]:
                found.append(int(entry))
    return found


@pytest.mark.parametrize("ending", ["success", "timeout", "cancel"])
def test_nothing_a_script_starts_outlives_its_step(client, start_worker, tmp_path: Path,
                                                   ending: str) -> None:
    """A ``setsid`` child with an empty environment and a double fork that drops its token and
    execs ``sleep`` with no environment at all: neither survives the step's end."""
    client.pools.add(POOL)
    start_worker(POOL)
    a, b = {"success": (7771, 7772), "timeout": (7773, 7774), "cancel": (7775, 7776)}[ending]
    started = tmp_path / "escaped"
    script = ESCAPES.format(a=a, b=b) + f"touch {started}\n"
    script += "sleep 300\n" if ending != "success" else ""
    handle = client.run(ScriptStep(pool=POOL, script=script,
                                   timeout=3 if ending == "timeout" else None))
    wait_for(started.exists, 30, "the escapes to start")
    wait_for(lambda: sleeping(a) and sleeping(b), 10, "both escaped processes")
    if ending == "cancel":
        handle.cancel()
    expected = {"success": SUCCESS, "timeout": TIMED_OUT, "cancel": CANCELLED}[ending]
    assert handle.wait(timeout=60).state == expected
    assert sleeping(a) == [] and sleeping(b) == []


def test_a_root_cgroup_is_out_of_reach_and_the_process_cap_holds(client, start_worker,
                                                                  tmp_path: Path) -> None:
    """A script of a worker with WORKERPOOL_STEP_MAX_PROCESSES tries to move itself out of its
    step's pids cgroup (into the root one, which a root script could), then forks past the cap."""
    client.pools.add(POOL)
    start_worker(POOL, extra_env={"WORKERPOOL_STEP_MAX_PROCESSES": "20"})
    result = client.run(ScriptStep(pool=POOL, script=(
        'for procs in /sys/fs/cgroup/cgroup.procs /sys/fs/cgroup/pids/cgroup.procs '
        '/sys/fs/cgroup/unified/cgroup.procs; do\n'
        '  [ -e "$procs" ] && { echo $$ > "$procs" && echo "escaped via $procs"; }\n'
        'done 2>/dev/null\n'
        'grep -c workerpool- /proc/self/cgroup\n'
        'python3 -c "import subprocess\n'
        'started = 0\n'
        'for _ in range(40):\n'
        '    try:\n'
        '        subprocess.Popen([\'sleep\', \'30\'])\n'
        '    except OSError:\n'
        '        break\n'
        '    started += 1\n'
        'print(\'running\', started)"'))
    ).wait(timeout=60)
    assert result.state == SUCCESS, [(e.stream, e.text) for e in result.log]
    out = [e.text for e in result.log if e.stream == "stdout"]
    assert not any(line.startswith("escaped") for line in out), out
    assert int(out[0]) >= 1  # still in the step's cgroup
    assert int(out[-1].split()[1]) < 20, out


def test_script_user_same_runs_as_the_worker_and_says_so(client, start_worker, env,
                                                          tmp_path: Path) -> None:
    client.pools.add(POOL)
    worker = start_worker(POOL, extra_env={"WORKERPOOL_SCRIPT_USER": "same"})
    result = client.run(ScriptStep(pool=POOL, script="id -u")).wait(timeout=60)
    assert [e.text for e in result.log if e.stream == "stdout"] == ["0"]
    log = next(tmp_path.glob("worker-*.log")).read_text()
    assert "WARNING: scripts run as root, this worker's own user" in log
    worker.proc.send_signal(signal.SIGTERM)
    worker.proc.wait(30)


def test_a_named_script_user_runs_every_step(client, start_worker, tmp_path: Path) -> None:
    name = "wp-deploy-" + os.urandom(3).hex()
    subprocess.run(["useradd", "--system", "--create-home", name], check=True)
    try:
        client.pools.add(POOL)
        start_worker(POOL, extra_env={"WORKERPOOL_SCRIPT_USER": name})
        result = client.run(ScriptStep(pool=POOL, script='id -un; echo "$HOME"')
                            ).wait(timeout=60)
        assert [e.text for e in result.log if e.stream == "stdout"] == [name, f"/home/{name}"]
        log = next(tmp_path.glob("worker-*.log")).read_text()
        assert f"scripts run as user {name}" in log
    finally:
        subprocess.run(["userdel", "--remove", name], check=False, capture_output=True)


def test_worker_start_refuses_a_root_or_unknown_script_user(cli) -> None:
    for user, words in (("root", "scripts must not run as root"),
                        ("no-such-user-x", "no such user on this machine")):
        done = cli("worker", "start", "--pool", POOL, "--script-user", user)
        assert done.returncode == 2 and words in done.stderr, done.stderr
        assert "Traceback" not in done.stderr



def test_a_cleanup_script_finds_none_of_its_workers_secrets(client, start_worker,
                                                            tmp_path: Path) -> None:
    """An exclusive worker's cleanup script runs the same search, after a step that held a
    secret: it runs as the step's user, with none of the worker's settings or the step's
    variables."""
    client.pools.add(POOL)
    worker = start_worker(POOL, flags=("--exclusive",))
    dump, nothing = tmp_path / "cleanup-dump", tmp_path / "no-other-step"
    nothing.write_text(str(tmp_path / "absent"))
    client.pools.edit(POOL, cleanup_script=(
        f"OUT={dump} WORKER_PID={worker.pid} WORKER_HOME={tmp_path / 'home'} "
        f"OTHER_DIR_FILE={nothing}\n{SEARCH}"))
    step_secret = "step-" + os.urandom(8).hex()
    step = client.run(ScriptStep(pool=POOL, name="before the cleanup", script="true",
                                 sensitive_variables={"DbPassword": step_secret}))
    assert step.wait(timeout=60).state == SUCCESS
    wait_for(lambda: dump.exists() and b"searched as " in dump.read_bytes(), 120,
             "the cleanup script's search")
    found = dump.read_bytes()
    assert b"searched as 0\n" not in found
    assert b"WORKERPOOL_STEP_ID=" in found  # it read its own environment
    own_password = str(urlparse(worker.url).password)
    pool_key = worker.pool_key.rpartition(":")[2]
    for secret in (ADMIN_PASSWORD, own_password, SECRET_KEY, pool_key, step_secret):
        assert secret.encode() not in found, f"{secret[:8]}... was found by the cleanup"
    assert b"Permission denied" in found  # it tried the worker's files
