"""``workerpool run``, ``logs`` and ``cancel``."""

from __future__ import annotations

import functools
import json
import sys
import time
from pathlib import Path

import click

from workerpool.cli import cli
from workerpool.cli.output import client, echo, emit_json, table
from workerpool.cli.templates import template_step
from workerpool.client import Client
from workerpool.core import keys
from workerpool.core.artifacts import list_artifacts, read_artifact
from workerpool.core.errors import BadInput
from workerpool.core.packageref import PackageRef
from workerpool.core.steps import (
    LOCATION_SERVER,
    LOCATION_WORKER,
    MAX_SCRIPT_BYTES,
    TERMINAL,
    LogEntry,
    ScriptStep,
    StepResult,
)
from workerpool.core.steps import parse_assignment as assignment
from workerpool.core.syntaxes import SYNTAXES, syntax_for_path


def print_entry(entry: LogEntry, raw: bool = False) -> None:
    """One log line: stdout to stdout, the rest to stderr; control characters visible unless
    *raw* (the stored log keeps the bytes as written)."""
    if entry.stream == "stdout":
        echo(entry.text, raw=raw)
    elif entry.stream == "stderr":
        echo(entry.text, err=True, raw=raw)
    else:
        echo(f"workerpool: {entry.text}", err=True)


RAW = click.option("--raw", is_flag=True, help="Print the script's output as it wrote it, "
                   "terminal escapes included (by default control characters are shown as "
                   "\\x1b, \\r, ...).")


def read_script(script: str | None, script_file: str | None, syntax: str | None,
                packages: tuple[PackageRef, ...] = ()) -> tuple[str, str, str | None]:
    """(script text, syntax, path inside a package); a --script-file whose first part names an
    extracted package is read on the worker, after extraction."""
    if (script is None) == (script_file is None):
        raise BadInput("give exactly one of --script TEXT or --script-file FILE")
    if script_file is not None and not Path(script_file).exists() and \
            script_file.split("/")[0] in {ref.name for ref in packages if ref.extract}:
        return "", syntax or syntax_for_path(script_file).name, script_file
    if script_file is not None:
        path = Path(script_file)
        try:
            with path.open("rb") as fh:  # never more than the limit, even from /dev/zero
                data = fh.read(MAX_SCRIPT_BYTES + 1)
            if len(data) > MAX_SCRIPT_BYTES:
                raise BadInput(f"--script-file {script_file!r} is over the {MAX_SCRIPT_BYTES}-"
                               "byte limit for a script; put large content in a package "
                               "instead")
            script = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise BadInput(f"--script-file {script_file!r} is not UTF-8 text (byte "
                           f"0x{exc.object[exc.start]:02x} at offset {exc.start}); save it as "
                           "UTF-8, or ship binary files in a package") from None
        except OSError as exc:
            raise BadInput(f"cannot read --script-file {script_file!r}: "
                           f"{exc.strerror or exc}") from None
        syntax = syntax or syntax_for_path(script_file).name
    assert script is not None
    return script, syntax or "bash", None


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
@click.option("--template", default=None, metavar="NAME",
              help="Run a step template (see `workerpool template list`).")
@click.option("--param", "params", multiple=True, metavar="NAME=VALUE",
              help="A template parameter (repeatable).")
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
@click.option("--package", "packages", multiple=True, metavar="REF",
              help='"name=db,id=Acme.Database,version=1.2.0,feed=builtin,extract=true" '
                   "(repeatable).")
@click.option("--substitute", multiple=True, metavar="GLOB",
              help="Replace #{...} in files matching GLOB (repeatable).")
@click.option("--structured", multiple=True, metavar="GLOB",
              help="Structured variable replacement in JSON/YAML files matching GLOB.")
@click.option("--priority", default=keys.NORMAL, metavar="high|normal|low",
              help="A free worker of the pool takes the oldest step of the highest priority "
                   "first (default normal).")
