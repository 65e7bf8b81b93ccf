"""The read-only pools page (``workerpool.server.web``, served beside Flower), the console on
``server --http-port`` and its accounts, ``workerpool flower``'s options, and queue depth in
``status`` for a pool with no online worker."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

from conftest import wait_for
from consolehttp import Session
from httpd import fetch, free_port, running

from workerpool import ScriptStep
from workerpool.server import web


def answers(url: str, auth: str | None = None) -> bool:
    try:
        return fetch(url, auth)[0] == 200
    except OSError:
        return False


def test_pools_page_shows_pools_workers_queue_depth_and_leases(client, start_worker, redis_url):
    client.pools.add("Database Worker Pool", description="SQL Server tools on 1433")
    client.pools.add("Azure Worker Pool", description="Machines with the Azure CLI")
    worker = start_worker("Database Worker Pool")
    long_step = client.run(ScriptStep(script="sleep 30", pool="Database Worker Pool",
                                      name="Long backup"))
    for _ in range(2):  # no worker in this pool: only Redis knows these are waiting
        client.run(ScriptStep(script="echo az", pool="Azure Worker Pool", name="Resource group"))
    wait_for(lambda: client.snapshot(detail=True).leases, what="the lease")
    server = web.start(redis_url, 0)
    try:
        status, body = fetch(f"http://127.0.0.1:{server.port}/api/pools")
        assert status == 200
        data = json.loads(body)
        pools = {p["name"]: p for p in data["pools"]}
        assert [p["name"] for p in data["pools"]] == [
            "Default Worker Pool", "Azure Worker Pool", "Database Worker Pool"]
        assert pools["Default Worker Pool"]["is_default"] is True
        assert pools["Azure Worker Pool"] | {"queued": 2, "running": 0, "workers": []} == \
            pools["Azure Worker Pool"]
        db = pools["Database Worker Pool"]
        assert (db["description"], db["queued"], db["running"]) == \
            ("SQL Server tools on 1433", 0, 1)
        assert [(w["name"], w["state"], w["leases"]) for w in db["workers"]] == \
            [(worker.name, "Healthy", [long_step.id])]
        assert db["leases"][0]["step_name"] == "Long backup"
        assert data["builtin_worker"] | {"enabled": True, "queued": 0, "workers": []} == \
            data["builtin_worker"]

        status, html = fetch(f"http://127.0.0.1:{server.port}/")
        assert status == 200
        assert '<meta http-equiv="refresh"' in html
        for shown in ("Database Worker Pool", "SQL Server tools on 1433", worker.name,
                      "Healthy", "Long backup", long_step.id, 'data-queued="2"',
                      "Built-in worker", "Enabled", "Default"):
            assert shown in html, shown
        assert fetch(f"http://127.0.0.1:{server.port}/nothing")[0] == 404
    finally:
        web.stop(server)
        long_step.cancel()


def test_pools_page_basic_auth_and_redis_outage(redis_url):
    server = web.start(redis_url, 0, basic_auth="admin:s3cret")
    try:
        url = f"http://127.0.0.1:{server.port}/api/pools"
        assert fetch(url)[0] == 401
        assert fetch(url, "admin:wrong")[0] == 401
        assert fetch(url, "admin:s3cret")[0] == 200
    finally:
        web.stop(server)
    server = web.start(f"redis://127.0.0.1:{free_port()}/0", 0)  # nothing listens there
    try:
        status, body = fetch(f"http://127.0.0.1:{server.port}/api/pools")
        assert status == 503 and "unreachable" in json.loads(body)["error"]
        status, html = fetch(f"http://127.0.0.1:{server.port}/")
        assert status == 503 and "unreachable" in html and "refresh" in html
    finally:
        web.stop(server)


def test_status_shows_queue_depth_of_a_pool_without_online_workers(client, start_worker, cli):
    client.pools.add("Azure Worker Pool")
    worker = start_worker("Azure Worker Pool")
    worker.proc.send_signal(signal.SIGTERM)
    worker.proc.wait(30)
    client.run(ScriptStep(script="echo never yet", pool="Azure Worker Pool"))
    result = cli("status", "--json")
    assert result.returncode == 0, result.stderr
    azure = next(p for p in json.loads(result.stdout)["pools"] if p["name"] == "Azure Worker Pool")
    assert (azure["queued"], [w["state"] for w in azure["workers"]]) in [(1, []), (1, ["Offline"])]
    table = cli("status").stdout
    assert any(line.startswith("Azure Worker Pool") and line.split()[-2:] == ["1", "0"]
               for line in table.splitlines()), table


def test_server_serves_the_console_behind_a_one_time_admin_password(env, tmp_path):
    port, log = free_port(), tmp_path / "server.log"
    with running(["server", "--http-port", str(port)], env, log):
        wait_for(lambda: "console login: admin / " in log.read_text(), 60,
                 "the server to print the console's one-time password")
        password = log.read_text().split("console login: admin / ")[1].split()[0]
        anonymous = Session(f"http://127.0.0.1:{port}")
        assert anonymous.get("/").location.startswith("/login")
        assert anonymous.get("/api/pools").status == 401
        assert anonymous.get("/metrics").status == 200  # Prometheus scrapes without a login
        assert anonymous.login("admin", "not-it").status == 401
        admin = Session(f"http://127.0.0.1:{port}")
        assert admin.login("admin", password).status == 302

        def builtin_state() -> object:
            body = json.loads(admin.get("/api/pools").body)
            workers = body["builtin_worker"]["workers"]
            return workers and workers[0]["state"] == "Healthy"

        wait_for(builtin_state, 60, "the server's console to show the built-in worker")
        page = admin.get("/")
        assert page.status == 200 and "Built-in worker" in page.body and "Enabled" in page.body
    assert not answers(f"http://127.0.0.1:{port}/metrics")


def test_server_console_takes_its_accounts_from_web_users(env, tmp_path, cli):
    users = tmp_path / "users"
    made = subprocess.run([sys.executable, "-m", "workerpool", "console-user", "ops", "--role",
                           "operator", "--file", str(users), "--password-stdin"], env=env,
                          input="long-enough-pw\n", capture_output=True, text=True, timeout=60)
    assert made.returncode == 0, made.stderr
    port, log = free_port(), tmp_path / "server.log"
    with running(["server", "--http-port", str(port)], {**env, "WORKERPOOL_WEB_USERS": str(users)},
                 log):
        wait_for(lambda: answers(f"http://127.0.0.1:{port}/metrics"), 60, "the console")
        ops = Session(f"http://127.0.0.1:{port}")
        assert ops.login("ops", "long-enough-pw").status == 302
        assert "ops (operator)" in ops.get("/").body
        assert Session(ops.base).login("admin", "anything").status == 401
    assert "console login" not in log.read_text()  # no one-time admin beside the file
    users.write_text("ops:superuser:scrypt$x\n")
    broken = cli("server", "--http-port", str(free_port()),
                 extra_env={"WORKERPOOL_WEB_USERS": str(users)})
    assert broken.returncode == 2 and len(broken.stderr.strip().splitlines()) == 1, broken.stderr
    assert "superuser" in broken.stderr and "Traceback" not in broken.stderr


def test_flower_and_pools_page_share_basic_auth(env, tmp_path, cli):
    bad = cli("flower", "--basic-auth", "no-colon")
    assert bad.returncode == 2 and "USER:PASS" in bad.stderr
    port, pools_port = free_port(), free_port()
    args = ["flower", "--port", str(port), "--pools-port", str(pools_port),
            "--basic-auth", "admin:s3cret"]
    with running(args, env, tmp_path / "flower.log"):
        for url in (f"http://127.0.0.1:{port}/workers", f"http://127.0.0.1:{pools_port}/"):
            wait_for(lambda url=url: answers(url, "admin:s3cret"), 30, f"{url} to answer")
            assert fetch(url)[0] == 401
            assert fetch(url, "admin:wrong")[0] == 401
        taken = cli("flower", "--port", str(port), "--pools-port", str(free_port()))
        assert taken.returncode == 2 and "choose another --port" in taken.stderr
    time.sleep(0.2)
    assert not answers(f"http://127.0.0.1:{port}/", "admin:s3cret")
    assert not answers(f"http://127.0.0.1:{pools_port}/", "admin:s3cret")
