"""Hostile step output, pool descriptions, health reasons and templates never reach a terminal
as escapes: `run`, `logs`, `pool list|show`, `status`, `worker list` and `template list|show`
show control characters as text, on a real pty and piped alike; `--raw` gives the bytes as the
script wrote them, `--json` the exact text, and the stored log keeps the original."""

from __future__ import annotations

import json
import os
import re
import select
import subprocess
import sys
import time
import tty
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import wait_for

from faults.test_bad_input_table import assert_still_serves
from workerpool import ScriptStep

WORKERPOOL = str(Path(sys.executable).with_name("workerpool"))  # the installed command
POOL = "Pool"

# Colour, cursor up + erase line, OSC 0 (window title), OSC 52 (writes the clipboard), C1 CSI
# and C1 OSC (U+009B, U+009D as UTF-8), a carriage return that would turn "Failed" into
# "Success", a bidi override; and OSC 52 on stderr.
SCRIPT = (r"printf '\033[31mred\033[0m\n\033[1A\033[2Kerased\n\033]0;pwned-title\007\n"
          r"\033]52;c;cHduZWQ=\007\n\302\233c1 csi\n\302\2350;c1-title\007\n"
          r"Failed\rSuccess\n\342\200\256bidi\n'; printf '\033]52;c;ZXJy\007\n' >&2")
WRITTEN = ["\x1b[31mred\x1b[0m", "\x1b[1A\x1b[2Kerased", "\x1b]0;pwned-title\x07",
           "\x1b]52;c;cHduZWQ=\x07", "\x9bc1 csi", "\x9d0;c1-title\x07", "Failed\rSuccess",
           "\u202ebidi"]
WRITTEN_ERR = "\x1b]52;c;ZXJy\x07"
SHOWN = (b"\\x1b[31mred\\x1b[0m\n\\x1b[1A\\x1b[2Kerased\n\\x1b]0;pwned-title\\x07\n"
         b"\\x1b]52;c;cHduZWQ=\\x07\n\\x9bc1 csi\n\\x9d0;c1-title\\x07\nFailed\\rSuccess\n"
         b"\\u202ebidi\n")
SHOWN_ERR = b"\\x1b]52;c;ZXJy\\x07"
DESCRIPTION = "SQL tools\x1b]52;c;cHduZWQ=\x07\x1b[2J\x9b2J\rfake \u202eok"
DESCRIPTION_SHOWN = b"SQL tools\\x1b]52;c;cHduZWQ=\\x07\\x1b[2J\\x9b2J\\rfake \\u202eok"
# Bytes a terminal acts on: ESC, BEL (ends an OSC), CR, C1 CSI/OSC in UTF-8, and the override.
CONTROLS = (b"\x1b", b"\x07", b"\r", b"\xc2\x9b", b"\xc2\x9d", b"\xe2\x80\xae")


@dataclass(frozen=True)
class Ran:
    code: int
    out: bytes
    err: bytes


def on_a_pty(env: dict[str, str], *args: str, timeout: float = 60) -> Ran:
    """Run the real command with stdin and stdout on one pty and stderr on another, both raw
    (no newline translation: the bytes read are those written)."""
    (out_master, out_slave), (err_master, err_slave) = os.openpty(), os.openpty()
    for slave in (out_slave, err_slave):
        tty.setraw(slave)
    proc = subprocess.Popen([WORKERPOOL, *args], env=env, stdin=out_slave, stdout=out_slave,
                            stderr=err_slave, close_fds=True)
    os.close(out_slave)
    os.close(err_slave)
    try:
        got = read_until_closed([out_master, err_master], time.monotonic() + timeout)
        return Ran(proc.wait(10), got[out_master], got[err_master])
    finally:
        os.close(out_master)
        os.close(err_master)
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def read_until_closed(masters: list[int], deadline: float) -> dict[int, bytes]:
    """Everything written to each pty until every holder of its other end has closed it."""
    got, open_ = {fd: b"" for fd in masters}, set(masters)
    while open_ and time.monotonic() < deadline:
        ready, _, _ = select.select(list(open_), [], [], max(0.0, deadline - time.monotonic()))
        for fd in ready:
            try:
                chunk = os.read(fd, 65536)
            except OSError:  # EIO: the other end is closed
                chunk = b""
            if chunk:
                got[fd] += chunk
            else:
                open_.discard(fd)
    assert not open_, "the command did not finish in time"
    return got


