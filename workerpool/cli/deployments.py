"""``workerpool target ...``, ``agent start``, ``deploy`` and ``deployments ...``."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from workerpool.cli import cli
from workerpool.cli.output import client, echo, emit_json, table
from workerpool.cli.pools import issue_credentials, rotate_key_option
from workerpool.core.printable import printable
from workerpool.core.settings import Settings
from workerpool.core.steps import parse_assignment
from workerpool.core.targets import TargetRegistry
from workerpool.spec.deployment import DeploymentResult, StepOutcome
from workerpool.spec.processes import load_process


@cli.group()
def target() -> None:
    """Deployment targets: machines in an environment, with roles and their own agent."""


@target.command("add")
@click.argument("name")
@click.option("--environment", required=True, help="Environment the target belongs to.")
@click.option("--role", "roles", multiple=True, required=True, help="A role (repeatable).")
def target_add(name: str, environment: str, roles: tuple[str, ...]) -> None:
    """Register a target."""
    added = TargetRegistry(client().redis).add(name, environment, roles)
    echo(f"added target {added.name!r} in {added.environment} with roles "
         f"{', '.join(added.roles)}; run its agent with "
         f"`workerpool agent start --target {added.slug}`")


@target.command("list")
@click.option("--json", "as_json", is_flag=True)
def target_list(as_json: bool) -> None:
    """List targets and whether their agents are online."""
    c = client()
    targets = TargetRegistry(c.redis).list()
    agents = {w.pool: w for w in c.workers.list()}
    if as_json:
        emit_json([{**t.to_json(), "agent": agents[t.pool_key].state if t.pool_key in agents
                    else "none"} for t in targets])
        return
    table(["TARGET", "ENVIRONMENT", "ROLES", "AGENT"],
          [[t.name, t.environment, ", ".join(t.roles),
            agents[t.pool_key].state if t.pool_key in agents else "none"] for t in targets])


@target.command("remove")
@click.argument("name")
def target_remove(name: str) -> None:
    """Remove a target."""
    removed = TargetRegistry(client().redis).remove(name)
    echo(f"removed target {removed.name!r}")


@target.command("credentials")
@click.argument("name")
@click.option("--revoke", is_flag=True, help="Drop the user's earlier passwords.")
@click.option("--json", "as_json", is_flag=True)
@rotate_key_option
def target_credentials(name: str, revoke: bool, as_json: bool, rotate_key: bool) -> None:
    """The Redis credentials of a target's agent: it reaches only the target's own queue and
    steps (docs/security.md)."""
    found = TargetRegistry(client().redis).get(name)
    issue_credentials(found.pool_key, f"The agent of target {found.name}", revoke, None,
                      rotate_key, as_json)


@cli.group()
def agent() -> None:
    """Run a deployment target's own agent."""


@agent.command("start")
@click.option("--target", "target_name", required=True, help="Target name or slug.")
@click.option("--concurrency", default=1, type=click.IntRange(1, 64), show_default=True)
@click.option("--loglevel", default="WARNING", show_default=True)
@click.option("--script-user", default=None, metavar="USER",
              help="Who scripts run as (see `workerpool worker start --help`).")
def agent_start(target_name: str, concurrency: int, loglevel: str,
                script_user: str | None) -> None:
    """Consume the target's queue: scripts for location 'target' run here."""
    from workerpool.cli.workers import with_script_user
    from workerpool.worker.celery.serve import serve

    sys.exit(serve(with_script_user(Settings.from_env(), script_user), None, None, concurrency,
                   loglevel.upper(), target=target_name))


