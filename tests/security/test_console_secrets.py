"""The console's secrets, tried as an attacker would: a pool worker's, the built-in worker's and
a runner's Redis logins against the key that signs session cookies, the audit stream and the
login limiter's counters; and a script on the server's own built-in worker looking for the
console's users file, its password hashes and the cookie secret. Redis refuses the logins (its
ACL); the script finds nothing, checked by value."""

from __future__ import annotations

import json
import os
import urllib.request
from pathlib import Path

import pytest
import redis
from conftest import PROC_DUMP, wait_for
from consolehttp import Session
from httpd import free_port

from workerpool import ScriptStep
from workerpool.console import service
from workerpool.console.accounts import Accounts, login_failures_key, save_user
from workerpool.core import audit, credentials, keys
from workerpool.core.steps import LOCATION_SERVER, SUCCESS

DB = "Database Worker Pool"
PASSWORD = "console-admin-" + os.urandom(6).hex()


def refused(action) -> None:
    with pytest.raises(redis.exceptions.NoPermissionError):
        action()


def test_no_worker_or_runner_login_reaches_the_consoles_keys(client, cli, settings, redis_url,
                                                             start_worker, tmp_path: Path):
    users = tmp_path / "web-users"
    save_user(users, "ada", "admin", PASSWORD)
    server = service.start(settings, redis_url, 0, "127.0.0.1", Accounts.from_file(users))
    try:
        browser = Session(server.url.rstrip("/"))
        assert browser.login("ada", "wrong").status == 401  # a counter and an audit entry
        assert browser.login("ada", PASSWORD).status == 302
    finally:
        server.stop()
    client.pools.add(DB)
    worker = start_worker(DB)
    admin = client.redis
    secret = admin.get(service.COOKIE_SECRET)
    trail = admin.xlen(audit.AUDIT)
    failures = [k for k in admin.scan_iter(login_failures_key("*")[:-64] + "*")]
    assert secret and len(secret) > 30 and trail >= 2 and failures == []  # cleared by success
    counter = login_failures_key("127.0.0.1")
    admin.set(counter, 4, ex=60)  # one more failure from there and the address is blocked

    runner = json.loads(cli("runner-credentials", "--json").stdout)["url"]
    builtin = credentials.issue(admin, redis_url, keys.BUILTIN_POOL).url
    for url in (worker.url, builtin, runner):
        login = redis.Redis.from_url(url, decode_responses=True)
        assert login.ping()
        refused(lambda login=login: login.get(service.COOKIE_SECRET))
        refused(lambda login=login: login.set(service.COOKIE_SECRET, "known-to-the-attacker"))
        refused(lambda login=login: login.delete(service.COOKIE_SECRET))
        refused(lambda login=login: login.xrevrange(audit.AUDIT, count=10))
        refused(lambda login=login: login.xadd(audit.AUDIT, {"who": "ada", "action": "forged"}))
        refused(lambda login=login: login.xtrim(audit.AUDIT, 0))
        refused(lambda login=login: login.delete(counter))  # unblock a password guesser
        refused(lambda login=login: login.get(counter))
        refused(lambda login=login: login.eval("return redis.call('GET', KEYS[1])", 1,
                                               service.COOKIE_SECRET))
        login.close()
    # By value: nothing changed.
    assert admin.get(service.COOKIE_SECRET) == secret
    assert admin.xlen(audit.AUDIT) == trail
    assert admin.get(counter) == "4"


def test_a_script_on_the_servers_builtin_worker_finds_no_console_secret(
        client, server, tmp_path: Path):
    """The built-in worker runs beside the server, which reads WORKERPOOL_WEB_USERS and holds
    the cookie secret: a script there looks in every process's environment and open files,
    and reads the users file by its path."""
    users = tmp_path / "web-users"
    save_user(users, "ada", "admin", PASSWORD)
    hashed = users.read_text().strip().split(":", 2)[2]  # name:role:hash
    assert hashed.startswith("scrypt$") and PASSWORD not in hashed
    port = free_port()
    server("--http-port", str(port), extra_env={"WORKERPOOL_WEB_USERS": str(users)})
    url = f"http://127.0.0.1:{port}"
    wait_for(lambda: _answers(url + "/login"), 30, "the console to answer")
    assert Session(url).login("ada", PASSWORD).status == 302
    secret = client.redis.get(service.COOKIE_SECRET)
    assert secret

    dump = tmp_path / "dump"
    script = f'dump="{dump}"' + PROC_DUMP + f"""cat "{users}" >> "$dump" 2>&1
echo "WEB_USERS=$WORKERPOOL_WEB_USERS" >> "$dump"
echo "searched as $(id -u)" >> "$dump"
"""
    attack = client.run(ScriptStep(location=LOCATION_SERVER, name="attacker", script=script))
    assert attack.wait(timeout=120).state == SUCCESS
    found = dump.read_bytes()
    assert b"searched as 0\n" not in found and b"searched as " in found  # it ran, not as root
    assert b"WEB_USERS=\n" in found  # the built-in worker is not given the users file's path
    assert b"Permission denied" in found  # the users file (0600) among what it tried
    for value in (PASSWORD, hashed, hashed.split("$")[-1], secret):
        assert value.encode() not in found, f"{value[:12]}... was found by the script"


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=5) as reply:
            return bool(reply.status == 200)
    except OSError:
        return False