def piped(env: dict[str, str], *args: str) -> Ran:
    done = subprocess.run([WORKERPOOL, *args], env=env, capture_output=True, timeout=60,
                          stdin=subprocess.DEVNULL)
    return Ran(done.returncode, done.stdout, done.stderr)


RUNNERS = {"pty": on_a_pty, "piped": piped}


def assert_nothing_a_terminal_acts_on(*outputs: bytes) -> None:
    for output in outputs:
        for control in CONTROLS:
            assert control not in output, (control, output)


@pytest.fixture
def worker(client, start_worker):
    client.pools.add(POOL)
    return start_worker(POOL)


def hostile_step(client) -> str:
    step = client.run(ScriptStep(script=SCRIPT, pool=POOL))
    assert step.wait(timeout=30).state == "Success"
    return step.id


@pytest.mark.parametrize("runner", RUNNERS)
def test_run_shows_escapes_as_text(runner, client, raw, worker, env):
    ran = RUNNERS[runner](env, "run", "--pool", POOL, "--script", SCRIPT)
    assert ran.code == 0, ran
    assert ran.out == SHOWN
    step_id = re.match(rb"workerpool: step (\S+) queued\n", ran.err)[1]  # type: ignore[index]
    assert ran.err == (b"workerpool: step " + step_id + b" queued\n" + SHOWN_ERR + b"\n"
                       b"workerpool: step " + step_id + b" Success on " + worker.name.encode()
                       + b" (pool pool), exit code 0\n")
    assert_nothing_a_terminal_acts_on(ran.out, ran.err)
    assert_still_serves(client, raw, worker, POOL)


@pytest.mark.parametrize("runner", RUNNERS)
def test_logs_show_escapes_as_text(runner, client, raw, worker, env):
    step_id = hostile_step(client)
    ran = RUNNERS[runner](env, "logs", step_id)
    assert (ran.code, ran.out) == (0, SHOWN)
    assert ran.err.splitlines()[0] == SHOWN_ERR
    assert_nothing_a_terminal_acts_on(ran.out, ran.err)
    followed = RUNNERS[runner](env, "logs", step_id, "--follow")
    assert (followed.code, followed.out) == (0, SHOWN)
    assert_still_serves(client, raw, worker, POOL)


@pytest.mark.parametrize("runner", RUNNERS)
def test_raw_prints_the_bytes_as_the_script_wrote_them(runner, client, raw, worker, env):
    written = "".join(line + "\n" for line in WRITTEN).encode()
    ran = RUNNERS[runner](env, "run", "--pool", POOL, "--script", SCRIPT, "--raw")
    assert (ran.code, ran.out) == (0, written)  # colours too: piped, click would strip them
    assert WRITTEN_ERR.encode() + b"\n" in ran.err
    logged = RUNNERS[runner](env, "logs", hostile_step(client), "--raw")
    assert (logged.code, logged.out) == (0, written)
    assert logged.err == WRITTEN_ERR.encode() + b"\n"
    assert_still_serves(client, raw, worker, POOL)


def test_json_is_exact_and_the_stored_log_keeps_the_original(client, raw, worker, env):
    ran = on_a_pty(env, "run", "--pool", POOL, "--script", SCRIPT, "--json")
    assert ran.code == 0
    log = json.loads(ran.out)["log"]
    assert [e["text"] for e in log if e["stream"] == "stdout"] == WRITTEN
    assert [e["text"] for e in log if e["stream"] == "stderr"] == [WRITTEN_ERR]
    step_id = hostile_step(client)
    lines = on_a_pty(env, "logs", step_id, "--json").out.splitlines()
    assert [json.loads(line)["text"] for line in lines
            if json.loads(line)["stream"] == "stdout"] == WRITTEN
    assert [e.text for e in client.step(step_id).logs() if e.stream == "stdout"] == WRITTEN
    assert_still_serves(client, raw, worker, POOL)


