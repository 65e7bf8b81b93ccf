"""``workerpool up``, ``server`` and ``demo``: run a local stack in the foreground."""

from __future__ import annotations

import sys

import click

from workerpool.cli import cli
from workerpool.cli.output import stop_on_signals
from workerpool.console import service
from workerpool.console.accounts import Accounts
from workerpool.core.settings import Settings
from workerpool.server.stack import Stack, parse_pool_counts


def _accounts(settings: Settings, http_port: int | None) -> tuple[Accounts, str | None]:
    """WORKERPOOL_WEB_USERS' accounts, or a one-time admin (its password returned to print)
    when it is not set; read before anything starts, so a bad file stops nothing."""
    if http_port is None:
        return Accounts({}), None
    accounts = service.accounts_from(settings)
    if accounts is not None:
        return accounts, None
    return Accounts.one_time_admin()


def _run_until_signal(stack: Stack, banner: str, http_port: int | None = None,
                      http_host: str = "127.0.0.1") -> None:
    stop = stop_on_signals()
    accounts, password = _accounts(stack.settings, http_port)
    with stack, service.serving(stack.settings, stack.url, http_port, http_host,
                                accounts) as console:
        if console is not None:
            banner += f"; console on {console.url}"
            if password is not None:
                click.echo(f"workerpool: console login: admin / {password} (this run only; "
                           "set WORKERPOOL_WEB_USERS for lasting accounts, see docs/console.md)",
                           err=True)
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
@click.option("--http-port", default=0, type=click.IntRange(0, 65535), show_default=True,
              help="Serve the console on this port (0: any free port, shown at start).")
@click.option("--http-host", default="127.0.0.1", show_default=True,
              help="Interface the console listens on (0.0.0.0: all).")
@click.option("--no-console", is_flag=True, help="Do not serve the console.")
def up(pool_spec: str, no_builtin: bool, loglevel: str, cap: int, http_port: int,
       http_host: str, no_console: bool) -> None:
    """Run Redis (embedded unless WORKERPOOL_REDIS_URL is set), the built-in worker and pool
    workers until Ctrl-C."""
    settings = Settings.from_env()
    stack = Stack(settings, pools=parse_pool_counts(pool_spec), builtin=not no_builtin,
                  loglevel=loglevel.upper(), orchestrate=True, deployment_cap=cap)
    where = (settings.redis_url and "WORKERPOOL_REDIS_URL") or f"embedded Redis ({settings.home})"
    _run_until_signal(stack, f"workerpool: up on {where}; Ctrl-C stops everything",
                      None if no_console else http_port, http_host)


@cli.command()
@click.option("--loglevel", default="WARNING", show_default=True)
@click.option("--cap", default=5, type=click.IntRange(1, 100), show_default=True,
              help="Deployments run at once.")
@click.option("--http-port", default=None, type=click.IntRange(1, 65535),
              help="Also serve the console (and /metrics) on this port.")
@click.option("--http-host", default="127.0.0.1", show_default=True,
              help="Interface the console listens on (0.0.0.0: all).")
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
