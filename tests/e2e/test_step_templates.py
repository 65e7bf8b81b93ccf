"""The shipped step templates (workerpool/spec/templates), each run once through `workerpool run
--template` on a real worker; `workerpool template list|show`; and what `run --template` refuses.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
from pathlib import Path

import pytest
from archives import make_zip

from workerpool.core import keys
from workerpool.worker.packages.builtin import push

KUBECTL_MISSING = ("kubectl is not installed on this worker; run this step on the Kubernetes "
                   "Worker Pool (machines with kubectl)")
TEMPLATES = {"database-deployment", "http-health-check", "kubectl-apply", "notify-webhook",
             "sql-migrations"}


def run_json(cli, *args: str) -> tuple[int, dict]:
    done = cli("run", "--json", *args)
    assert done.stdout.strip(), done.stderr
    return done.returncode, json.loads(done.stdout)


def lines(result: dict, stream: str) -> list[str]:
    return [entry["text"] for entry in result["log"] if entry["stream"] == stream]


# --- packages whose id and version are parameters (no Redis) ------------------------------------


# --- template list / show ------------------------------------------------------------------------


def test_template_list_shows_every_shipped_template(cli):
    done = cli("template", "list", "--json")
    assert done.returncode == 0, done.stderr
    found = {t["slug"]: t for t in json.loads(done.stdout)}
    assert set(found) >= TEMPLATES
    assert "script" not in found["sql-migrations"]
    table = cli("template", "list")
    assert table.returncode == 0
    assert all(slug in table.stdout for slug in TEMPLATES)
    assert "WebhookUrl*" in table.stdout  # required parameters are starred


def test_template_show_gives_parameters_packages_syntax_and_script(cli):
    done = cli("template", "show", "sql-migrations", "--json")
    assert done.returncode == 0, done.stderr
    shown = json.loads(done.stdout)
    assert shown["syntax"] == "python" and "schema_migrations" in shown["script"]
    params = {p["name"]: p for p in shown["parameters"]}
    assert params["ConnectionString"] == {
        "name": "ConnectionString", "description": params["ConnectionString"]["description"],
        "default": None, "required": True, "sensitive": True}
    assert params["Client"]["default"] == "sqlite3"
    assert params["MigrationsPath"]["default"] == "#{Package[migrations].ExtractedPath}"
    assert shown["packages"] == [{"name": "migrations", "package_id": "#{PackageId}",
                                  "version": "#{PackageVersion}", "feed": "#{PackageFeed}",
                                  "extract": True}]
    text = cli("template", "show", "kubectl-apply")
    assert text.returncode == 0
    assert "kubectl apply (kubectl-apply), bash" in text.stdout
    assert "manifests: #{PackageId} #{PackageVersion}" in text.stdout
    assert 'command -v kubectl' in text.stdout


def test_template_show_unknown_is_one_line_exit_2(cli):
    done = cli("template", "show", "no-such-template")
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1
    assert done.stderr.startswith("workerpool: error: no step template 'no-such-template'")
    assert "available: database-deployment, http-health-check" in done.stderr


# --- run --template refusals ---------------------------------------------------------------------


@pytest.mark.parametrize(("args", "message"), [
    (["--template", "no-such-template"], "no step template 'no-such-template' in "),
    (["--template", "notify-webhook", "--param", "Message=hi"],
     "template 'notify-webhook' needs parameter 'WebhookUrl'"),
    (["--template", "notify-webhook", "--param", "WebhookUrl=http://x", "--param", "Colour=red"],
     "template 'notify-webhook' has no parameter 'Colour'; its parameters: WebhookUrl, Message"),
    (["--template", "notify-webhook", "--param", "WebhookUrl"], "is not of the form NAME=VALUE"),
    (["--template", "notify-webhook", "--script", "echo hi"],
     "give exactly one of --script, --script-file or --template"),
    (["--param", "Url=http://x"], "--param is for a template; give --template NAME"),
    (["--template", "sql-migrations", "--param", "ConnectionString=x.db",
      "--param", "PackageId=Acme.Migrations"],
     "package 'migrations' (Acme.Migrations) needs a version; give PackageVersion"),
])
def test_run_template_refusals_are_one_line_exit_2(cli, client, raw, args, message):
    done = cli("run", *args)
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("workerpool: error: ")
    assert message in done.stderr
    assert not raw.keys(keys.space("*") + "step:*")  # refused before anything was stored


# --- each template, run on a real worker ---------------------------------------------------------


def test_http_health_check_passes_on_200_and_fails_on_500_after_retries(
        cli, start_worker, http_server):
    start_worker()
    healthy, requests = http_server([200])
    code, result = run_json(cli, "--template", "http-health-check",
                            "--param", f"Url={healthy}/health", "--param", "ExpectedText=ready")
    assert code == 0 and result["state"] == "Success", result["log"]
    assert result["output_variables"] == {"StatusCode": "200"}
    assert [r[:2] for r in requests] == [("GET", "/health")]

    broken, requests = http_server([500])
    code, result = run_json(cli, "--template", "http-health-check", "--param", f"Url={broken}",
                            "--param", "Attempts=3", "--param", "DelaySeconds=0")
    assert code == 1 and result["state"] == "Failed" and result["exit_code"] == 1
    assert len(requests) == 3
    assert lines(result, "stderr") == [
        f"http-health-check: {broken} was not healthy after 3 attempts: HTTP 500, expected 200"]


def test_notify_webhook_posts_slack_compatible_json(cli, start_worker, http_server):
    start_worker()
    url, requests = http_server([200])
    code, result = run_json(cli, "--template", "notify-webhook",
                            "--param", f"WebhookUrl={url}/services/T0/B0/secret",
                            "--param", "Message=Orders 1.2.3 is live in *Test*")
    assert code == 0 and result["state"] == "Success", result["log"]
    [(method, path, body, content_type)] = requests
    assert (method, path, content_type) == ("POST", "/services/T0/B0/secret", "application/json")
    assert json.loads(body) == {"text": "Orders 1.2.3 is live in *Test*"}
    assert "secret" not in json.dumps(result)  # the webhook URL is a sensitive parameter


@pytest.fixture
def migrations(client, tmp_path) -> Path:
    """Acme.Migrations 1.0.0 (two .sql files) in the built-in feed."""
    package = make_zip(tmp_path / "Acme.Migrations.1.0.0.zip", {
        "001_create_orders.sql": "CREATE TABLE orders (id INTEGER PRIMARY KEY, note TEXT);\n",
        "002_seed_orders.sql": "INSERT INTO orders (note) VALUES ('first; with a semicolon');\n"
                               "INSERT INTO orders (note) VALUES ('second');\n",
        "README.txt": "not a migration\n"})
    push(client.redis, package)
    return package


def test_sql_migrations_apply_once_and_a_rerun_applies_nothing(cli, start_worker, migrations,
                                                               tmp_path):
    start_worker()
    database = tmp_path / "orders.db"
    code, result = run_json(cli, "--template", "sql-migrations",
                            "--param", "PackageId=Acme.Migrations",
                            "--param", "PackageVersion=1.0.0",
                            "--param", f"ConnectionString={database}")
    assert code == 0 and result["state"] == "Success", result["log"]
    assert result["output_variables"] == {"AppliedCount": "2"}
    assert lines(result, "stdout") == ["sql-migrations: applied 001_create_orders.sql",
                                       "sql-migrations: applied 002_seed_orders.sql",
                                       "sql-migrations: 2 applied, 0 already applied"]
    with sqlite3.connect(database) as db:
        assert db.execute("SELECT note FROM orders ORDER BY id").fetchall() == [
            ("first; with a semicolon",), ("second",)]
        assert [r[0] for r in db.execute("SELECT name FROM schema_migrations ORDER BY name")] \
            == ["001_create_orders.sql", "002_seed_orders.sql"]

    # Again, with the package given by --package instead of the parameters: nothing new.
    code, result = run_json(cli, "--template", "sql-migrations",
                            "--package", "name=migrations,id=Acme.Migrations,version=1.0.0",
                            "--param", f"ConnectionString=Data Source={database}")
    assert code == 0 and result["state"] == "Success", result["log"]
    assert result["output_variables"] == {"AppliedCount": "0"}
    assert lines(result, "stdout") == ["sql-migrations: 0 applied, 2 already applied"]
    with sqlite3.connect(database) as db:
        assert db.execute("SELECT count(*) FROM orders").fetchone() == (2,)


def _path_without_kubectl(tmp_path: Path) -> str:
    """A PATH with bash but no kubectl, even where kubectl shares bash's directory."""
    bin_dir = tmp_path / "bin-without-kubectl"
    bin_dir.mkdir()
    for tool in ("bash", "sh", "env"):
        found = shutil.which(tool)
        assert found, tool
        (bin_dir / tool).symlink_to(found)
    kept = [d for d in os.environ["PATH"].split(os.pathsep)
            if d and not (Path(d) / "kubectl").exists()]
    return os.pathsep.join([str(bin_dir), *kept])


