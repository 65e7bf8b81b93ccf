"""The audit trail in Redis and ``workerpool audit``; the console's login limiter, shared through
Redis; and ``workerpool console-user``, which writes the users file the console reads."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import redis
from conftest import one_line_error, wait_for

from workerpool.console.accounts import (
    OPERATOR,
    LoginLimiter,
    load_users,
    login_failures_key,
    verify_password,
)
from workerpool.core import audit

Cli = Callable[..., subprocess.CompletedProcess[str]]
HOSTILE = '<script>alert("x")</script>\x1b]52;c;cHduZWQ=\x07\x1b[2K\rSuccess'


def test_entries_are_read_back_newest_first_and_paged(raw: redis.Redis):
    first = audit.record(raw, "alice", "admin", "login", "console", source="203.0.113.7")
    second = audit.record(raw, "bob", "operator", "cancel", "step s1", outcome="refused",
                          detail="already finished", source="cli")
    entries = audit.read(raw)
    assert [e.id for e in entries] == [second, first]
    newest = entries[0]
    assert (newest.who, newest.role, newest.action, newest.target, newest.outcome,
            newest.detail, newest.source) == ("bob", "operator", "cancel", "step s1", "refused",
                                              "already finished", "cli")
    assert newest.time >= entries[1].time > 0
    assert entries[1].outcome == "ok" and entries[1].detail == ""
    assert [e.id for e in audit.read(raw, limit=1)] == [second]
    assert [e.id for e in audit.read(raw, before=second)] == [first]
    assert audit.read(raw, before=first) == [] and audit.read(raw, limit=0) == []
    assert audit.to_json(newest) == {"id": second, "time": newest.time, "who": "bob",
                                     "role": "operator", "action": "cancel",
                                     "target": "step s1", "outcome": "refused",
                                     "detail": "already finished", "source": "cli"}


def test_values_are_stored_as_given_and_the_stream_is_capped(raw: redis.Redis):
    audit.record(raw, "mallory", "viewer", "login", HOSTILE, outcome="refused")
    assert audit.read(raw)[0].target == HOSTILE
    info = raw.xinfo_stream(audit.AUDIT)
    assert info["length"] == 1
    for _ in range(audit.MAX_ENTRIES + 200):
        raw.xadd(audit.AUDIT, {"who": "x"}, maxlen=audit.MAX_ENTRIES, approximate=True)
    assert raw.xlen(audit.AUDIT) < audit.MAX_ENTRIES + 200


def test_the_limiter_blocks_after_five_failures_and_a_success_clears_it(raw: redis.Redis):
    limiter = LoginLimiter(raw, attempts=5, window=60)
    other = LoginLimiter(raw)  # another server node, sharing the count through Redis
    for _ in range(4):
        limiter.failed("203.0.113.7")
    assert limiter.blocked_for("203.0.113.7") == 0
    other.failed("203.0.113.7")
    assert 0 < limiter.blocked_for("203.0.113.7") <= 60
    assert 0 < other.blocked_for("203.0.113.7") <= 60
    assert limiter.blocked_for("198.51.100.1") == 0  # only that address
    key = login_failures_key("203.0.113.7")
    assert raw.get(key) == "5" and 0 < raw.ttl(key) <= 60
    limiter.failed("203.0.113.7")
    assert raw.ttl(key) <= 60  # later failures do not push the window's end (EXPIRE NX)
    limiter.succeeded("203.0.113.7")
    assert limiter.blocked_for("203.0.113.7") == 0 and not raw.exists(key)


def test_the_block_ends_with_its_window(raw: redis.Redis):
    limiter = LoginLimiter(raw, attempts=2, window=1)
    limiter.failed("203.0.113.9")
    limiter.failed("203.0.113.9")
    assert limiter.blocked_for("203.0.113.9") == 1
    wait_for(lambda: limiter.blocked_for("203.0.113.9") == 0, timeout=5, what="the window")


def test_a_counter_without_its_expiry_does_not_block_for_ever(raw: redis.Redis):
    limiter = LoginLimiter(raw, attempts=1, window=30)
    raw.set(login_failures_key("203.0.113.10"), 3)
    assert limiter.blocked_for("203.0.113.10") == 30
    assert 0 < raw.ttl(login_failures_key("203.0.113.10")) <= 30


def test_the_audit_command_lists_entries_harmlessly(raw: redis.Redis, cli: Cli):
    audit.record(raw, "alice", "admin", "login", "console", source="203.0.113.7")
    audit.record(raw, "mallory", "viewer", "pool.delete", HOSTILE, outcome="refused",
                 detail="not allowed\nfor a viewer", source="198.51.100.1")
    done = cli("audit")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].split() == ["TIME", "WHO", "ROLE", "ACTION", "TARGET", "OUTCOME", "DETAIL"]
    assert len(lines) == 4  # headers, rule, two entries: the newline in a detail is escaped
    assert "mallory" in lines[2] and "alice" in lines[3]  # newest first
    assert "\x1b" not in done.stdout and "\x07" not in done.stdout and "\r" not in done.stdout
    assert "\\x1b]52;c;cHduZWQ=\\x07\\x1b[2K\\rSuccess" in lines[2]
    assert "not allowed\\nfor a viewer" in lines[2]
    assert len(cli("audit", "--limit", "1").stdout.splitlines()) == 3
    as_json = json.loads(cli("audit", "--json").stdout)
    assert [e["who"] for e in as_json] == ["mallory", "alice"]
    assert as_json[0]["target"] == HOSTILE  # machines get the exact text


def test_the_audit_command_refuses_a_bad_limit(cli: Cli):
    done = cli("audit", "--limit", "0")
    assert done.returncode == 2 and "Traceback" not in done.stderr


def test_console_user_writes_a_file_the_console_reads(env: dict[str, str], tmp_path: Path):
    path = tmp_path / "users"
    done = subprocess.run([sys.executable, "-m", "workerpool", "console-user", "carol", "--role",
                           "operator", "--password-stdin"], input="a long password\n",
                          env={**env, "WORKERPOOL_WEB_USERS": str(path)}, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"workerpool: user carol (operator) saved in {path}"
    users = load_users(path)
    assert users["carol"].role == OPERATOR
    assert verify_password("a long password", users["carol"].password_hash)
    assert not verify_password("a long password\n", users["carol"].password_hash)


def test_console_user_without_a_file_is_one_line(cli: Cli):
    line = one_line_error(cli("console-user", "carol", "--role", "viewer", "--password-stdin"))
    assert line == ("workerpool: error: no console users file: set WORKERPOOL_WEB_USERS or "
                    "pass --file PATH")
