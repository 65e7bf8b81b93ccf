"""``workerpool worker ...`` and ``workerpool status``."""

from __future__ import annotations

import dataclasses
import sys
import time

import click

from workerpool.cli import cli
from workerpool.cli.output import ago, client, clock, emit_json, table, table_lines
from workerpool.cli.watch import DEFAULT_INTERVAL, Interval
from workerpool.cli.watch import watch as watch_view
from workerpool.client import Client
from workerpool.core.errors import Infrastructure
from workerpool.core.pools import ordered
from workerpool.core.printable import printable
from workerpool.core.settings import Settings
from workerpool.core.snapshot import QueueCounts, Snapshot, status_view
from workerpool.core.targets import Target, TargetRegistry
from workerpool.core.workers import WorkerInfo


@cli.group()
def worker() -> None:
    """Start a pool worker or list workers."""


@worker.command("start")
@click.option("--pool", default=None, help="Pool to consume (name or slug).")
@click.option("--builtin", is_flag=True, help="Run the built-in worker instead.")
@click.option("--name", default=None, help="Worker name (default <type>-worker-NN).")
@click.option("--concurrency", default=1, type=click.IntRange(1, 256), show_default=True,
              help="Steps this worker runs at once.")
@click.option("--loglevel", default="WARNING", show_default=True,
              type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False))
@click.option("--script-user", default=None, metavar="USER",
              help="Who scripts run as: a user name, or 'same' for this worker's own user "
                   "(default: users of their own per slot when the worker runs as root; "
                   "WORKERPOOL_SCRIPT_USER).")
@click.option("--max-steps", default=None, type=click.IntRange(0), metavar="N",
              help="Drain and exit 0 after taking N steps (an ephemeral worker); 0: never "
                   "(WORKERPOOL_MAX_STEPS).")
@click.option("--exclusive", is_flag=True,
              help="Run one step at a time whatever --concurrency says, and the pool's cleanup "
                   "script after each (WORKERPOOL_EXCLUSIVE=1).")
def worker_start(pool: str | None, builtin: bool, name: str | None, concurrency: int,
                 loglevel: str, script_user: str | None, max_steps: int | None,
                 exclusive: bool) -> None:
    """Run a worker that consumes exactly one pool's queue."""
    if builtin == (pool is not None):
        raise click.UsageError("give exactly one of --pool NAME or --builtin")
    from workerpool.worker.celery.serve import serve  # worker-side code loads only here

    settings = with_script_user(Settings.from_env(), script_user)
    if max_steps is not None:
        settings = dataclasses.replace(settings, max_steps=max_steps)
    if exclusive:
        settings = dataclasses.replace(settings, exclusive=True)
    sys.exit(serve(settings, None if builtin else pool, name, concurrency, loglevel.upper()))


@worker.command("drain")
@click.argument("name")
@click.option("--timeout", default=None, type=click.FloatRange(0, min_open=True), metavar="S",
              help="Wait at most S seconds for the worker to finish (exit 1 if it has not); "
                   "default: until it has.")
def worker_drain(name: str, timeout: float | None) -> None:
    """Drain a worker: it takes no new step, finishes what it runs, deregisters and exits 0.
    Waits until it has."""
    c = client()
    found = c.guard(lambda: c.workers.drain(name))
    click.echo(f"{found.name} is draining: {found.heartbeat.running if found.heartbeat else 0} "
               "running step(s) finish first", err=True)
    c.guard(lambda: c.workers.wait_gone(found, timeout))
    click.echo(f"{found.name} drained and stopped", err=True)


def with_script_user(settings: Settings, script_user: str | None) -> Settings:
    """*settings* with ``--script-user`` over ``WORKERPOOL_SCRIPT_USER``."""
    return settings if script_user is None else dataclasses.replace(settings,
                                                                    script_user=script_user)


def _shown(w: WorkerInfo) -> str:
    reason = w.heartbeat.reason if w.heartbeat and w.state == "Unhealthy" else ""
    return f"{w.name} {w.state}" + (f" ({reason})" if reason else "")


def queued_cell(counts: QueueCounts) -> str:
    """The QUEUED column: Queued steps, and how many of them have no message to run them."""
    missing = counts.without_message
    return f"{counts.records} ({missing} without a message)" if missing else str(counts.records)