@pytest.fixture
def manifests(client, tmp_path) -> Path:
    package = make_zip(tmp_path / "Acme.Web.Manifests.1.4.0.zip", {
        "deployment.yaml": "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web}\n",
        "service/service.yaml": "apiVersion: v1\nkind: Service\nmetadata: {name: web}\n"})
    push(client.redis, package)
    return package


def test_kubectl_apply_fails_at_once_where_kubectl_is_missing(cli, client, start_worker,
                                                              manifests, tmp_path):
    client.pools.add("Database Worker Pool")
    start_worker("Database Worker Pool", extra_env={"PATH": _path_without_kubectl(tmp_path)})
    code, result = run_json(cli, "--pool", "Database Worker Pool", "--template", "kubectl-apply",
                            "--param", "PackageId=Acme.Web.Manifests",
                            "--param", "PackageVersion=1.4.0")
    assert code == 1
    assert result["state"] == "Failed" and result["exit_code"] == 2
    assert lines(result, "stderr") == [KUBECTL_MISSING]
    assert lines(result, "stdout") == []


def test_kubectl_apply_runs_kubectl_apply_on_the_package_manifests(cli, client, start_worker,
                                                                   manifests, tmp_path):
    stub_dir = tmp_path / "kubectl-stub"
    stub_dir.mkdir()
    stub = stub_dir / "kubectl"
    # Bash builtins only: the worker's PATH has nothing else.
    stub.write_text('#!/bin/bash\necho "kubectl-stub: $*"\n'
                    'shopt -s globstar; cd "$3" && printf "%s\\n" **/*.yaml\n')
    stub.chmod(0o755)
    client.pools.add("Kubernetes Worker Pool")
    start_worker("Kubernetes Worker Pool", extra_env={
        "PATH": f"{stub_dir}{os.pathsep}{_path_without_kubectl(tmp_path)}"})
    code, result = run_json(cli, "--pool", "Kubernetes Worker Pool", "--template", "kubectl-apply",
                            "--param", "PackageId=Acme.Web.Manifests",
                            "--param", "PackageVersion=1.4.0", "--param", "Namespace=web")
    assert code == 0 and result["state"] == "Success", result["log"]
    out = lines(result, "stdout")
    assert out[0].startswith("kubectl-apply: kubectl apply -f /")
    assert out[1].startswith("kubectl-stub: apply -f /")
    assert out[1].endswith("/manifests --recursive --namespace web")
    assert out[2:] == ["deployment.yaml", "service/service.yaml"]


