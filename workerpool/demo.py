"""The seed's scenario: three pools by kind of work, a default pool served by the built-in
worker, and the built-in worker switched off at the end."""

from __future__ import annotations

import dataclasses
import shutil
import tempfile
from pathlib import Path

import click

from workerpool.cli.output import table
from workerpool.errors import NoWorker
from workerpool.settings import Settings
from workerpool.stack import Stack
from workerpool.steps import ScriptStep

POOLS = {
    "Kubernetes Worker Pool": (1, "Machines with kubectl, for Kubernetes deployments"),
    "Azure Worker Pool": (1, "Machines with the Azure CLI, for Azure deployments"),
    "Database Worker Pool": (2, "Machines that reach SQL Server on port 1433"),
}

TOOL = 'set_workerpool_variable Tool "{tool}"; echo "{line} on $WORKERPOOL_WORKER_NAME"'

STEPS = [
    ScriptStep(name="Apply manifests", pool="Kubernetes Worker Pool",
               script=TOOL.format(tool="kubectl", line="kubectl apply -f manifests/")),
    ScriptStep(name="Deploy ARM template", pool="Azure Worker Pool",
               script=TOOL.format(tool="az", line="az deployment group create")),
    *[ScriptStep(name=f"Migrate {db}", pool="Database Worker Pool",
                 script=TOOL.format(tool="DbUp", line=f"dbup upgrade {db}") + "; sleep 0.5",
                 variables={"DbName": db}, sensitive_variables={"DbPassword": "s3cret-pw"})
      for db in ("orders", "billing", "customers", "audit")],
    ScriptStep(name="Notify Slack", script=TOOL.format(tool="curl", line="post to #deploys")),
]


def run_demo() -> int:
    home = Path(tempfile.mkdtemp(prefix="workerpool-demo-"))
    settings = dataclasses.replace(Settings.from_env(), home=home, redis_url=None,
                                   heartbeat_interval=1.0)
    echo = click.echo
    echo(f"Starting an embedded stack in {home}: Redis, the built-in worker, and "
         + ", ".join(f"{n} x {name}" for name, (n, _) in POOLS.items()) + " ...")
    stack = Stack(settings, pools={name: n for name, (n, _) in POOLS.items()},
                  descriptions={name: d for name, (_, d) in POOLS.items()},
                  log_dir=home / "logs")
    with stack:
        client = stack.client()
        handles = [client.run(step) for step in STEPS]
        results = [h.wait(timeout=120) for h in handles]
        echo("\nWhat ran where:")
        table(["STEP", "POOL", "WORKER", "STATE", "TOOL", "OUTPUT"],
              [[s.name, r.pool, r.worker, r.state, r.output_variables.get("Tool", ""),
                next((e.text for e in r.log if e.stream == "stdout"), "")]
               for s, r in zip(STEPS, results, strict=True)])
        echo("\nThe default pool has no workers, so 'Notify Slack' ran on the built-in worker.")
        client.builtin.disable()
        try:
            client.run(ScriptStep(name="Notify Slack", script="echo hi"))
            refused = "not refused (unexpected)"
        except NoWorker as exc:
            refused = str(exc)
        echo(f"With the built-in worker disabled, the same step is refused:\n  {refused}")
        ok = all(r.succeeded for r in results)
    shutil.rmtree(home, ignore_errors=True)
    echo("\nStopped everything the demo started and removed its data.")
    return 0 if ok else 1