@worker.command("list")
@click.option("--pool", default=None, help="Only this pool's workers ('builtin' for built-in).")
@click.option("--json", "as_json", is_flag=True)
def worker_list(pool: str | None, as_json: bool) -> None:
    """Registered workers: pool, state, concurrency, running steps, last heartbeat, and why a
    worker is Unhealthy."""
    workers = client().workers.list(pool)
    if as_json:
        emit_json([w.to_json() for w in workers])
        return
    now = time.time()
    table(["NAME", "POOL", "STATE", "CONCURRENCY", "RUNNING", "LAST HEARTBEAT", "HOST", "REASON"],
          [[w.name, w.pool, w.state, w.concurrency, w.heartbeat.running if w.heartbeat else 0,
            ago(w.heartbeat.time if w.heartbeat else None, now), w.host,
            w.heartbeat.reason if w.heartbeat else ""] for w in workers])


@cli.command()
@click.option("--json", "as_json", is_flag=True)
@click.option("--watch", is_flag=True,
              help="Show it again every --interval seconds until Ctrl-C: redrawn in place on a "
                   "terminal, elsewhere one view after another, a blank line between.")
@click.option("--interval", default=None, type=Interval(), metavar="S",
              help=f"Seconds between views with --watch (default {DEFAULT_INTERVAL:g}).")
def status(as_json: bool, watch: bool, interval: float | None) -> None:
    """Pools with their workers, Queued steps (and those without a message, purged or lost,
    which the reaper pushes again), running leases, the built-in worker, and deployment targets
    (shown apart: targets are scarce, pool workers are shared)."""
    if watch and as_json:
        raise click.UsageError("--watch is for people; --json prints one view: run it again "
                               "to poll")
    if interval is not None and not watch:
        raise click.UsageError("--interval goes with --watch")
    c = client()
    if watch:
        every = interval or DEFAULT_INTERVAL
        watch_view(lambda: _watched(c, every), every)
        return
    snap, targets = _read(c)
    target_rows = _target_rows(snap, targets)
    if as_json:
        emit_json({**status_view(snap), "targets": target_rows})
        return
    for line in status_lines(snap, targets, target_rows, time.time()):
        click.echo(line)


def _read(c: Client) -> tuple[Snapshot, list[Target]]:
    return c.guard(lambda: (c.snapshot(detail=True), TargetRegistry(c.redis).list()))


def _target_rows(snap: Snapshot, targets: list[Target]) -> list[dict[str, object]]:
    agents = {w.pool: w for w in snap.workers}
    return [{**t.to_json(), "agent": agents[t.pool_key].state if t.pool_key in agents
             else "none", "running": snap.running_in(t.pool_key)} for t in targets]


def _watched(c: Client, interval: float) -> list[str]:
    """One view of ``status --watch``; Redis unreachable is one line in it, tried again at the
    next view."""
    now = time.time()
    header = [f"workerpool status, every {interval:g}s: {clock(now)} (Ctrl-C stops)", ""]
    try:
        snap, targets = _read(c)
    except Infrastructure as exc:
        return [*header, f"workerpool: error: {printable(str(exc))}"]
    return [*header, *status_lines(snap, targets, _target_rows(snap, targets), now)]


def status_lines(snap: Snapshot, targets: list[Target], target_rows: list[dict[str, object]],
                 now: float) -> list[str]:
    """What ``status`` prints: the pools' table, then the targets' and the leases' if any."""
    rows: list[list[object]] = []
    for p in ordered(snap.pools.values()):
        members = snap.workers_in(p.slug)
        rows.append([p.name + (" (default)" if p.is_default else "")
                     + (" (paused)" if p.paused else ""),
                     ", ".join(_shown(w) for w in members) or "-",
                     queued_cell(snap.counts(p.slug)),
                     f"{snap.running_in(p.slug)}"
                     + (f" (max {p.max_running})" if p.max_running else "")])
    builtin = snap.workers_in("builtin")
    rows.append(["built-in worker: " + ("enabled" if snap.builtin_enabled else "disabled"),
                 ", ".join(f"{w.name} {w.state}" for w in builtin) or "-",
                 queued_cell(snap.counts("builtin")), snap.running_in("builtin")])
    lines = table_lines(["POOL", "WORKERS", "QUEUED", "RUNNING"], rows)
    if target_rows:
        lines += ["", *table_lines(
            ["TARGET", "ENVIRONMENT", "ROLES", "AGENT", "RUNNING"],
            [[t.name, t.environment, ", ".join(t.roles), row["agent"], row["running"]]
             for t, row in zip(targets, target_rows, strict=True)])]
    if snap.leases:
        lines += ["", *table_lines(
            ["LEASED STEP", "NAME", "WORKER", "POOL", "SINCE"],
            [[lease.step_id, lease.step_name, lease.worker, lease.pool,
              ago(lease.started_at, now)] for lease in snap.leases])]
    return lines