@click.option("--no-wait", is_flag=True, help="Print the step id and return at once.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as one JSON object.")
@RAW
def run(pool: str | None, server: bool, script: str | None, script_file: str | None,
        template: str | None, params: tuple[str, ...],
        syntax: str | None, name: str, variables: tuple[str, ...], secrets: tuple[str, ...],
        timeout: float | None, lease_timeout: float | None, retry_on_worker_lost: bool,
        packages: tuple[str, ...], substitute: tuple[str, ...], structured: tuple[str, ...],
        priority: str, no_wait: bool, as_json: bool, raw: bool) -> None:
    """Run a script step on a worker pool and wait for it."""
    refs = tuple(PackageRef.parse(text) for text in packages)
    plain, sensitive = dict(map(assignment, variables)), dict(map(assignment, secrets))
    if template is not None or params:
        given = template_step(template, params, refs, (script, script_file) != (None, None))
        text, chosen_syntax, script_path = given.script, syntax or given.syntax, None
        name, refs = name or given.name, given.packages
        plain, sensitive = {**given.variables, **plain}, {**given.sensitive_variables, **sensitive}
    else:
        text, chosen_syntax, script_path = read_script(script, script_file, syntax, refs)
    step = ScriptStep(
        script=text, syntax=chosen_syntax, pool=pool, name=name, packages=refs,
        script_path=script_path, substitute=substitute, structured=structured,
        location=LOCATION_SERVER if server else LOCATION_WORKER,
        variables=plain, sensitive_variables=sensitive, timeout=timeout,
        lease_timeout=lease_timeout, retry_on_worker_lost=retry_on_worker_lost,
        priority=priority)
    c = client()
    handle = c.run(step)
    if no_wait:
        echo(handle.id)
        return
    if not as_json:
        echo(f"workerpool: step {handle.id} queued", err=True)
    try:
        result = handle.wait(on_log=None if as_json else functools.partial(print_entry, raw=raw))
    except KeyboardInterrupt:
        echo(f"\nworkerpool: step {handle.id} keeps going; follow it with "
             f"`workerpool logs {handle.id} --follow` or stop it with "
             f"`workerpool cancel {handle.id}`", err=True)
        sys.exit(130)
    if as_json:
        emit_json(result.to_json())
    else:
        echo(f"workerpool: {summary(result)}", err=True)
    sys.exit(0 if result.succeeded else 1)


@cli.command()
@click.argument("step_id")
@click.option("--follow", "-f", is_flag=True, help="Keep printing until the step ends.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@RAW
def logs(step_id: str, follow: bool, as_json: bool, raw: bool) -> None:
    """Print a step's log, or every run's log of a deployment."""
    c = client()
    if c.guard(lambda: c.redis.exists(keys.deployment(step_id))):
        _deployment_logs(c, step_id, follow, as_json, raw)
        return
    handle = c.step(step_id)
    entries = handle.follow() if follow else iter(handle.logs())
    for entry in entries:
        if as_json:
            click.echo(json.dumps(entry.to_json()))  # exact: json.dumps escapes controls
        else:
            print_entry(entry, raw)


def _deployment_logs(c: Client, deployment_id: str, follow: bool, as_json: bool,
                     raw: bool) -> None:
    """Each run's log in step order, headed by step and target; with --follow, until the end."""
    deployments = c.deployments
    shown: set[str] = set()
    while True:
        result = deployments.result(deployment_id)
        for step in result.steps:
            for run in step.runs:
                if run.id in shown or (follow and run.state not in TERMINAL):
                    continue
                shown.add(run.id)
                where = f" [{run.target}]" if run.target else ""
                echo(f"== {step.name}{where}: {run.state} on {run.worker or '-'} ({run.id})",
                     err=True)
                for entry in c.step(run.id).logs():
                    click.echo(json.dumps(entry.to_json())) if as_json else print_entry(entry, raw)
        if not follow or result.done:
            return
        time.sleep(0.5)


@cli.command()
@click.argument("step_id")
@click.option("--get", "name", default=None, help="Write this artifact out.")
@click.option("--output", "-o", default=None, help="Where to write it (default: its name).")
@click.option("--json", "as_json", is_flag=True)
def artifacts(step_id: str, name: str | None, output: str | None, as_json: bool) -> None:
    """List a step's artifacts, or write one out with --get NAME."""
    c = client()
    c.step(step_id)
    if name is None:
        found = list_artifacts(c.redis, step_id)
        if as_json:
            emit_json([a.to_json() for a in found])
        else:
            table(["NAME", "PATH", "BYTES", "SHA256"],
                  [[a.name, a.path, a.size, a.sha256[:16]] for a in found])
        return
    data = read_artifact(c.url, step_id, name)
    if data is None:
        raise BadInput(f"step {step_id} has no artifact named {name!r}; list them with "
                       f"`workerpool artifacts {step_id}`")
    target = Path(output or Path(name).name)
    target.write_bytes(data)
    echo(f"wrote {len(data)} bytes to {target}")


@cli.command()
@click.argument("step_id")
def cancel(step_id: str) -> None:
    """Cancel a queued or running step (its whole process group is killed)."""
    before = client().step(step_id).cancel()
    if before in ("Queued", "Running"):
        echo(f"cancel requested for step {step_id} (it was {before})")
    else:
        echo(f"step {step_id} already ended ({before}); nothing to cancel")
