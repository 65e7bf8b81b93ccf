"""The console over HTTP, against real Redis and real workers: login and sessions, the login
limit, roles refused on the server (403, not a hidden button), CSRF, escaping, sensitive values,
the pool form, drain, cancel, the built-in worker's switch, the live log and the audit stream."""

from __future__ import annotations

import copy
import http.cookiejar
import json
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from archives import make_zip
from conftest import pid_alive, wait_for
from consolehttp import Session

from workerpool import ScriptStep
from workerpool.console import service
from workerpool.console.accounts import Accounts, save_user
from workerpool.core import audit, keys
from workerpool.core.settings import Settings
from workerpool.core.targets import TargetRegistry
from workerpool.worker.packages.builtin import push

PASSWORDS = {"ada": "admin-pass-1", "otto": "operator-pass-1", "vera": "viewer-pass-1"}
ROLES = {"ada": "admin", "otto": "operator", "vera": "viewer"}
SECRET = "s3cr3t-value-never-shown"


@pytest.fixture
def users(tmp_path: Path) -> Path:
    path = tmp_path / "web-users"
    for name, password in PASSWORDS.items():
        save_user(path, name, ROLES[name], password)
    return path


@pytest.fixture
def console(settings: Settings, redis_url: str, users: Path, raw
            ) -> Iterator[Callable[[str | None], Session]]:
    """The console on a free port; ``console(name)`` is a session logged in as *name* (None:
    not logged in)."""
    raw.delete(*[k for k in raw.scan_iter("workerpool:console:login-failures:*")] or ["-"])
    server = service.start(settings, redis_url, 0, "127.0.0.1", Accounts.from_file(users))

    def session(name: str | None) -> Session:
        s = Session(server.url.rstrip("/"))
        if name is not None:
            reply = s.login(name, PASSWORDS[name])
            assert reply.status == 302 and reply.location == "/", reply
        return s

    try:
        yield session
    finally:
        server.stop()


def test_every_page_needs_a_login_and_a_session_is_a_signed_http_only_cookie(console):
    anonymous = console(None)
    for page in ("/", "/pools/default-worker-pool", "/builtin", "/steps", "/deployments",
                 "/run", "/audit"):
        reply = anonymous.get(page)
        assert (reply.status, reply.location.split("?")[0]) == (302, "/login"), page
    assert anonymous.get("/api/pools").status == 401
    assert anonymous.post("/pools", {"name": "Sneaky Pool"}).status == 401
    wrong = anonymous.login("ada", "not-her-password")
    assert wrong.status == 401 and "wrong name or password" in wrong.body
    assert anonymous.login("nobody", "x").status == 401

    ada = Session(anonymous.base)
    reply = ada.login("ada", PASSWORDS["ada"])
    cookie = next(v for k, v in reply.headers.items() if k == "Set-Cookie"
                  and v.startswith("workerpool_session="))
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
    page = ada.get("/")
    assert page.status == 200 and "Default Worker Pool" in page.body and "ada (admin)" in page.body

    forged = Session(anonymous.base)  # the cookie's value with its signature changed
    value = ada.cookie("workerpool_session") or ""
    forged.jar.set_cookie(_copy_cookie(ada, "workerpool_session", value[:-4] + "AAAA"))
    assert forged.get("/").status == 302

    assert ada.post("/logout").status == 302
    assert ada.get("/").status == 302


def _copy_cookie(session: Session, name: str, value: str) -> http.cookiejar.Cookie:
    cookie = copy.copy(next(c for c in session.jar if c.name == name))
    cookie.value = value
    return cookie


def test_a_changed_password_ends_the_sessions_opened_with_the_old_one(console, users):
    vera = console("vera")
    assert vera.get("/").status == 200
    save_user(users, "vera", "viewer", "a-new-password")
    os.utime(users, ns=(1, 1))  # a new mtime even within the file system's resolution
    assert vera.get("/").status == 302