@pytest.mark.parametrize("runner", RUNNERS)
def test_pool_descriptions_show_as_text(runner, client, raw, start_worker, env):
    client.pools.add("Database Pool", description=DESCRIPTION)
    worker = start_worker("Database Pool")
    for args in (("pool", "list"), ("pool", "show", "Database Pool"), ("status",),
                 ("worker", "list")):
        ran = RUNNERS[runner](env, *args)
        assert ran.code == 0, (args, ran)
        assert_nothing_a_terminal_acts_on(ran.out, ran.err)
        if args[0] == "pool":
            [row] = [line for line in ran.out.splitlines() if line.startswith(b"Database Pool")]
            assert row.endswith(b"  " + DESCRIPTION_SHOWN), (args, row)
    listed = json.loads(piped(env, "pool", "list", "--json").out)
    assert [p["description"] for p in listed if p["name"] == "Database Pool"] == [DESCRIPTION]
    assert_still_serves(client, raw, worker, "Database Pool")


def test_health_reasons_show_as_text_in_worker_list_and_status(client, raw, start_worker, env,
                                                               tmp_path):
    healthy = tmp_path / "healthy"
    client.pools.add(POOL, health_check=f"test -e {healthy} || {{ printf '\\033]52;c;cHduZWQ="
                                        "\\007\\033[2J\\302\\233disk full\\n'; exit 1; }")
    worker = start_worker(POOL, extra_env={"WORKERPOOL_HEALTH_INTERVAL": "0.5"},
                          expect="Unhealthy")
    reason = b"\\x1b]52;c;cHduZWQ=\\x07\\x1b[2J\\x9bdisk full"
    listed = on_a_pty(env, "worker", "list")
    assert listed.code == 0 and listed.out.splitlines()[2].endswith(b"  " + reason), listed
    status = on_a_pty(env, "status", "--pool", POOL)
    assert status.code == 0
    assert any(line.startswith(worker.name.encode()) and b" Unhealthy " in line
               and line.rstrip().endswith(reason) for line in status.out.splitlines()), status
    assert_nothing_a_terminal_acts_on(listed.out, listed.err, status.out, status.err)
    healthy.touch()
    wait_for(lambda: [w.state for w in client.workers.list(POOL)] == ["Healthy"], 20, "Healthy")
    assert_still_serves(client, raw, worker, POOL)


@pytest.mark.parametrize("runner", RUNNERS)
def test_templates_and_error_lines_show_as_text(runner, env, tmp_path):
    (tmp_path / "evil.yaml").write_text(
        'name: "Evil \\e]0;title\\a tpl"\ndescription: "desc \\e]52;c;cHduZWQ=\\a x\\rSuccess"\n'
        'syntax: bash\nparameters:\n  - name: P\n    description: "param \\e[31mred"\n'
        'script: "printf \'\\e[2J\'"\n')
    with_templates = {**env, "WORKERPOOL_TEMPLATES": str(tmp_path)}
    listed = RUNNERS[runner](with_templates, "template", "list")
    assert listed.code == 0
    assert listed.out.splitlines()[2].split() == [b"evil", b"Evil", b"\\x1b]0;title\\x07",
                                                  b"tpl", b"bash", b"P", b"desc",
                                                  b"\\x1b]52;c;cHduZWQ=\\x07", b"x\\rSuccess"]
    shown = RUNNERS[runner](with_templates, "template", "show", "evil")
    assert shown.code == 0
    assert shown.out.startswith(b"Evil \\x1b]0;title\\x07 tpl (evil), bash, from ")
    assert b"\ndesc \\x1b]52;c;cHduZWQ=\\x07 x\\rSuccess\n" in shown.out
    assert b"param \\x1b[31mred" in shown.out and shown.out.endswith(b"printf '\\x1b[2J'\n")
    unknown = RUNNERS[runner](env, "\x1b]0;title\x07")
    assert unknown.code == 2
    assert unknown.err.startswith(b"workerpool: error: No such command '\\x1b]0;title\\x07'.")
    assert_nothing_a_terminal_acts_on(listed.out, shown.out, unknown.err)
