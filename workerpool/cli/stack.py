"""``workerpool up``, ``server`` and ``demo``: run a local stack in the foreground."""

from __future__ import annotations

import sys

import click

from workerpool.cli import cli
from workerpool.cli.output import stop_on_signals
from workerpool.core.settings import Settings
from workerpool.server import web
from workerpool.server.stack import Stack, parse_pool_counts


def _run_until_signal(stack: Stack, banner: str, http_port: int | None = None,
                      http_host: str = "127.0.0.1") -> None:
    stop = stop_on_signals()
    with stack, web.serving(stack.url, http_port, http_host) as page:
        if page is not None:
            banner += f"; pools page on http://{http_host}:{page.port}/"
        click.echo(banner, err=True)
        stack.supervise(stop)
        click.echo("workerpool: stopping workers...", err=True)
    click.echo("workerpool: stopped", err=True)


@cli.command()
@click.option("--pools", "pool_spec", default="",
              help='Pools and worker counts, e.g. "Database Worker Pool=2,Kubernetes Worker '
                   'Pool=1". Missing pools are created.')
@click.option("--no-builtin", is_flag=True, help="Do not start the built-in worker.")
@click.option("--loglevel", default="WARNING", show_default=True)
@click.option("--cap", default=5, type=click.IntRange(1, 100), show_default=True,
              help="Deployments run at once.")
def up(pool_spec: str, no_builtin: bool, loglevel: str, cap: int) -> None:
    """Run Redis (embedded unless WORKERPOOL_REDIS_URL is set), the built-in worker and pool
    workers until Ctrl-C."""
    settings = Settings.from_env()
    stack = Stack(settings, pools=parse_pool_counts(pool_spec), builtin=not no_builtin,
                  loglevel=loglevel.upper(), orchestrate=True, deployment_cap=cap)
    where = (settings.redis_url and "WORKERPOOL_REDIS_URL") or f"embedded Redis ({settings.home})"
    _run_until_signal(stack, f"workerpool: up on {where}; Ctrl-C stops everything")


@cli.command()
@click.option("--loglevel", default="WARNING", show_default=True)
@click.option("--cap", default=5, type=click.IntRange(1, 100), show_default=True,
              help="Deployments run at once.")
@click.option("--http-port", default=None, type=click.IntRange(1, 65535),
              help="Also serve the read-only pools page on this port.")
@click.option("--http-host", default="127.0.0.1", show_default=True,
              help="Interface the pools page listens on (0.0.0.0: all).")
def server(loglevel: str, cap: int, http_port: int | None, http_host: str) -> None:
    """Run the server: the deployment orchestrator, the built-in worker, and the reaper of lost
    or overdue steps. The orchestrator runs no script itself."""
    settings = Settings.from_env()
    stack = Stack(settings, pools={}, builtin=True, loglevel=loglevel.upper(),
                  orchestrate=True, deployment_cap=cap)
    _run_until_signal(stack, "workerpool: server running; Ctrl-C stops it", http_port, http_host)


@cli.command()
def demo() -> None:
    """Run the seed's scenario on a throwaway embedded stack and show what ran where."""
    from workerpool.cli.demo import run_demo

    sys.exit(run_demo())


@cli.command("secret-key")
def secret_key() -> None:
    """Print a new master key for WORKERPOOL_SECRET_KEY: the admin's.

    Every pool's sealing key is derived from it. Give it to the server and to the admins who
    run `pool credentials`; never to a worker, which gets only its pool's key
    (WORKERPOOL_POOL_KEY). To rotate, set "NEW,OLD": the first makes new key generations, any
    remakes old ones.
    """
    from workerpool.core.sealing import new_key

    click.echo(new_key())
