"""Bad input at run time, on real workers (the runtime rows of docs/reliability.md, "Bad input").

Each case ends with a clear outcome, leaves no process of the step behind, and then the same
worker runs a trivial step: it keeps serving, and no step is left Running.
"""

from __future__ import annotations

import io
import json
import os
import signal
import struct
import time
import zipfile
from pathlib import Path

import pytest
from conftest import pid_alive, wait_for

from workerpool import ScriptStep
from workerpool.core import keys
from workerpool.core.packageref import PackageRef
from workerpool.core.steps import RUNNING
from workerpool.worker.isolation.containment import owner_tag, pids_cgroup, tagged_processes
from workerpool.worker.packages.builtin import push
from workerpool.worker.workdirs import workdir_root

POOL = "Work"
MAX_PROCESSES = 40
HAS_PIDS_CGROUP = pids_cgroup() is not None


@pytest.fixture
def work(client, start_worker):
    client.pools.add(POOL)
    return start_worker(POOL, concurrency=2)


def run(client, script: str, **fields) -> object:
    step = ScriptStep(script=script, pool=fields.pop("pool", POOL), **fields)
    return client.run(step).wait(timeout=60)


def stdout(result) -> list[str]:
    return [e.text for e in result.log if e.stream == "stdout"]


def system(result) -> list[str]:
    return [e.text for e in result.log if e.stream == "system"]


def step_processes(client, worker) -> list[int]:
    """Live processes still carrying one of *worker*'s step tokens."""
    [info] = [w for w in client.workers.list() if w.pid == worker.pid]
    found = []
    for pidfd in tagged_processes(owner_tag(workdir_root(info.name, info.instance)) + "."):
        found.append(pidfd)
        os.close(pidfd)
    return found


def assert_still_serves(client, raw, worker, pool: str = POOL) -> None:
    """The same worker runs a trivial step; nothing is Running; no step process is left."""
    assert worker.proc.poll() is None, "the worker exited"
    after = client.run(ScriptStep(script="echo still serving", pool=pool)).wait(timeout=30)
    assert after.state == "Success" and after.worker == worker.name
    assert stdout(after) == ["still serving"]
    assert raw.zcard(keys.running(worker.pool_slug)) == 0
    states = [raw.hget(key, "state") for key in raw.scan_iter(keys.space("*") + "step:*")
              if not key.endswith((":log", ":artifacts")) and ":artifact:" not in key]
    assert RUNNING not in states
    assert step_processes(client, worker) == []


def pid_from(path: Path) -> int:
    return int(str(wait_for(lambda: path.exists() and path.read_text().strip(), 20, path.name)))


def peak_rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


# -- output ------------------------------------------------------------------------------------


def test_100_mb_of_output_is_capped_quickly_in_bounded_memory(client, raw, work):
    assert_still_serves(client, raw, work)
    before = peak_rss_kb(work.pid)
    started = time.monotonic()
    lines = run(client, "yes | head -c 100000000")  # 50 million short lines
    assert time.monotonic() - started < 20
    assert lines.state == "Success"
    assert len(stdout(lines)) == 10_000
    assert "[log capped at 10000 lines; later lines are not stored]" in system(lines)
    assert "[49990000 more lines were not stored]" in system(lines)
    assert_still_serves(client, raw, work)

    one_line = run(client, "head -c 100000000 /dev/zero | tr '\\0' x; echo; echo after")
    assert one_line.state == "Success"
    assert stdout(one_line) == ["x" * 16_384 + " [line cut at 16384 chars]", "after"]
    assert peak_rss_kb(work.pid) - before < 64 * 1024
    assert_still_serves(client, raw, work)


def test_nul_bytes_and_invalid_utf8_are_stored_as_replacement_characters(cli, client, raw,
                                                                          work):
    script = ("printf 'nul:\\0:end\\n'; printf 'bad:\\377\\376:end\\n' >&2; "
              "printf 'cut:\\342\\202'")
    done = cli("run", "--pool", POOL, "--json", "--script", script)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    # Per stream: lines of two pipes have no order between them (the last stdout line, which
    # has no newline, is stored when stdout closes, before or after stderr's line).
    lines = {stream: [e["text"] for e in result["log"] if e["stream"] == stream]
             for stream in ("stdout", "stderr")}
    assert lines == {"stdout": ["nul:\ufffd:end", "cut:\ufffd"],
                     "stderr": ["bad:\ufffd\ufffd:end"]}
    plain = cli("run", "--pool", POOL, "--script", script)
    assert plain.returncode == 0 and "nul:\ufffd:end" in plain.stdout and "\0" not in plain.stdout
    assert_still_serves(client, raw, work)


def test_scripts_that_close_stdout_or_both_streams(client, raw, work):
    result = run(client, "exec 1>&-; echo lost; echo 'on stderr' >&2")
    assert result.state == "Success"
    stderr = [e.text for e in result.log if e.stream == "stderr"]
    assert stderr[-1] == "on stderr" and "Bad file descriptor" in stderr[0]
    assert_still_serves(client, raw, work)

    result = run(client, "exec 1>&- 2>&-; sleep 0.2; exit 3")
    assert (result.state, result.exit_code) == ("Failed", 3)
    assert_still_serves(client, raw, work)