class Progress:
    """Deployment progress on stderr. Not a terminal: one plain line per change of the
    deployment, a step, or a run (per target). A terminal: step changes and runs that did not
    succeed as lines, and one live line counting the current step's runs."""

    def __init__(self, tty: bool | None = None) -> None:
        self.tty = sys.stderr.isatty() if tty is None else tty
        self.seen: dict[str, str] = {}
        self.live = ""

    def __call__(self, result: DeploymentResult) -> None:
        ending = f": {result.message}" if result.message else ""
        self._say(result.id, f"deployment {result.id} {result.state}{ending}")
        for step in result.steps:
            self._say(step.name, f"step {step.name!r}: {step.state}")
            for run in step.runs:
                where = f"[{run.target}] " if run.target else ""
                worker = f" on {run.worker}" if run.worker else ""
                if not self.tty or run.state not in ("Queued", "Running", "Success"):
                    self._say(run.id, f"  {step.name} {where}{run.state}{worker}")
            if self.tty and step.state == "Running":
                self._live(step)
        if self.tty and result.done:
            self._live(None)

    def _live(self, step: StepOutcome | None) -> None:
        text = ""
        if step is not None:
            states = [r.state for r in step.runs]
            text = (f"  {step.name}: {states.count('Success')} done, "
                    f"{states.count('Running')} running, {states.count('Queued')} queued")
        if text != self.live:
            click.echo(f"\r\x1b[K{printable(text)}", err=True, nl=False, color=True)
            self.live = text

    def _say(self, key: str, line: str) -> None:
        if self.seen.get(key) != line:
            self.seen[key] = line
            prefix = "\r\x1b[K" if self.tty and self.live else ""
            click.echo(f"{prefix}workerpool: {printable(line)}", err=True,
                       color=self.tty or None)
            if self.tty and self.live:
                click.echo(printable(self.live), err=True, nl=False)


@cli.command()
@click.argument("process_file", type=click.Path(dir_okay=False))
@click.option("--environment", required=True, help="Environment to deploy to.")
@click.option("--var", "variables", multiple=True, help="NAME=VALUE overriding project variables.")
@click.option("--variables", "variables_file", default=None, type=click.Path(dir_okay=False),
              help="A YAML file of project variables (scoped like the process file's).")
@click.option("--detach", is_flag=True, help="Print the deployment id and return.")
@click.option("--json", "as_json", is_flag=True)
def deploy(process_file: str, environment: str, variables: tuple[str, ...],
           variables_file: str | None, detach: bool, as_json: bool) -> None:
    """Run a deployment process (YAML) against an environment, on the server."""
    process = load_process(Path(process_file),
                           extra_variables_file=Path(variables_file) if variables_file else None)
    extra = dict(map(parse_assignment, variables))
    deployments = client().deployments
    deployment_id = deployments.submit(process, environment, extra)
    if detach:
        echo(deployment_id)
        return
    result = deployments.wait(deployment_id, on_change=None if as_json else Progress())
    if as_json:
        emit_json(result.to_json())
    sys.exit(0 if result.state == "Success" else 1)


@cli.group("deployments")
def deployments_group() -> None:
    """List and show deployments."""


@deployments_group.command("list")
@click.option("--json", "as_json", is_flag=True)
def deployments_list(as_json: bool) -> None:
    found = client().deployments.list()
    if as_json:
        emit_json([d.to_json() for d in found])
        return
    table(["ID", "PROCESS", "ENVIRONMENT", "STATE"],
          [[d.id, d.process, d.environment, d.state] for d in found])


@deployments_group.command("show")
@click.argument("deployment_id")
@click.option("--json", "as_json", is_flag=True)
def deployments_show(deployment_id: str, as_json: bool) -> None:
    result = client().deployments.result(deployment_id)
    if as_json:
        emit_json(result.to_json())
        return
    echo(f"{result.id} {result.process!r} to {result.environment}: {result.state}"
         + (f" ({result.message})" if result.message else ""))
    table(["STEP", "STATE", "RUN", "TARGET", "WORKER", "RUN STATE", "EXIT"],
          [[s.name, s.state, r.id, r.target or "", r.worker or "", r.state, r.exit_code]
           for s in result.steps for r in (s.runs or ())] or [])
