"""A step's processes: found by token and killed, even outside their group; the pids cgroup
behind WORKERPOOL_STEP_MAX_PROCESSES; output cut into bounded lines."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
from conftest import pid_alive, wait_for

from workerpool.core.errors import BadInput
from workerpool.core.settings import Settings
from workerpool.worker.isolation import containment
from workerpool.worker.isolation.containment import (
    TOKEN_VAR,
    Containment,
    StepContainment,
    kill_worker_leftovers,
    needle,
    owner_tag,
    pids_cgroup,
    read_environ,
    require_pids_cgroup,
)
from workerpool.worker.isolation.users import ScriptUser
from workerpool.worker.isolation.watchdog import SLOTS, GroupTable, read_groups


def escaper(token: str, tmp_path: Path) -> int:
    """A process in a session of its own whose environment carries *token*; its pid."""
    pid_file = tmp_path / f"{token[-6:]}.pid"
    subprocess.Popen(["setsid", "sh", "-c", f"echo $$ > {pid_file}; exec sleep 300"],
                     env={**os.environ, TOKEN_VAR: token}, start_new_session=True)
    return int(str(wait_for(lambda: pid_file.exists() and pid_file.read_text().strip(), 10)))


def test_kill_all_kills_the_steps_processes_outside_its_group_and_only_them(tmp_path):
    mine, other = escaper("owner.step-a", tmp_path), escaper("owner.step-b", tmp_path)
    assert StepContainment("owner.step-a").kill_all()
    wait_for(lambda: not pid_alive(mine), 5, "the step's process to die")
    assert pid_alive(other)
    StepContainment("owner.step-b").kill_all()


def test_the_watchdog_kills_every_step_process_of_its_worker(tmp_path):
    root = tmp_path / "worker-root"
    ours = [escaper(f"{owner_tag(root)}.{n}", tmp_path) for n in ("s1", "s2")]
    theirs = escaper(f"{owner_tag(tmp_path / 'another')}.s1", tmp_path)
    kill_worker_leftovers(root)
    for pid in ours:
        wait_for(lambda pid=pid: not pid_alive(pid), 5, "a step process to die")
    assert pid_alive(theirs)
    kill_worker_leftovers(tmp_path / "another")


def fake_proc(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cgroup: str,
              mountinfo: str) -> None:
    proc = tmp_path / "proc"
    (proc / "self").mkdir(parents=True)
    (proc / "self" / "cgroup").write_text(cgroup)
    (proc / "self" / "mountinfo").write_text(mountinfo)
    monkeypatch.setattr(containment, "PROC", proc)


def test_pids_cgroup_v2_needs_pids_enabled_for_children(tmp_path, monkeypatch):
    mount = tmp_path / "cg2"
    own = mount / "system.slice" / "worker.service"
    own.mkdir(parents=True)
    fake_proc(tmp_path, monkeypatch, "0::/system.slice/worker.service\n",
              f"30 23 0:26 / {mount} rw - cgroup2 cgroup2 rw,nsdelegate\n")
    assert pids_cgroup() is None
    (own / "cgroup.subtree_control").write_text("cpu pids\n")
    assert pids_cgroup() == (own, 2)


def test_pids_cgroup_v1_inside_a_container_mount(tmp_path, monkeypatch):
    mount = tmp_path / "pids"
    mount.mkdir()
    fake_proc(tmp_path, monkeypatch, "8:pids:/docker/abc\n1:cpu:/docker/abc\n",
              f"39 31 0:36 /docker/abc {mount} rw - cgroup cgroup rw,pids\n")
    assert pids_cgroup() == (mount, 1)


def test_no_pids_cgroup_refuses_a_process_limit(tmp_path, monkeypatch):
    fake_proc(tmp_path, monkeypatch, "0::/\n", "")
    assert pids_cgroup() is None
    require_pids_cgroup(None)
    for refuse in (lambda: require_pids_cgroup(50), lambda: Containment(tmp_path, 50)):
        with pytest.raises(BadInput, match="WORKERPOOL_STEP_MAX_PROCESSES needs a pids cgroup"):
            refuse()
    assert Containment(tmp_path).cgroups is None


@pytest.mark.parametrize("raw,expected", [(None, None), ("", None), ("64", 64)])
def test_step_max_processes_setting(raw, expected):
    env = {} if raw is None else {"WORKERPOOL_STEP_MAX_PROCESSES": raw}
    assert Settings.from_env(env).step_max_processes == expected


@pytest.mark.parametrize("raw", ["0", "-1", "many"])
def test_step_max_processes_refuses_bad_values(raw):
    with pytest.raises(BadInput, match="STEP_MAX_PROCESSES"):
        Settings.from_env({"WORKERPOOL_STEP_MAX_PROCESSES": raw})


def test_candidates_are_the_pids_handed_out_since_the_first_or_all_after_a_wrap():
    before = containment.forks()
    child = subprocess.Popen(["sleep", "30"])
    try:
        since = list(containment.candidates(child.pid, before))
        assert since[0] == child.pid and since == sorted(since)
        assert os.getppid() not in since  # started before: not a candidate
        wrapped = set(containment.candidates(containment.last_pid() + 1, before))  # a wrap
        assert {os.getpid(), os.getppid(), child.pid} <= wrapped
        # So many pids handed out since that the counter may have come round: every process.
        many = set(containment.candidates(child.pid, before - containment.PROBE_RANGE))
        assert {os.getpid(), os.getppid(), child.pid} <= many
    finally:
        child.kill()
        child.wait()


def test_the_group_table_lists_running_groups_for_the_watchdog():
    table = GroupTable()
    assert read_groups(table.fd) == []
    for pgid in range(100, 100 + SLOTS):
        assert table.add(pgid)
    assert not table.add(99)  # full: that group is found by its step token only
    table.remove(100)
    table.remove(12345)  # never listed: nothing happens
    assert table.add(99)
    listed = read_groups(table.fd)
    assert sorted(listed) == [99, *range(101, 100 + SLOTS)]
    for pgid in listed:
        table.remove(pgid)
    assert read_groups(table.fd) == []


# -- starting the script ------------------------------------------------------------------------


# -- reading a process's environment ------------------------------------------------------------


def test_a_child_caught_in_its_exec_is_still_seen_with_its_token():
    """Read right after a shell reports a background job's pid, the job is often mid-exec and
    its environment reads empty (130 of 300 tries on this machine); it must still be found."""
    env = {**os.environ, "WORKERPOOL_STEP_TOKEN": "owner.exec-race"}
    for _ in range(100):
        read_end, write_end = os.pipe()
        shell = subprocess.Popen(["bash", "-c", f"set -m; sleep 5 & echo $! >&{write_end}"],
                                 env=env, pass_fds=(write_end,))
        os.close(write_end)
        job = int(os.read(read_end, 64))  # the job holds the pipe too: no waiting for its end
        os.close(read_end)
        try:
            environ = read_environ(job)
            assert environ is not None and needle("owner.exec-race") in b"\0" + environ
        finally:
            os.kill(job, signal.SIGKILL)
            shell.wait()


def test_environments_of_zombies_kernel_threads_and_empty_ones(tmp_path):
    began = time.monotonic()
    assert not read_environ(2)  # kthreadd: a kernel thread, answered at once
    assert time.monotonic() - began < containment.EXEC_SETTLE_SECONDS
    zombie = subprocess.Popen(["true"])
    wait_for(lambda: Path(f"/proc/{zombie.pid}/stat").read_text().split(")")[-1].split()[0]
             == "Z", 5, "the child to exit")
    assert read_environ(zombie.pid) is None
    zombie.wait()
    sleep = os.path.realpath(shutil.which("sleep") or "sleep")
    bare = subprocess.Popen(["env", "-i", "sleep", "5"])
    # The exec itself, not the command line: "env -i sleep 5" names sleep before env has
    # exec'd it, while the environment is still the parent's.
    wait_for(lambda: os.path.realpath(f"/proc/{bare.pid}/exe") == sleep, 5,
             "env -i to exec sleep")
    assert read_environ(bare.pid) == b""  # no environment at all, after a short wait
    bare.kill()
    bare.wait()


def test_a_script_changes_user_through_setpriv_or_python_when_there_is_none(monkeypatch):
    user = ScriptUser(61234, 61000, "workerpool-61234", None, True)
    argv, options = StepContainment("owner.step", None, user).start(["bash", "run.sh"])
    assert argv == [shutil.which("setpriv"), "--reuid=61234", "--regid=61000",
                    "--clear-groups", "--", "bash", "run.sh"]
    assert options == {"umask": 0o077}  # nothing that keeps Popen from using vfork

    monkeypatch.setattr(containment, "setpriv_path", lambda: None)
    argv, options = StepContainment("owner.step", None, user).start(["bash", "run.sh"])
    assert argv == ["bash", "run.sh"]
    assert options == {"user": 61234, "group": 61000, "extra_groups": [], "umask": 0o077}
    assert StepContainment("owner.step").start(["bash"]) == (["bash"], {})