def test_unknown_malformed_and_flooding_service_messages(client, raw, work):
    script = "\n".join([
        "echo \"##workerpool[frobnicate name='x']\"",
        "echo \"##workerpool[setVariable name='x' value='unterminated]\"",
        "echo '##workerpool['",
        "echo \"##workerpool[setVariable value='no name']\"",
        "echo \"##workerpool[createArtifact name='no path']\"",
        "echo \"##workerpool[setVariable name='Good' value='1']\"",
        "echo done"])
    result = run(client, script)
    assert result.state == "Success" and result.output_variables == {"Good": "1"}
    notes = system(result)
    assert "ignored unknown service message 'frobnicate' (known: setVariable, " \
           "createArtifact)" in notes
    assert sum("ignored a malformed service message" in n for n in notes) == 2
    assert any(n.startswith("ignored setVariable without a name") for n in notes)
    assert any(n.startswith("ignored createArtifact without a path") for n in notes)
    assert stdout(result) == ["done"]
    assert_still_serves(client, raw, work)

    flood = ("for i in $(seq 1 20000); do echo '##workerpool[bogus]'; done\n"
             "for i in $(seq 1 1200); do echo \"##workerpool[setVariable name='v$i' "
             "value='$i']\"; done")
    result = run(client, flood)
    assert result.state == "Success"
    assert len(result.log) < 10_010
    assert "[log capped at 10000 lines; later lines are not stored]" in system(result)
    assert len(result.output_variables) == 1000
    assert_still_serves(client, raw, work)


# -- processes that try to outlive their step ------------------------------------------------

ESCAPERS = {
    "setsid": "setsid bash -c 'echo $$ > {pid}; exec sleep 300' > /dev/null 2>&1 &",
    "setsid writing to stdout": "setsid bash -c 'echo $$ > {pid}; exec yes' &",
    "job control": "set -m; sleep 300 & echo $! > {pid}",
    "double fork": "( setsid sh -c 'echo $$ > {pid}; exec sleep 300' & ) > /dev/null",
    "python daemon": ("python3 -c 'import os,sys,time\nif os.fork(): sys.exit()\nos.setsid()\n"
                      "open(sys.argv[1], \"w\").write(str(os.getpid()))\ntime.sleep(300)' "
                      "{pid} &"),
}


def test_processes_that_leave_the_group_are_killed_when_the_step_ends(client, raw, work,
                                                                       tmp_path):
    for how, escape in ESCAPERS.items():
        pid_file = tmp_path / f"{how.replace(' ', '-')}.pid"
        script = escape.format(pid=pid_file) + \
            f"\nwhile [ ! -s {pid_file} ]; do sleep 0.02; done; exit 0"
        result = run(client, script)
        assert result.state == "Success", (how, result.log)
        escaper = pid_from(pid_file)
        assert not pid_alive(escaper), how
        assert_still_serves(client, raw, work)


def test_setsid_does_not_escape_timeout_or_cancel(client, raw, work, tmp_path):
    for ending, state in (("timeout", "TimedOut"), ("cancel", "Cancelled")):
        pid_file = tmp_path / f"{ending}.pid"
        script = (f"setsid bash -c 'trap \"\" TERM; echo $$ > {pid_file}; exec sleep 300' &\n"
                  "sleep 300")
        handle = client.run(ScriptStep(script=script, pool=POOL,
                                       timeout=1.5 if ending == "timeout" else None))
        escaper = pid_from(pid_file)
        if ending == "cancel":
            handle.cancel()
        assert handle.wait(timeout=30).state == state
        assert not pid_alive(escaper), ending
        assert_still_serves(client, raw, work)


def test_setsid_child_of_a_killed_worker_is_killed_by_its_watchdog(client, start_worker,
                                                                   tmp_path):
    client.pools.add("Doomed")
    worker = start_worker("Doomed")
    pid_file = tmp_path / "escaper"
    handle = client.run(ScriptStep(
        script=f"setsid bash -c 'echo $$ > {pid_file}; exec sleep 300' & sleep 300",
        pool="Doomed"))
    escaper = pid_from(pid_file)
    worker.proc.send_signal(signal.SIGKILL)
    worker.proc.wait()
    wait_for(lambda: not pid_alive(escaper), 10, "the escaper to be killed")
    assert handle.wait(timeout=30).state == "WorkerLost"


def test_scripts_that_ignore_sigterm_or_die_by_a_signal(client, raw, work):
    started = time.monotonic()
    result = run(client, "trap '' TERM; sleep 300", timeout=1)
    assert result.state == "TimedOut"
    assert time.monotonic() - started < 10  # timeout + kill grace (1 s here)
    assert_still_serves(client, raw, work)

    result = run(client, "kill -SEGV $$")
    assert (result.state, result.exit_code) == ("Failed", -11)
    assert_still_serves(client, raw, work)


@pytest.mark.skipif(not HAS_PIDS_CGROUP, reason="needs a writable pids cgroup (root or "
                                                 "delegation)")