def test_failed_logins_are_limited_per_address_and_audited(console, raw):
    s = console(None)
    for _ in range(5):
        assert s.login("otto", "guess").status == 401
    blocked = s.login("otto", PASSWORDS["otto"])  # even the right password, for a while
    assert blocked.status == 429 and "too many failed logins" in blocked.body
    refused = [e for e in audit.read(raw, limit=50) if e.action == "login" and e.who == "otto"]
    assert len(refused) >= 5 and {e.outcome for e in refused} == {"refused"}


def test_each_role_is_refused_what_it_may_not_do_with_403(console, client, start_worker):
    client.pools.add("Ops Pool")
    worker = start_worker("Ops Pool")
    step = client.run(ScriptStep(script="sleep 30", pool="Ops Pool", name="long"))
    wait_for(lambda: client.snapshot(detail=True).leases, what="the lease")
    vera, otto = console("vera"), console("otto")
    viewer_forbidden = [
        ("/pools", {"name": "Viewer Pool"}), ("/pools/ops-pool/edit", {"description": "x"}),
        ("/pools/ops-pool/pause", {}), ("/pools/ops-pool/remove", {}),
        ("/workers/drain", {"worker": worker.name}), (f"/steps/{step.id}/cancel", {}),
        ("/run", {"script": "echo hi"}), ("/builtin", {"enabled": "0", "confirm": "yes"})]
    for path, fields in viewer_forbidden:
        reply = vera.post(path, fields)
        assert reply.status == 403 and "needs the" in reply.body, (path, reply.status)
    assert vera.get("/run").status == 403
    operator_forbidden = [
        ("/pools", {"name": "Operator Pool"}), ("/pools/ops-pool/edit", {"description": "x"}),
        ("/pools/ops-pool/remove", {}), ("/builtin", {"enabled": "0", "confirm": "yes"})]
    for path, fields in operator_forbidden:
        assert otto.post(path, fields).status == 403, path
    pools = client.pools.all()
    assert set(pools) == {"default-worker-pool", "ops-pool"}
    assert pools["ops-pool"].description == "" and not pools["ops-pool"].paused
    assert client.builtin.enabled() and step.result().state == "Running"
    assert worker.proc.poll() is None  # not drained

    assert otto.post("/pools/ops-pool/pause", {"reason": "maintenance"}).status == 302
    assert client.pools.get("ops-pool").paused_reason == "maintenance"
    assert otto.post(f"/steps/{step.id}/cancel").status == 302
    assert step.wait(30).state == "Cancelled"


def test_a_state_change_without_the_csrf_token_is_refused(console, client):
    ada = console("ada")
    for fields in ({"name": "Forged Pool"}, {"name": "Forged Pool", "_xsrf": "wrong"}):
        reply = ada.post("/pools", fields, csrf=False)
        assert reply.status == 403 and "CSRF token" in reply.body
    assert "forged-pool" not in client.pools.all()
    assert ada.post("/pools", {"name": "Honest Pool"}).location == "/pools/honest-pool"


def test_names_descriptions_and_log_lines_render_as_text(console, client, start_worker):
    evil = "<script>alert(1)</script>"
    client.pools.add("Evil <b>Pool</b>", description=f'{evil}<img src=x onerror="alert(2)">')
    start_worker("Evil <b>Pool</b>")
    step = client.run(ScriptStep(
        script=f"printf '%s\\n' '{evil}' $'\\e[31mred\\e[0m \\e]0;title\\a'",
        pool="Evil <b>Pool</b>", name=f"step {evil}"))
    assert step.wait(30).state == "Success"
    ada = console("ada")
    pages = [ada.get(p).body for p in ("/", "/pools/evil-b-pool-b", "/steps",
                                       f"/steps/{step.id}", "/audit")]
    for body in pages:
        assert "<script>alert" not in body and "<img src=x" not in body and "<b>Pool" not in body
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in pages[0]
    assert "Evil &lt;b&gt;Pool&lt;/b&gt;" in pages[1]
    log = ada.get(f"/steps/{step.id}/log")
    lines = [json.loads(d)["x"] for d in re.findall(r"^data: (\{.*\})$", log.body, re.M)]
    assert lines == [evil, "\\x1b[31mred\\x1b[0m \\x1b]0;title\\x07"]  # text for textContent
    assert "\x1b" not in log.body


