"""``serve``: run a pool worker, the built-in worker or a target's agent on the Celery app."""

from __future__ import annotations

import gc
import logging
import socket
import warnings
from typing import Any

from celery.exceptions import SecurityWarning
from celery.platforms import EX_OK
from celery.signals import worker_ready, worker_shutting_down
from celery.worker import state as worker_state

from workerpool.core import keys
from workerpool.core.connection import connect, guarded, resolve_url
from workerpool.core.pools import PoolRegistry, find
from workerpool.core.sealing import Keyring
from workerpool.core.settings import Settings
from workerpool.core.syntaxes import PYTHON, available_syntaxes
from workerpool.core.targets import TargetRegistry
from workerpool.core.workers import validate_worker_name
from workerpool.worker.celery import control, internals
from workerpool.worker.celery.app import bind, worker_app
from workerpool.worker.celery.consumer import batch_events, queue_gate
from workerpool.worker.identity import register
from workerpool.worker.isolation.containment import require_pids_cgroup
from workerpool.worker.isolation.users import isolate, python_for_scripts
from workerpool.worker.runtime import Runtime

log = logging.getLogger("workerpool.worker")

RESTART_DELAY = 1.0  # seconds before a worker whose Celery side failed consumes again


def _warm_stop() -> None:
    """Ask Celery for the warm stop its SIGTERM handler asks for (exit 0): its event loop
    raises WorkerShutdown at its next turn."""
    worker_state.should_stop = EX_OK  # type: ignore[assignment]  # None in its stubs


def _slots(settings: Settings, concurrency: int) -> int:
    """The steps the worker runs at once: 1 for an exclusive worker, whatever was asked (its
    registration, status and free slots then say 1 too)."""
    if not settings.exclusive:
        return concurrency
    asked = f" (--concurrency {concurrency} asked; it runs 1)" if concurrency > 1 else ""
    print(f"exclusive: one step at a time, and the pool's cleanup script after each{asked}",
          flush=True)
    return 1


def serve(settings: Settings, pool: str | None, name: str | None, concurrency: int,
          loglevel: str = "WARNING", target: str | None = None) -> int:
    """Run a worker for *pool* (``None``: the built-in worker), or a target's agent, until it is
    told to stop. Everything that can be refused is checked before anything registers."""
    if name is not None:
        validate_worker_name(name)
    internals.check()
    require_pids_cgroup(settings.step_max_processes)
    keyring = Keyring.for_worker(settings)
    keyring.check()
    concurrency = _slots(settings, concurrency)
    users = isolate(settings.script_user, concurrency, settings.script_uids,
                    settings.step_max_processes)
    print(users.describe(), flush=True)
    url = resolve_url(settings)
    client = connect(url, settings)
    if target is not None:
        found_target = guarded(lambda: TargetRegistry(client).get(target), url)
        slug, pool_name = found_target.pool_key, f"target {found_target.name}"
        name = name or found_target.slug
    elif pool is None:
        slug, pool_name = keys.BUILTIN_POOL, "built-in worker"
    else:
        found = find(guarded(lambda: PoolRegistry(client).read(), url), pool)
        slug, pool_name = found.slug, found.name
        if found.cleanup_script and not settings.exclusive:
            print(f"pool {found.name!r} has a cleanup script; this worker runs steps side by "
                  "side, so it does not run it (worker start --exclusive does)", flush=True)
    for warning in keyring.warnings(slug):
        print(warning, flush=True)
    PYTHON.interpreter = python_for_scripts(users)
    syntaxes = available_syntaxes()
    identity = guarded(lambda: register(client, settings, slug, name, concurrency, syntaxes),
                       url)
    runtime = Runtime(settings, url, identity, users)
    runtime.request_stop = _warm_stop
    guarded(runtime.read_paused, url)  # a paused pool's worker starts by taking nothing
    app = worker_app(url, settings, identity.pool, identity.name)
    if not guarded(lambda: control.listens(client), url):
        app.conf.worker_enable_remote_control = False
        reissue = (f"workerpool target credentials {target!r}" if target is not None else
                   "workerpool builtin-worker credentials" if pool is None else
                   f"workerpool pool credentials {pool_name!r}")
        print(f"this worker's Redis login may not listen for Celery control commands (issued "
              f"by an earlier version): Flower's revoke and `celery control` do not reach it; "
              f"`{reissue}` issues one that may", flush=True)
    batch_events(app)
    bind(app, runtime)
    app.steps["consumer"].add(queue_gate(runtime))
    logging.basicConfig(level=loglevel, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    def on_ready(**_: Any) -> None:
        # Everything made so far (Celery, kombu and workerpool, some 50,000 objects) lives as
        # long as the worker: out of the collector's sight, a full collection no longer takes
        # ~12 ms, a pause that would land on some step every few hundred.
        gc.freeze()
        runtime.ready = True
        runtime.beat()
        status = runtime.health
        if status.healthy:
            print(f"{identity.name} is consuming {identity.queue} ({pool_name})", flush=True)
        else:
            print(f"{identity.name} is Unhealthy ({status.reason}); it consumes {identity.queue} "
                  f"({pool_name}) once its health check passes", flush=True)

    stop_requested: list[bool] = []

    def on_shutting_down(**_: Any) -> None:
        stop_requested.append(True)
        runtime.begin_shutdown()

    worker_ready.connect(on_ready, weak=False)
    worker_shutting_down.connect(on_shutting_down, weak=False)
    # Containers commonly run workers as root; the script runs in its own process group.
    warnings.filterwarnings("ignore", category=SecurityWarning)
    try:
        runtime.start_threads()  # heartbeats go on while the first health check runs
        guarded(runtime.check_health, url)  # before the queue gate's first look
        while True:
            worker = app.Worker(hostname=f"{identity.name}@{socket.gethostname()}",
                                queues=[identity.queue], concurrency=concurrency,
                                pool_cls="threads", without_mingle=True, without_gossip=True,
                                loglevel=loglevel, quiet=True, no_color=True)
            worker.start()
            if stop_requested or not worker.exitcode:
                break
            # Celery gives up on some broker failures (a reconnect racing kombu's restore of
            # unacknowledged messages raises inside kombu); the registration, heartbeats and
            # running steps are ours and go on, so start consuming again.
            log.error("the Celery worker stopped unexpectedly (exit code %s); starting it again",
                      worker.exitcode)
            runtime.stopping.wait(RESTART_DELAY)
    finally:
        runtime.shutdown()
    return int(worker.exitcode or 0)