def test_fork_bombs_hit_the_process_limit_and_are_cleaned_up(client, raw, start_worker):
    client.pools.add(POOL)
    worker = start_worker(POOL, extra_env={"WORKERPOOL_STEP_MAX_PROCESSES": str(MAX_PROCESSES)})
    handle = client.run(ScriptStep(script="bomb() { bomb | bomb & }; bomb; sleep 300",
                                   pool=POOL, timeout=3))
    peaks = []

    def sample() -> bool:
        peaks.extend(int((d / "pids.current").read_text()) for d in step_cgroups()
                     if (d / "pids.current").exists())
        return client.step(handle.id).result().done

    wait_for(sample, 30, "the bomb's step to end", interval=0.05)
    assert handle.wait(timeout=10).state == "TimedOut"
    assert peaks and max(peaks) <= MAX_PROCESSES
    assert step_cgroups() == []
    assert_still_serves(client, raw, worker)

    result = run(client, "import os\nwhile True:\n    os.fork()", syntax="python", timeout=30)
    assert (result.state, result.exit_code) == ("Failed", 1)
    assert any("Resource temporarily unavailable" in e.text for e in result.log)
    assert step_cgroups() == []
    assert_still_serves(client, raw, worker)


def step_cgroups() -> list[Path]:
    found = pids_cgroup()
    assert found is not None
    return [d for d in found[0].glob("workerpool-*/*") if d.is_dir()]


# -- what the script is given -----------------------------------------------------------------


def test_large_scripts_many_variables_stdin_and_a_removed_workdir(client, raw, work):
    body = "# padding padding padding padding padding padding padding padding padding\n"
    result = run(client, body * (990_000 // len(body)) + "echo ran")
    assert result.state == "Success" and stdout(result) == ["ran"]
    assert_still_serves(client, raw, work)

    variables = {f"V{n}": str(n) for n in range(5000)}
    variables["Big"] = "b" * 100_000
    variables["a*b?[c]{d} e\u00fc"] = "odd"
    script = 'echo "${#Big} $V4999 ${a_b__c__d__e_}"; env | grep -c "^V[0-9]*="'
    result = run(client, script, variables=variables)
    assert result.state == "Success", result.log
    assert stdout(result) == ["100000 4999 odd", "5000"]
    assert_still_serves(client, raw, work)

    result = run(client, "cat; read -r line || echo eof")
    assert result.state == "Success" and stdout(result) == ["eof"]
    assert_still_serves(client, raw, work)

    result = run(client, 'rm -rf "$PWD"; echo gone')
    assert result.state == "Success" and stdout(result) == ["gone"]
    assert_still_serves(client, raw, work)


def small_zip_claiming_4_gib(path: Path) -> Path:
    """A 300-byte zip whose second entry claims almost 4 GiB, past the worker's 4 GiB
    extraction limit with the first: the shape of a zip bomb, without writing gigabytes here
    (that the limit holds while writing, whatever headers claim, is tests/test_packages.py's
    test_size_limit_is_enforced_while_writing_not_only_from_headers)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr("a.bin", b"x" * 100)
        archive.writestr("b.bin", b"x" * 10)
    data = bytearray(buffer.getvalue())
    second = data.find(b"PK\x01\x02", data.find(b"PK\x01\x02") + 4)  # its directory entry
    struct.pack_into("<I", data, second + 24, 0xFFFF_FFF0)  # its uncompressed size
    path.write_bytes(bytes(data))
    return path


def test_archive_bomb_package_fails_the_step_before_its_script(client, raw, work, tmp_path):
    marker = tmp_path / "script-ran"
    push(client.redis, small_zip_claiming_4_gib(tmp_path / "Bomb.Package.1.0.0.zip"))
    result = run(client, f"touch {marker}",
                 packages=(PackageRef("bomb", "Bomb.Package", "1.0.0"),))
    assert (result.state, result.exit_code) == ("Failed", None)
    assert system(result)[-1] == (
        "package Bomb.Package 1.0.0 from feed 'builtin': Bomb.Package.1.0.0.zip: archive bomb: "
        "entry 'b.bin' takes the extracted size past the 4294967296-byte limit; raise the limit "
        "if the package is genuine")
    assert not marker.exists()
    assert_still_serves(client, raw, work)


# -- names ---------------------------------------------------------------------------------------


def test_pool_named_with_redis_key_metacharacters_works_end_to_end(cli, client, raw,
                                                                    start_worker):
    name = "DB *?[{} \u00fcber Pool"
    added = cli("pool", "add", name, "--json")
    assert added.returncode == 0, added.stderr
    slug = json.loads(added.stdout)["slug"]
    assert slug == "db-ber-pool"
    worker = start_worker(name)
    for ident in (name, slug):
        done = cli("run", "--pool", ident, "--script", "echo $WORKERPOOL_POOL")
        assert done.returncode == 0 and done.stdout == f"{slug}\n", done.stderr
    assert raw.llen(keys.pool_queue(slug)) == 0
    assert_still_serves(client, raw, worker, pool=name)