def test_no_page_shows_a_sensitive_value_to_anyone(console, client, start_worker):
    client.pools.add("Db Pool")
    start_worker("Db Pool")
    otto = console("otto")
    reply = otto.post("/run", {"pool": "db-pool", "syntax": "bash", "name": "migrate",
                               "script": "echo password is $DbPassword; echo plain $DbName",
                               "variables": "DbName=orders", "sensitive": f"DbPassword={SECRET}"})
    assert reply.status == 302 and reply.location.startswith("/steps/db-pool~")
    step_id = reply.location.removeprefix("/steps/")
    assert client.step(step_id).wait(30).state == "Success"
    for name in ("vera", "otto", "ada"):
        s = console(name)
        for page in (f"/steps/{step_id}", f"/steps/{step_id}/log", "/steps", "/audit",
                     "/api/pools"):
            body = s.get(page).body
            assert SECRET not in body, (name, page)
        assert "plain orders" in s.get(f"/steps/{step_id}/log").body
    refused = otto.post("/run", {"pool": "no-such-pool", "script": "echo",
                                 "sensitive": f"DbPassword={SECRET}", "variables": "A=1"})
    assert refused.status == 400 and "no-such-pool" in refused.body
    assert SECRET not in refused.body and "DbPassword" in refused.body  # asked for again


def test_the_pool_form_edits_pauses_and_refuses_a_remove_with_the_reason(
        console, client, start_worker):
    ada = console("ada")
    assert ada.post("/pools", {"name": "Database Worker Pool"}).status == 302
    dup = ada.post("/pools", {"name": "database worker pool!"})
    assert dup.status == 400 and "already exists" in dup.body and 'id="add-error"' in dup.body
    edit = ada.post("/pools/database-worker-pool/edit", {
        "name": "Database Worker Pool", "description": "SQL Server tools",
        "requires": "bash, sh", "health_check": "true", "max_running": "3"})
    assert edit.status == 302
    pool = client.pools.get("database-worker-pool")
    assert (pool.description, pool.requires, pool.health_check, pool.max_running) == \
        ("SQL Server tools", ("bash", "sh"), "true", 3)
    bad = ada.post("/pools/database-worker-pool/edit", {"name": "Database Worker Pool",
                                                        "max_running": "many"})
    assert bad.status == 400 and "max running must be a whole number" in bad.body

    default = ada.post("/pools/default-worker-pool/remove")
    assert default.status == 400 and "is the default pool and cannot be removed" in default.body
    start_worker("Database Worker Pool")
    busy = ada.post("/pools/database-worker-pool/remove")
    assert busy.status == 400 and "workers are registered in it" in busy.body
    assert ada.post("/pools", {"name": "Spare Pool"}).status == 302
    assert ada.post("/pools/spare-pool/remove").location.startswith("/?removed=")
    assert "spare-pool" not in client.pools.all()
    assert ada.post("/pools/database-worker-pool/edit",
                    {"name": "Database Worker Pool", "default": "1"}).status == 302
    assert client.pools.get("database-worker-pool").is_default


def test_drain_from_the_console_stops_the_worker_after_its_step(console, client, start_worker):
    client.pools.add("Drain Pool")
    worker = start_worker("Drain Pool")
    page = console("vera").get("/pools/drain-pool")
    assert worker.name in page.body and "Healthy" in page.body and "Drain</button>" not in page.body
    otto = console("otto")
    assert "Drain</button>" in otto.get("/pools/drain-pool").body
    assert otto.post("/workers/drain", {"worker": worker.name,
                                        "back": "/pools/drain-pool"}).location == \
        "/pools/drain-pool"
    assert worker.proc.wait(30) == 0
    unknown = otto.post("/workers/drain", {"worker": "no-such-worker"})
    assert unknown.status == 400 and "no worker named" in unknown.body


