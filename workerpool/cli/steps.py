"""``workerpool run``, ``logs`` and ``cancel``."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from workerpool.cli import cli
from workerpool.cli.output import client, emit_json
from workerpool.errors import BadInput
from workerpool.steps import LOCATION_SERVER, LOCATION_WORKER, LogEntry, ScriptStep, StepResult
from workerpool.steps import parse_assignment as assignment
from workerpool.syntaxes import SYNTAXES

EXTENSIONS = {".sh": "bash", ".bash": "bash", ".py": "python", ".ps1": "powershell"}


def print_entry(entry: LogEntry) -> None:
    if entry.stream == "stdout":
        click.echo(entry.text)
    elif entry.stream == "stderr":
        click.echo(entry.text, err=True)
    else:
        click.echo(f"workerpool: {entry.text}", err=True)


def read_script(script: str | None, script_file: str | None,
                syntax: str | None) -> tuple[str, str]:
    if (script is None) == (script_file is None):
        raise BadInput("give exactly one of --script TEXT or --script-file FILE")
    if script_file is not None:
        path = Path(script_file)
        try:
            script = path.read_text()
        except (OSError, UnicodeDecodeError) as exc:
            raise BadInput(f"cannot read --script-file {script_file!r}: {exc}") from None
        syntax = syntax or EXTENSIONS.get(path.suffix, "bash")
    assert script is not None
    return script, syntax or "bash"


def summary(result: StepResult) -> str:
    where = f"on {result.worker}" if result.worker else "before any worker took it"
    code = "" if result.exit_code is None else f", exit code {result.exit_code}"
    return f"step {result.id} {result.state} {where} (pool {result.pool}){code}"


@cli.command()
@click.option("--pool", default=None, help="Pool to run on (name or slug); default pool if "
              "omitted.")
@click.option("--server", is_flag=True, help="Run on the built-in worker.")
@click.option("--script", default=None, help="Script text.")
@click.option("--script-file", default=None, help="Read the script from this file.")
@click.option("--syntax", type=click.Choice(list(SYNTAXES)), default=None,
              help="Script language (default bash, or from the file extension).")
@click.option("--name", default="", help="A name for the step (shown in logs and Flower).")
@click.option("--var", "variables", multiple=True, help="NAME=VALUE (repeatable).")
@click.option("--sensitive-var", "secrets", multiple=True,
              help="NAME=VALUE whose value is masked everywhere (repeatable).")
@click.option("--timeout", type=float, default=None, help="Seconds the script may run.")
@click.option("--lease-timeout", type=float, default=None,
              help="Seconds the step may wait for a worker.")
@click.option("--retry-on-worker-lost", is_flag=True,
              help="Run the step once more if its worker dies mid-step.")
@click.option("--no-wait", is_flag=True, help="Print the step id and return at once.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as one JSON object.")
def run(pool: str | None, server: bool, script: str | None, script_file: str | None,
        syntax: str | None, name: str, variables: tuple[str, ...], secrets: tuple[str, ...],
        timeout: float | None, lease_timeout: float | None, retry_on_worker_lost: bool,
        no_wait: bool, as_json: bool) -> None:
    """Run a script step on a worker pool and wait for it."""
    text, chosen_syntax = read_script(script, script_file, syntax)
    step = ScriptStep(
        script=text, syntax=chosen_syntax, pool=pool, name=name,
        location=LOCATION_SERVER if server else LOCATION_WORKER,
        variables=dict(map(assignment, variables)),
        sensitive_variables=dict(map(assignment, secrets)), timeout=timeout,
        lease_timeout=lease_timeout, retry_on_worker_lost=retry_on_worker_lost).validate()
    c = client()
    handle = c.run(step)
    if no_wait:
        click.echo(handle.id)
        return
    if not as_json:
        click.echo(f"workerpool: step {handle.id} queued", err=True)
    try:
        result = handle.wait(on_log=None if as_json else print_entry)
    except KeyboardInterrupt:
        click.echo(f"\nworkerpool: step {handle.id} keeps going; follow it with "
                   f"`workerpool logs {handle.id} --follow` or stop it with "
                   f"`workerpool cancel {handle.id}`", err=True)
        sys.exit(130)
    if as_json:
        emit_json(result.to_json())
    else:
        click.echo(f"workerpool: {summary(result)}", err=True)
    sys.exit(0 if result.succeeded else 1)


@cli.command()
@click.argument("step_id")
@click.option("--follow", "-f", is_flag=True, help="Keep printing until the step ends.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
def logs(step_id: str, follow: bool, as_json: bool) -> None:
    """Print a step's log."""
    handle = client().step(step_id)
    entries = handle.follow() if follow else iter(handle.logs())
    for entry in entries:
        if as_json:
            click.echo(json.dumps(entry.to_json()))
        else:
            print_entry(entry)


@cli.command()
@click.argument("step_id")
def cancel(step_id: str) -> None:
    """Cancel a queued or running step (its whole process group is killed)."""
    before = client().step(step_id).cancel()
    if before in ("Queued", "Running"):
        click.echo(f"cancel requested for step {step_id} (it was {before})")
    else:
        click.echo(f"step {step_id} already ended ({before}); nothing to cancel")
