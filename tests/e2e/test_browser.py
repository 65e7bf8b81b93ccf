"""End to end in headless Chromium: Flower and the pools page against real Redis and workers.

Chromium is driven by plain subprocess calls (``--dump-dom`` for the rendered DOM after its
scripts ran, ``--screenshot`` for a picture). Set ``WORKERPOOL_SCREENSHOTS=docs`` to refresh the
screenshots kept in ``docs/``.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
from pathlib import Path
from urllib.parse import urlencode

import pytest
from conftest import wait_for
from httpd import fetch, free_port, running

from workerpool import ScriptStep
from workerpool.server import web

FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--no-first-run", "--disable-sync")
SECRET = "hunter2-do-not-show"


def browse(url: str, profile: Path, screenshot: Path | None = None, budget_ms: int = 5000) -> str:
    """The DOM of *url* once its scripts had *budget_ms* of virtual time to render (Flower
    fetches its task table after load); optionally a PNG."""
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.fail("chromium is not installed; .ci/run installs Debian's chromium and "
                    "chromium-driver (apt-get install -y chromium chromium-driver)")
    args = [chromium, *FLAGS, f"--user-data-dir={profile}", f"--virtual-time-budget={budget_ms}",
            "--window-size=1280,900", "--dump-dom", url]
    if screenshot is not None:
        args.insert(-2, f"--screenshot={screenshot}")
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 0, err.decode()[-2000:]
    if screenshot is not None:
        assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", "no screenshot taken"
        keep = os.environ.get("WORKERPOOL_SCREENSHOTS")
        if keep:
            shutil.copyfile(screenshot, Path(keep) / screenshot.name)
    return out.decode()


def test_flower_shows_workers_of_two_pools_their_steps_states_and_queues(
        client, start_worker, env, tmp_path):
    client.pools.add("Database Worker Pool", description="SQL Server tools")
    client.pools.add("Kubernetes Worker Pool", description="kubectl and helm")
    db = start_worker("Database Worker Pool")
    kube = start_worker("Kubernetes Worker Pool")
    port, pools_port = free_port(), free_port()
    with running(["flower", "--port", str(port), "--pools-port", str(pools_port)], env,
                 tmp_path / "flower.log"):
        flower = f"http://127.0.0.1:{port}"

        def workers_seen() -> bool:
            try:
                data = json.loads(fetch(f"{flower}/workers?json=1")[1])["data"]
            except (OSError, ValueError):
                return False
            return {w["hostname"].split("@")[0] for w in data} >= {db.name, kube.name}

        wait_for(workers_seen, 30, "Flower to see both pools' workers")
        migrate = client.run(ScriptStep(
            script="echo migrating $DbName", pool="Database Worker Pool", name="Migrate orders",
            variables={"DbName": "orders"}, sensitive_variables={"DbPassword": SECRET}))
        apply = client.run(ScriptStep(script="echo kubectl apply", pool="Kubernetes Worker Pool",
                                      name="Apply manifests"))
        client.pools.add("Azure Worker Pool", description="no worker online")
        for name in ("Create resource group", "Deploy web app"):  # they wait in its queue
            client.run(ScriptStep(script="echo az", pool="Azure Worker Pool", name=name))
        rollout = client.run(ScriptStep(script="exit 3", pool="Kubernetes Worker Pool",
                                        name="Check rollout"))
        backup = client.run(ScriptStep(script="sleep 30", pool="Database Worker Pool",
                                       name="Back up the database"))
        assert migrate.wait(30).state == "Success" and apply.wait(30).state == "Success"
        assert rollout.wait(30).state == "Failed"
        wait_for(lambda: backup.result().state == "Running", 30, "the backup to run")
        backup.cancel()
        assert backup.wait(30).state == "Cancelled"

        def finished_in_flower() -> bool:
            query = urlencode({"draw": 1, "start": 0, "length": 10, "search[value]": "",
                               "order[0][column]": 0, "order[0][dir]": "asc",
                               "columns[0][data]": "name"})
            body = fetch(f"{flower}/tasks/datatable?{query}")[1]
            return sorted(t["state"] for t in json.loads(body)["data"]) == [
                "FAILURE", "REVOKED", "SUCCESS", "SUCCESS"]

        wait_for(finished_in_flower, 15, "Flower to receive every step's task events")

        workers_dom = browse(f"{flower}/workers", tmp_path / "profile-workers")
        assert f"{db.name}@" in workers_dom and f"{kube.name}@" in workers_dom
        tasks_dom = browse(f"{flower}/tasks", tmp_path / "profile-tasks",
                           tmp_path / "flower.png")
        assert "workerpool.run_step" in tasks_dom
        for state in ("SUCCESS", "FAILURE", "REVOKED"):
            assert state in tasks_dom, state
        broker_dom = browse(f"{flower}/broker", tmp_path / "profile-broker",
                            tmp_path / "flower-broker.png")
        for queue in ("workerpool.pool.database-worker-pool",
                      "workerpool.pool.kubernetes-worker-pool",
                      "workerpool.pool.azure-worker-pool"):
            assert queue in broker_dom, queue
        azure_row = broker_dom.split("workerpool.pool.azure-worker-pool", 1)[1].split("</tr>")[0]
        assert ">2<" in azure_row.replace(" ", ""), azure_row  # its two waiting steps
        for shown in (f"step='Migrate orders' pool='Database Worker Pool' id={migrate.id}",
                      f"step='Apply manifests' pool='Kubernetes Worker Pool' id={apply.id}",
                      f"{db.name}@", f"{kube.name}@"):
            assert shown in tasks_dom.replace("&#39;", "'"), shown
        assert SECRET not in tasks_dom
        assert "orders" not in tasks_dom.replace("'Migrate orders'", "")  # DbName's value
        # Under the page's own refresh interval, which would start a new load.
        budget = (web.REFRESH_SECONDS - 2) * 1000
        pools_dom = browse(f"http://127.0.0.1:{pools_port}/", tmp_path / "profile-pools",
                           budget_ms=budget)
        assert "Database Worker Pool" in pools_dom and db.name in pools_dom
        assert f'href="{flower}/"' in pools_dom  # the page links to Flower


def test_pools_page_in_the_browser(client, start_worker, redis_url, tmp_path):
    client.pools.add("Database Worker Pool", description="SQL Server tools; deploys migrations")
    client.pools.add("Kubernetes Worker Pool", description="Machines with kubectl and helm")
    client.pools.add("Azure Worker Pool", description="Machines with the Azure CLI")
    builtin = start_worker(None)
    db = [start_worker("Database Worker Pool") for _ in range(2)]
    kube = start_worker("Kubernetes Worker Pool")
    backup = client.run(ScriptStep(script="sleep 30", pool="Database Worker Pool",
                                   name="Back up orders"))
    for name in ("Create resource group", "Deploy web app"):
        client.run(ScriptStep(script="echo az", pool="Azure Worker Pool", name=name))
    wait_for(lambda: client.snapshot(detail=True).leases, what="the lease")
    server = web.start(redis_url, 0)
    try:
        dom = browse(f"http://127.0.0.1:{server.port}/", tmp_path / "profile",
                     tmp_path / "pools-page.png", budget_ms=(web.REFRESH_SECONDS - 2) * 1000)
    finally:
        web.stop(server)
        backup.cancel()
    for shown in ("Default Worker Pool", "Default", "Database Worker Pool",
                  "SQL Server tools; deploys migrations", "Azure Worker Pool",
                  "Kubernetes Worker Pool", *(w.name for w in db), kube.name, "Healthy",
                  "Back up orders", backup.id, "Built-in worker", "Enabled", builtin.name):
        assert shown in dom, shown
    azure = dom.split('id="pool-azure-worker-pool"')[1].split("</section>")[0]
    assert 'data-queued="2"' in azure and "No workers registered." in azure