def test_cancel_from_the_console_kills_the_scripts_process_group(
        console, client, start_worker, tmp_path):
    client.pools.add("Cancel Pool")
    start_worker("Cancel Pool")
    pid_file = tmp_path / "child.pid"
    step = client.run(ScriptStep(script=f"sleep 300 & echo $! > {pid_file}; wait",
                                 pool="Cancel Pool", name="stuck"))
    wait_for(lambda: pid_file.exists() and pid_file.read_text().strip(), what="the child")
    child = int(pid_file.read_text())
    otto = console("otto")
    assert 'id="cancel"' in otto.get(f"/steps/{step.id}").body
    assert otto.post(f"/steps/{step.id}/cancel").status == 302
    assert step.wait(30).state == "Cancelled"
    wait_for(lambda: not pid_alive(child), 15, "the script's child to be killed")
    again = otto.post(f"/steps/{step.id}/cancel")
    assert again.status == 302  # already ended: said on the page, nothing to do


def test_the_builtin_switch_warns_needs_confirmation_and_refuses_default_pool_steps(
        console, client):
    ada = console("ada")
    page = ada.get("/builtin")
    assert "Only do this after you have added worker pools" in page.body
    assert "every step for &#x27;Default Worker Pool&#x27;: it has no live workers now" in \
        page.body or "every step for 'Default Worker Pool'" in page.body
    unconfirmed = ada.post("/builtin", {"enabled": "0"})
    assert unconfirmed.status == 400 and "confirm=yes" in unconfirmed.body
    assert client.builtin.enabled()
    assert ada.post("/builtin", {"enabled": "0", "confirm": "yes"}).status == 302
    assert not client.builtin.enabled()
    refused = ada.post("/run", {"pool": "", "script": "echo default pool"})
    assert refused.status == 400 and "built-in worker is disabled" in refused.body
    assert ada.post("/builtin", {"enabled": "1"}).status == 302 and client.builtin.enabled()


def test_the_live_log_streams_lines_and_ends_with_the_state(console, client, start_worker):
    client.pools.add("Log Pool")
    start_worker("Log Pool")
    step = client.run(ScriptStep(script="for i in 1 2 3; do echo line $i; done; exit 4",
                                 pool="Log Pool"))
    log = console("vera").get(f"/steps/{step.id}/log")
    assert log.headers["Content-Type"].startswith("text/event-stream")
    lines = [json.loads(d)["x"] for d in re.findall(r"^data: (\{.*\})$", log.body, re.M)]
    assert lines == ["line 1", "line 2", "line 3", "the script exited with code 4"]
    assert re.search(r'^event: end\ndata: "Failed"$', log.body, re.M), log.body
    assert console("vera").get(f"/steps/{keys.step_id('log-pool', 'nope')}/log").status == 404


def test_every_action_is_in_the_audit_stream_the_page_and_the_cli(console, client, cli, raw):
    ada = console("ada")
    ada.post("/pools", {"name": "Audited Pool"})
    ada.post("/pools/audited-pool/pause", {"reason": "night"})
    ada.post("/pools/default-worker-pool/remove")  # refused
    console("vera").post("/pools/audited-pool/resume")  # forbidden
    entries = audit.read(raw, limit=20)
    seen = [(e.who, e.action, e.target, e.outcome) for e in entries[:5]]
    assert seen == [
        ("vera", "/pools/audited-pool/resume", "", "forbidden"),
        ("vera", "login", "", "ok"),
        ("ada", "pool.remove", "default-worker-pool", "refused"),
        ("ada", "pool.pause", "audited-pool", "ok"),
        ("ada", "pool.add", "Audited Pool", "ok")]
    assert all(e.source == "127.0.0.1" for e in entries[:5])
    page = ada.get("/audit").body
    assert "pool.pause" in page and "Audited Pool" in page
    shown = json.loads(cli("audit", "--json", "--limit", "5").stdout)
    assert [e["action"] for e in shown][2:] == ["pool.remove", "pool.pause", "pool.add"]


