"""``workerpool metrics``: the pools' Prometheus series at ``/metrics``, with no server."""

from __future__ import annotations

import click

from workerpool.cli import cli
from workerpool.cli.output import stop_on_signals
from workerpool.core.connection import ensure_reachable, resolve_url
from workerpool.core.settings import Settings
from workerpool.server import web


@cli.command()
@click.option("--port", required=True, type=click.IntRange(1, 65535),
              help="Serve /metrics on this port.")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Interface to listen on (0.0.0.0: all).")
def metrics(port: int, host: str) -> None:
    """Serve every pool's Prometheus series at /metrics until Ctrl-C, read from Redis at each
    scrape (for a Prometheus next to workers when no `workerpool server` runs)."""
    url = resolve_url(Settings.from_env())
    ensure_reachable(url)  # one line now, not a 503 per scrape
    stop = stop_on_signals()
    with web.serving(url, port, host, paths=web.METRICS_ONLY) as page:
        assert page is not None
        click.echo(f"workerpool: metrics on http://{host}:{page.port}/metrics; Ctrl-C stops "
                   "it", err=True)
        while not stop.wait(1.0):  # woken at once by the signal; the timeout is a fallback
            pass
    click.echo("workerpool: stopped", err=True)