DBUP_APP = '''\
"""A DbUp-style console app: upgrade the database in argv[1] with Scripts/*.sql, journaled."""
import pathlib
import sqlite3
import sys

db = sqlite3.connect(sys.argv[1])
db.execute("CREATE TABLE IF NOT EXISTS SchemaVersions (ScriptName TEXT PRIMARY KEY)")
done = {row[0] for row in db.execute("SELECT ScriptName FROM SchemaVersions")}
print("Beginning database upgrade")
for script in sorted(pathlib.Path(__file__).parent.joinpath("Scripts").glob("*.sql")):
    if script.name not in done:
        print(f"Executing Database Server script '{script.name}'")
        db.executescript(script.read_text())
        db.execute("INSERT INTO SchemaVersions VALUES (?)", (script.name,))
        db.commit()
print("Upgrade successful")
'''


def test_database_deployment_runs_the_packages_console_app_or_its_sql(cli, client, start_worker,
                                                                      tmp_path):
    client.pools.add("Database Worker Pool")
    start_worker("Database Worker Pool")
    orders = "CREATE TABLE orders (id INTEGER PRIMARY KEY);\n"
    push(client.redis, make_zip(tmp_path / "Acme.Database.1.0.0.zip", {
        "migrate.py": DBUP_APP, "Scripts/0001_orders.sql": orders}))
    database = tmp_path / "orders.db"
    code, result = run_json(cli, "--pool", "Database Worker Pool",
                            "--template", "database-deployment",
                            "--param", "PackageVersion=1.0.0",
                            "--param", f"ConnectionString={database}")
    assert code == 0 and result["state"] == "Success", result["log"]
    assert lines(result, "stdout") == [
        "database-deployment: running migrate.py from the package",
        "Beginning database upgrade", "Executing Database Server script '0001_orders.sql'",
        "Upgrade successful", "database-deployment: Acme.Database 1.0.0 deployed"]
    assert result["output_variables"] == {"Version": "1.0.0"}

    with sqlite3.connect(database) as db:
        assert db.execute("SELECT ScriptName FROM SchemaVersions").fetchall() == [
            ("0001_orders.sql",)]

    # A package with only .sql files gets them applied as the sql-migrations template does.
    push(client.redis, make_zip(tmp_path / "Acme.Database.1.1.0.zip", {
        "Scripts/0001_orders.sql": orders,
        "Scripts/0002_customers.sql": "CREATE TABLE customers (id INTEGER PRIMARY KEY);\n"}))
    other = tmp_path / "other.db"
    code, result = run_json(cli, "--pool", "Database Worker Pool",
                            "--template", "database-deployment",
                            "--param", "PackageVersion=1.1.0",
                            "--param", f"ConnectionString={other}")
    assert code == 0 and result["state"] == "Success", result["log"]
    assert result["output_variables"] == {"Version": "1.1.0", "AppliedCount": "2"}
    assert lines(result, "stdout") == [
        "database-deployment: applied 0001_orders.sql",
        "database-deployment: applied 0002_customers.sql",
        "database-deployment: 2 applied, 0 already applied",
        "database-deployment: Acme.Database 1.1.0 deployed"]
    with sqlite3.connect(other) as db:
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert tables == {"orders", "customers", "schema_migrations"}
