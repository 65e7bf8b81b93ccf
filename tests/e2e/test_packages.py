"""Steps that reference packages, on real workers: the seed's "reference a package" end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from archives import make_zip
from conftest import wait_for, watchdog_groups

from workerpool import ScriptStep
from workerpool.core import keys
from workerpool.core.packageref import PackageRef
from workerpool.worker.packages.builtin import push
from workerpool.worker.packages.registry import FeedRegistry

MIGRATE = """#!/bin/bash
echo "migrating with $(cat db/app.config)"
set_workerpool_variable Version "$(cat db/VERSION)"
"""




@pytest.fixture
def pool(client, start_worker):
    client.pools.add("Database Worker Pool")
    return start_worker("Database Worker Pool", concurrency=2)


@pytest.fixture
def acme(client, tmp_path) -> Path:
    """Acme.Database 1.2.0 in the built-in feed, as `workerpool package push` stores it."""
    package = make_zip(tmp_path / "Acme.Database.1.2.0.zip", {
        "migrate.sh": MIGRATE, "VERSION": "1.2.0\n",
        "app.config": "Server=#{DbServer};Password=#{DbPassword}\n",
        "settings/appsettings.json": json.dumps(
            {"ConnectionStrings": {"Default": "x"}, "Retries": 1}, indent=2) + "\n"})
    push(client.redis, package)
    return package


def test_script_file_inside_an_extracted_package_with_features(cli, pool, acme, raw):
    done = cli("run", "--pool", "Database Worker Pool", "--json",
               "--package", "name=db,id=Acme.Database,version=1.2.0,feed=builtin,extract=true",
               "--script-file", "db/migrate.sh", "--var", "DbServer=sql-01",
               "--sensitive-var", "DbPassword=hunter2-secret",
               "--var", "ConnectionStrings:Default=Server=sql-01",
               "--substitute", "db/*.config", "--structured", "db/settings/*.json")
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads(done.stdout)
    assert result["output_variables"] == {"Version": "1.2.0"}
    texts = [e["text"] for e in result["log"]]
    assert "migrating with Server=sql-01;Password=********" in texts
    assert any("extracted to ./db/" in t for t in texts)
    assert any("db/app.config" in t for t in texts)
    assert any("ConnectionStrings:Default" in t for t in texts)
    assert "hunter2-secret" not in done.stdout + done.stderr
    for key in raw.keys(keys.space("*") + "step:*:log"):
        assert "hunter2-secret" not in json.dumps(raw.xrange(key))


def test_package_variables_and_a_package_that_is_not_extracted(client, pool, acme):
    script = ('echo "#{Package[db].PackageId} #{Package[db].PackageVersion} '
              '#{Package[db].FeedId} #{Package[db].PackageFileName}"\n'
              'echo "$Package_db__PackageId $(basename "$Package_db__PackageFilePath")"\n'
              'ls\n'
              'echo "#{WorkerPool.Name}|#{Worker.Name}|#{Step.Id}"')
    ref = PackageRef("db", "Acme.Database", "1.2.0", extract=False)
    result = client.run(ScriptStep(script=script, pool="Database Worker Pool",
                                   packages=(ref,))).wait(timeout=30)
    assert result.state == "Success", result.log
    lines = [e.text for e in result.log if e.stream == "stdout"]
    assert lines[0] == "Acme.Database 1.2.0 builtin Acme.Database.1.2.0.zip"
    assert lines[1] == "Acme.Database Acme.Database.1.2.0.zip"
    assert "Acme.Database.1.2.0.zip" in lines[2:-1]
    assert lines[-1] == f"Database Worker Pool|{pool.name}|{result.id}"


def test_zip_slip_fails_the_step_before_the_script_and_writes_nothing_outside(
        client, pool, tmp_path):
    outside = tmp_path / "escaped.txt"
    marker = tmp_path / "script-ran"
    push(client.redis, make_zip(tmp_path / "Evil.Package.1.0.0.zip", {
        "ok.txt": "fine", f"../../../../../../..{outside}": "gotcha"}))
    result = client.run(ScriptStep(
        script=f"touch {marker}", pool="Database Worker Pool",
        packages=(PackageRef("evil", "Evil.Package", "1.0.0"),))).wait(timeout=30)
    assert result.state == "Failed" and result.exit_code is None
    line = [e.text for e in result.log if e.stream == "system"][-1]
    assert line.startswith("package Evil.Package 1.0.0 from feed 'builtin':")
    assert "escaped.txt" in line
    assert not outside.exists() and not marker.exists()
    # The worker keeps serving.
    after = client.run(ScriptStep(script="echo still here", pool="Database Worker Pool"))
    assert after.wait(timeout=30).state == "Success"


@pytest.mark.parametrize("ref,reason", [
    (PackageRef("db", "Acme.Database", "9.9.9"), "9.9.9"),
    (PackageRef("db", "No.Such.Package", "1.0.0"), "No.Such.Package"),
])
def test_unknown_package_or_version_fails_with_one_line(client, pool, acme, ref, reason,
                                                        tmp_path):
    marker = tmp_path / "ran"
    result = client.run(ScriptStep(script=f"touch {marker}", pool="Database Worker Pool",
                                   packages=(ref,))).wait(timeout=30)
    assert result.state == "Failed"
    system = [e.text for e in result.log if e.stream == "system"]
    assert system[-1].startswith(f"package {ref.package_id} {ref.version} from feed 'builtin'")
    assert reason in system[-1]
    assert not marker.exists()


def test_two_concurrent_steps_download_a_package_once(client, pool, tmp_path, serve):
    feed_root = tmp_path / "feed"
    feed_root.mkdir()
    make_zip(feed_root / "Acme.Web.2.0.0.zip", {"index.html": "<h1>hi</h1>"})
    server = serve(feed_root, delay=0.5)
    FeedRegistry(client.redis).add("web-feed", "http", server.url)
    ref = PackageRef("web", "Acme.Web", "2.0.0", feed="web-feed")
    handles = [client.run(ScriptStep(script="cat web/index.html", pool="Database Worker Pool",
                                     packages=(ref,))) for _ in range(2)]
    results = [h.wait(timeout=30) for h in handles]
    assert [r.state for r in results] == ["Success", "Success"]
    assert all(r.worker == pool.name for r in results)
    assert server.gets("Acme.Web.2.0.0.zip") == 1
    downloaded = ["downloaded" in e.text for r in results for e in r.log
                  if "extracted to ./web/" in e.text]
    assert sorted(downloaded) == [False, True]
    third = client.run(ScriptStep(script="true", pool="Database Worker Pool",
                                  packages=(ref,))).wait(timeout=30)
    assert third.state == "Success" and server.gets("Acme.Web.2.0.0.zip") == 1


def test_unreachable_feed_fails_the_step_and_workdir_is_removed(client, pool, raw):
    FeedRegistry(client.redis).add("gone", "http", "http://127.0.0.1:1")
    result = client.run(ScriptStep(script="pwd", pool="Database Worker Pool", packages=(
        PackageRef("x", "Acme.Gone", "1.0.0", feed="gone"),))).wait(timeout=60)
    assert result.state == "Failed"
    assert "Acme.Gone 1.0.0 from feed 'gone'" in result.log[-1].text
    # Its script never started, so Celery acked its message when the task returned.
    wait_for(lambda: raw.hlen("unacked") == 0, 10, "the failed step's message to be acked")
    ok = client.run(ScriptStep(script="pwd", pool="Database Worker Pool")).wait(timeout=30)
    workdir = Path(ok.log[0].text)
    wait_for(lambda: not workdir.exists(), 10, "working directory removed")
    # The worker's own: its helpers and its staged package copies.
    kept = ("support", ".staged")
    leftovers = [p for p in workdir.parent.iterdir() if p.name not in kept]
    assert leftovers == [], leftovers
    assert watchdog_groups(pool.proc.pid)[1] == []  # no script running


def test_secret_in_a_changed_file_name_is_masked_in_feature_log_lines(client, pool, tmp_path):
    push(client.redis, make_zip(tmp_path / "Acme.Conf.1.0.0.zip", {
        "topsecretvalue.json": '{"Key": "old"}\n'}))
    result = client.run(ScriptStep(
        script="cat conf/*.json", pool="Database Worker Pool",
        packages=(PackageRef("conf", "Acme.Conf", "1.0.0"),), structured=("conf/*.json",),
        variables={"Key": "new"}, sensitive_variables={"Token": "topsecretvalue"})
    ).wait(timeout=30)
    texts = [e.text for e in result.log]
    assert result.state == "Success", texts
    assert any("conf/********.json" in t for t in texts)
    assert not any("topsecretvalue" in t for t in texts)
    assert '{"Key": "new"}' in texts


def test_artifacts_are_collected_and_fetched(cli, client, pool, tmp_path):
    script = ("echo report-body > report.txt\n"
              "echo \"##workerpool[createArtifact path='report.txt' name='report']\"\n"
              "echo \"##workerpool[createArtifact path='../../etc/passwd' name='escape']\"")
    result = client.run(ScriptStep(script=script, pool="Database Worker Pool")).wait(30)
    assert result.state == "Success"
    listed = json.loads(cli("artifacts", result.id, "--json").stdout)
    assert [(a["name"], a["path"], a["size"]) for a in listed] == [
        ("report", "report.txt", 12)]
    assert any("'escape'" in e.text and "not collected" in e.text for e in result.log)
    target = tmp_path / "out.txt"
    got = cli("artifacts", result.id, "--get", "report", "--output", str(target))
    assert got.returncode == 0 and target.read_text() == "report-body\n"
    missing = cli("artifacts", result.id, "--get", "nope")
    assert missing.returncode == 2 and "no artifact named 'nope'" in missing.stderr


def test_malformed_package_reference_is_refused(cli):
    done = cli("run", "--script", "true", "--package", "name=db,id=Acme")
    assert done.returncode == 2
    assert len(done.stderr.strip().splitlines()) == 1 and "version" in done.stderr
