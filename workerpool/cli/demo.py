"""The seed's scenario: three pools by kind of work, a default pool served by the built-in
worker, and the built-in worker switched off at the end."""

from __future__ import annotations

import dataclasses
import shutil
import tempfile
from pathlib import Path

import click

from workerpool.cli.output import table
from workerpool.client import Client
from workerpool.core.errors import NoWorker
from workerpool.core.printable import printable
from workerpool.core.settings import Settings
from workerpool.core.steps import ScriptStep
from workerpool.core.targets import TargetRegistry
from workerpool.server.stack import Stack
from workerpool.spec.shipped import example_packages, examples_dir
from workerpool.worker.packages.builtin import push

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


def deploy_database(stack: Stack, home: Path) -> bool:
    """The seed's database deployment: a migration from a referenced package on the Database
    Worker Pool, then a warm-up per web target, orchestrated by the server."""
    client = Client(redis_url=stack.url, settings=stack.settings)
    for package in example_packages():
        push(client.redis, package.zip_to(home))
    registry = TargetRegistry(client.redis)
    for name in ("web-01", "web-02"):
        registry.add(name, "Test", ("web",))
    stop = stack.start_orchestrator()
    try:
        result = client.deploy(examples_dir() / "database-deployment.yaml", "Test",
                               timeout=120)
    finally:
        stop.set()
    click.echo(f"\nThe seed's database deployment to Test ({result.id}): {result.state}")
    table(["STEP", "STATE", "TARGET", "WORKER", "RUN STATE"],
          [[s.name, s.state, r.target or "", r.worker or "", r.state]
           for s in result.steps for r in s.runs] +
          [[s.name, s.state, "", "", ""] for s in result.steps if not s.runs])
    migrate = result.steps[0].runs[-1]
    click.echo("Migrate's log (the password is masked):")
    for entry in client.step(migrate.id).logs():
        if entry.stream == "stdout":
            click.echo(f"  {printable(entry.text)}")
    return result.state == "Success"


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
        client = Client(redis_url=stack.url, settings=stack.settings)
        handles = [client.run(step) for step in STEPS]
        results = [h.wait(timeout=120) for h in handles]
        echo("\nWhat ran where:")
        table(["STEP", "POOL", "WORKER", "STATE", "TOOL", "OUTPUT"],
              [[s.name, r.pool, r.worker, r.state, r.output_variables.get("Tool", ""),
                next((e.text for e in r.log if e.stream == "stdout"), "")]
               for s, r in zip(STEPS, results, strict=True)])
        echo("\nThe default pool has no workers, so 'Notify Slack' ran on the built-in worker.")
        deployed = deploy_database(stack, home)
        client.builtin.disable()
        try:
            client.run(ScriptStep(name="Notify Slack", script="echo hi"))
            refused = "not refused (unexpected)"
        except NoWorker as exc:
            refused = str(exc)
        echo(f"With the built-in worker disabled, the same step is refused:\n  {refused}")
        ok = all(r.succeeded for r in results) and deployed
    shutil.rmtree(home, ignore_errors=True)
    echo("\nStopped everything the demo started and removed its data.")
    return 0 if ok else 1
