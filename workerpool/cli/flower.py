"""``workerpool flower``: Flower on workerpool's Celery app and broker, with the pools page."""

from __future__ import annotations

import signal
import sys

import click

from workerpool.cli import cli
from workerpool.core.connection import ensure_reachable, resolve_url
from workerpool.core.errors import BadInput
from workerpool.core.settings import Settings
from workerpool.server import web

# Flower's default leaves out the arguments, which is where a step's name, pool and target are.
COLUMNS = "name,state,args,worker,received,runtime,uuid"


def _check_basic_auth(ctx: click.Context, param: click.Parameter,
                      value: str | None) -> str | None:
    user, colon, _ = (value or "").partition(":")
    if value is not None and not (user and colon):
        raise click.BadParameter("give USER:PASS, e.g. --basic-auth admin:s3cret")
    return value


def run_flower(url: str, port: int, address: str, basic_auth: str | None,
               public_metrics: bool = False) -> int:
    """Run Flower in this process on the project's Celery app until Ctrl-C or SIGTERM.

    Workers send task events from the start (``make_app``); the tasks Flower shows carry the
    message's label as their arguments, which names the step, pool and target and holds no
    variable value. Flower's app uses kombu's own Redis transport, so its broker URL keeps
    the ``redis://`` or ``rediss://`` scheme by which Flower picks its Broker page's client;
    that page lists every pool's queue (``flowerapp``).
    Flower's ``/metrics`` asks for the same credentials as its pages unless *public_metrics*.
    """
    from workerpool.cli import flowerapp  # Flower loads only here
    from workerpool.worker.celery.app import make_app

    app = make_app(url, transport=None)
    flowerapp.install(url, public_metrics)
    argv = ["flower", f"--port={port}", f"--address={address}", f"--tasks-columns={COLUMNS}"]
    if basic_auth is not None:
        argv.append(f"--basic-auth={basic_auth}")
    try:
        return int(app.start(argv) or 0)
    except OSError as exc:  # the port is taken or the address is not this machine's
        raise BadInput(f"cannot run Flower on {address}:{port} ({exc.strerror}); "
                       "choose another --port or --address") from None


@cli.command()
@click.option("--port", default=5555, show_default=True, type=click.IntRange(1, 65535),
              help="Flower's port.")
@click.option("--pools-port", default=None, type=click.IntRange(1, 65535),
              help="The pools page's port (default: --port + 1).")
@click.option("--address", default="127.0.0.1", show_default=True,
              help="Interface Flower and the pools page listen on (0.0.0.0: all).")
@click.option("--basic-auth", default=None, metavar="USER:PASS", callback=_check_basic_auth,
              help="Require this user and password on Flower (its API and /metrics too) and "
                   "the pools page.")
@click.option("--public-metrics", is_flag=True,
              help="Serve Flower's /metrics without credentials (for a Prometheus that cannot "
                   "send them); every other page still asks.")
def flower(port: int, pools_port: int | None, address: str, basic_auth: str | None,
           public_metrics: bool) -> None:
    """Run Flower on workerpool's Celery app and broker, and the pools page (queue depth of
    every pool, even one without online workers) beside it, until Ctrl-C."""
    url = resolve_url(Settings.from_env())
    ensure_reachable(url)  # Redis unreachable: exit 3 now, not a Flower full of errors
    pools_port = port + 1 if pools_port is None else pools_port
    # Ctrl-C stops both, even when started from a shell that had interrupts ignored.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    with web.serving(url, pools_port, address, basic_auth, flower_port=port):
        click.echo(f"workerpool: Flower on http://{address}:{port}/, pools page on "
                   f"http://{address}:{pools_port}/; Ctrl-C stops both", err=True)
        code = run_flower(url, port, address, basic_auth, public_metrics)
    click.echo("workerpool: stopped", err=True)
    sys.exit(code)
