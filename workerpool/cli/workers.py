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
from workerpool.core import keys
from workerpool.core.errors import Infrastructure, UnknownPool
from workerpool.core.overview import Overview, WorkerCounts, pool_view, read_overview
from workerpool.core.pools import Pool, find, ordered, slugify
from workerpool.core.printable import printable
from workerpool.core.settings import Settings
from workerpool.core.snapshot import QueueCounts, Snapshot, status_view
from workerpool.core.targets import Target, TargetRegistry


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
@click.option("--pool", "only", default=None, metavar="NAME",
              help="Only this pool (name or slug; 'builtin' for the built-in worker), with its "
                   "workers one by one.")
@click.option("--json", "as_json", is_flag=True)
@click.option("--watch", is_flag=True,
              help="Show it again every --interval seconds until Ctrl-C: redrawn in place on a "
                   "terminal, elsewhere one view after another, a blank line between.")
@click.option("--interval", default=None, type=Interval(), metavar="S",
              help=f"Seconds between views with --watch (default {DEFAULT_INTERVAL:g}).")
def status(only: str | None, as_json: bool, watch: bool, interval: float | None) -> None:
    """Pools with their workers counted by state, Queued steps (and those without a message,
    purged or lost, which the reaper pushes again), running leases, the built-in worker, and
    deployment targets (shown apart: targets are scarce, pool workers are shared). With
    --pool, one pool and its workers one by one. --json without --pool lists every worker of
    every pool."""
    if watch and as_json:
        raise click.UsageError("--watch is for people; --json prints one view: run it again "
                               "to poll")
    if interval is not None and not watch:
        raise click.UsageError("--interval goes with --watch")
    c = client()
    if watch:
        every = interval or DEFAULT_INTERVAL
        watch_view(lambda: _watched(c, every, only), every)
        return
    if as_json and only is None:
        snap, targets = c.guard(lambda: (c.snapshot(detail=True), TargetRegistry(c.redis).list()))
        emit_json({**status_view(snap), "targets": _target_rows(snap, targets)})
        return
    view = _read(c, only)
    if as_json:
        assert view.only is not None
        emit_json(pool_view(view.pool, view.overview, view.only))
        return
    click.echo("\n".join(status_lines(view, time.time())))


@dataclasses.dataclass(frozen=True)
class StatusView:
    """What ``status`` shows: the counted overview, the targets (none with --pool), and with
    --pool the slug asked for (``builtin`` for the built-in worker) and its pool."""

    overview: Overview
    targets: list[Target]
    only: str | None = None
    pool: Pool | None = None


def _read(c: Client, only: str | None) -> StatusView:
    """Every pool, or *only* the one named: read without reading each worker of every pool."""
    if only is None:
        return c.guard(lambda: StatusView(read_overview(c.redis),
                                          TargetRegistry(c.redis).list()))
    if only == keys.BUILTIN_POOL:
        return StatusView(c.guard(lambda: read_overview(c.redis, keys.BUILTIN_POOL)), [],
                          keys.BUILTIN_POOL)
    overview = c.guard(lambda: read_overview(c.redis, slugify(only)))
    try:
        pool = find(overview.pools, only)
    except UnknownPool:
        c.pools.get(only)  # raises it again, naming every pool (read only on this path)
        raise
    return StatusView(overview, [], pool.slug, pool)


def _target_rows(snap: Snapshot, targets: list[Target]) -> list[dict[str, object]]:
    agents = {w.pool: w for w in snap.workers}
    return [{**t.to_json(), "agent": agents[t.pool_key].state if t.pool_key in agents
             else "none", "running": snap.running_in(t.pool_key)} for t in targets]


def _watched(c: Client, interval: float, only: str | None) -> list[str]:
    """One view of ``status --watch``; Redis unreachable is one line in it, tried again at the
    next view."""
    now = time.time()
    header = [f"workerpool status, every {interval:g}s: {clock(now)} (Ctrl-C stops)", ""]
    try:
        view = _read(c, only)
    except Infrastructure as exc:
        return [*header, f"workerpool: error: {printable(str(exc))}"]
    return [*header, *status_lines(view, now)]


def workers_cell(counts: WorkerCounts) -> str:
    """The WORKERS column: a pool's workers counted by state, e.g. ``2 Healthy, 1 Offline``."""
    return ", ".join(f"{n} {state}" for state, n in counts.by_state()) or "-"


def _agent_state(counts: WorkerCounts) -> str:
    shown = counts.by_state()
    return shown[0][0] if shown else "none"


def status_lines(view: StatusView, now: float) -> list[str]:
    """What ``status`` prints: the pools' table (with --pool, one row and its workers'), then
    the targets' and the leases' if any."""
    ov = view.overview
    rows: list[list[object]] = []
    pools = [view.pool] if view.pool is not None else [] if view.only else ordered(
        ov.pools.values())
    for p in pools:
        section = ov.section(p.slug)
        rows.append([p.name + (" (default)" if p.is_default else "")
                     + (" (paused)" if p.paused else ""),
                     workers_cell(section.workers), queued_cell(section.queued),
                     f"{len(section.leases)}"
                     + (f" (max {p.max_running})" if p.max_running else "")])
    if view.only in (None, keys.BUILTIN_POOL):
        builtin = ov.section(keys.BUILTIN_POOL)
        rows.append(["built-in worker: " + ("enabled" if ov.builtin_enabled else "disabled"),
                     workers_cell(builtin.workers), queued_cell(builtin.queued),
                     len(builtin.leases)])
    lines = table_lines(["POOL", "WORKERS", "QUEUED", "RUNNING"], rows)
    if view.only is not None:
        members = ov.section(view.only).members
        if members:
            lines += ["", *table_lines(
                ["WORKER", "STATE", "CONCURRENCY", "RUNNING", "LAST HEARTBEAT", "REASON"],
                [[w.name, w.state, w.concurrency, w.heartbeat.running if w.heartbeat else 0,
                  ago(w.heartbeat.time if w.heartbeat else None, now),
                  w.heartbeat.reason if w.heartbeat else ""] for w in members])]
    if view.targets:
        lines += ["", *table_lines(
            ["TARGET", "ENVIRONMENT", "ROLES", "AGENT", "RUNNING"],
            [[t.name, t.environment, ", ".join(t.roles),
              _agent_state(ov.section(t.pool_key).workers), len(ov.section(t.pool_key).leases)]
             for t in view.targets])]
    if ov.leases:
        lines += ["", *table_lines(
            ["LEASED STEP", "NAME", "WORKER", "POOL", "SINCE"],
            [[lease.step_id, lease.step_name, lease.worker, lease.pool,
              ago(lease.started_at, now)] for lease in ov.leases])]
    return lines
