"""The one Celery app factory, and the entry point that runs a pool worker on it."""

from __future__ import annotations

import logging
import socket
import warnings
from typing import Any

from celery import Celery
from celery.exceptions import SecurityWarning
from celery.signals import worker_ready, worker_shutting_down

from workerpool import keys
from workerpool.agent import Runtime, register
from workerpool.cluster import read_snapshot
from workerpool.connection import connect, guarded, resolve_url
from workerpool.messages import TASK_NAME
from workerpool.pools import find
from workerpool.settings import Settings
from workerpool.targets import TargetRegistry

VISIBILITY_TIMEOUT = 24 * 3600


def make_app(url: str) -> Celery:
    """A Celery app for workerpool's queues: JSON only, late ack, no prefetch, no results."""
    app = Celery("workerpool", broker=url, set_as_current=False)
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        result_backend=None,
        task_ignore_result=True,
        task_acks_late=True,
        task_reject_on_worker_lost=False,
        worker_prefetch_multiplier=1,
        worker_disable_prefetch=True,
        worker_cancel_long_running_tasks_on_connection_loss=False,
        broker_connection_retry_on_startup=True,
        broker_connection_retry=True,
        broker_connection_max_retries=None,
        # Redelivery after this is harmless (the claim refuses a step that is not Queued), but
        # a long timeout keeps Redis from resending messages of steps that are still running.
        broker_transport_options={"visibility_timeout": VISIBILITY_TIMEOUT},
        worker_hijack_root_logger=False,
        worker_redirect_stdouts=False,
        task_create_missing_queues=True,
    )
    return app


def bind(app: Celery, runtime: Runtime) -> None:
    """Register the step task, a thin shell around ``Runtime.execute``."""

    @app.task(name=TASK_NAME, acks_late=True, ignore_result=True)
    def run_step(step_id: str, attempt: int = 0) -> None:
        runtime.execute(step_id, attempt)


def serve(settings: Settings, pool: str | None, name: str | None, concurrency: int,
          loglevel: str = "WARNING", target: str | None = None) -> int:
    """Run a worker for *pool* (``None``: the built-in worker), or a target's agent, until it is
    told to stop."""
    url = resolve_url(settings)
    client = connect(url)
    if target is not None:
        found_target = guarded(lambda: TargetRegistry(client).get(target), url)
        slug, pool_name = found_target.pool_key, f"target {found_target.name}"
        name = name or found_target.slug
    elif pool is None:
        slug, pool_name = keys.BUILTIN_POOL, "built-in worker"
    else:
        found = find(guarded(lambda: read_snapshot(client), url).pools, pool)
        slug, pool_name = found.slug, found.name
    identity = guarded(lambda: register(client, settings, slug, pool_name, name, concurrency), url)
    runtime = Runtime(settings, url, identity)
    app = make_app(url)
    bind(app, runtime)
    logging.basicConfig(level=loglevel, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    def on_ready(**_: Any) -> None:
        runtime.ready = True
        runtime.beat()
        print(f"{identity.name} is consuming {identity.queue} ({pool_name})", flush=True)

    def on_shutting_down(**_: Any) -> None:
        runtime.begin_shutdown()

    worker_ready.connect(on_ready, weak=False)
    worker_shutting_down.connect(on_shutting_down, weak=False)
    # Containers commonly run workers as root; the script runs in its own process group.
    warnings.filterwarnings("ignore", category=SecurityWarning)
    runtime.start_threads()
    worker = app.Worker(hostname=f"{identity.name}@{socket.gethostname()}",
                        queues=[identity.queue], concurrency=concurrency, pool_cls="threads",
                        without_mingle=True, without_gossip=True, loglevel=loglevel,
                        quiet=True, no_color=True)
    try:
        worker.start()
    finally:
        runtime.shutdown()
    return int(worker.exitcode or 0)