def test_run_a_script_with_a_package_and_its_page_shows_outputs_and_artifacts(
        console, client, start_worker, tmp_path):
    client.pools.add("Db Pool")
    start_worker("Db Pool")
    push(client.redis, make_zip(tmp_path / "Acme.Database.1.2.0.zip", {"VERSION": "1.2.0\n"}))
    otto = console("otto")
    reply = otto.post("/run", {
        "pool": "db-pool", "syntax": "bash", "name": "migrate",
        "packages": "name=db,id=Acme.Database,version=1.2.0,feed=builtin,extract=true",
        "script": 'set_workerpool_variable Version "$(cat db/VERSION)"\n'
                  "echo report-body > report.txt\n"
                  "echo \"##workerpool[createArtifact path='report.txt' name='report']\""})
    assert reply.status == 302, reply.body
    step_id = reply.location.removeprefix("/steps/")
    result = client.step(step_id).wait(30)
    assert result.state == "Success" and result.output_variables == {"Version": "1.2.0"}
    page = console("vera").get(f"/steps/{step_id}").body
    outputs = re.search(r'<table id="outputs">(.*?)</table>', page, re.S)
    assert outputs and "<td>Version</td><td>1.2.0</td>" in outputs.group(1)
    assert f'href="/steps/{step_id}/artifacts/report"' in page
    artifact = console("vera").get(f"/steps/{step_id}/artifacts/report")
    assert artifact.status == 200 and artifact.body == "report-body\n"
    assert console("vera").get(f"/steps/{step_id}/artifacts/nope").status == 404
    bad = otto.post("/run", {"pool": "db-pool", "script": "echo", "packages": "db"})
    assert bad.status == 400 and "package" in bad.body and "Traceback" not in bad.body


def test_the_steps_page_lists_recent_steps_filtered_by_pool_and_state(
        console, client, start_worker):
    for name in ("Alpha Pool", "Beta Pool"):
        client.pools.add(name)
        start_worker(name)
    ran = {(pool, code): client.run(ScriptStep(script=f"exit {code}", pool=pool,
                                               name=f"{pool} exit {code}"))
           for pool in ("Alpha Pool", "Beta Pool") for code in (0, 1)}
    assert [h.wait(30).state for h in ran.values()] == ["Success", "Failed"] * 2
    vera = console("vera")

    def listed(query: str) -> set[str]:
        page = vera.get("/steps" + query)
        assert page.status == 200
        return set(re.findall(r'<a href="/steps/([^"]+)">', page.body))

    every = {h.id for h in ran.values()}
    assert every <= listed("")
    assert listed("?pool=alpha-pool") == {ran["Alpha Pool", 0].id, ran["Alpha Pool", 1].id}
    assert listed("?pool=beta-pool&state=Failed") == {ran["Beta Pool", 1].id}
    assert listed("?state=Success") & every == {ran["Alpha Pool", 0].id, ran["Beta Pool", 0].id}


def test_a_deployments_page_shows_each_steps_runs_per_target_with_their_logs(
        console, client, start_worker, server, cli, tmp_path):
    client.pools.add("Web Pool")
    start_worker("Web Pool", concurrency=2)
    registry = TargetRegistry(client.redis)
    for name in ("web-01", "web-02"):
        registry.add(name, "Test", ("web",))
    server()
    process = tmp_path / "process.yaml"
    process.write_text("""
name: Warm up
steps:
  - name: Warm up
    location: worker-per-target
    pool: Web Pool
    roles: [web]
    script: |
      echo "warming #{Machine.Name}"
""")
    done = cli("deploy", str(process), "--environment", "Test", "--json", timeout=120)
    assert done.returncode == 0, done.stderr
    deployment = json.loads(done.stdout)
    vera = console("vera")
    assert deployment["id"] in vera.get("/deployments").body
    page = vera.get(f"/deployments/{deployment['id']}").body
    assert "Warm up" in page
    runs = {r["target"]: r["id"] for r in deployment["steps"][0]["runs"]}
    assert sorted(runs) == ["web-01", "web-02"]
    for target, run_id in runs.items():
        assert f'<a href="/steps/{run_id}">{target}</a>' in page
        assert f'data-source="/steps/{run_id}/log"' in page  # the same live log
        log = vera.get(f"/steps/{run_id}/log").body
        assert [json.loads(d)["x"] for d in re.findall(r"^data: (\{.*\})$", log, re.M)] == \
            [f"warming {target}"]
    assert vera.get("/deployments/no-such-deployment").status == 404
