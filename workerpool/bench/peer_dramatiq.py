"""Figure 9's Dramatiq peer: a Redis broker with the Results middleware and its Redis backend.

The bench runs ``python -m dramatiq workerpool.bench.peer_dramatiq:serve --processes 2
--threads 2``: Dramatiq's own CLI forks two worker processes, each of which calls :func:`serve`
to set up the broker (its URL in ``WORKERPOOL_REDIS_URL``, as the harness gives every child);
each adds its pid to :data:`READY_KEY` once its worker threads run. The bench's caller builds
the same broker with :func:`connect` to send the actor and wait for its result. Every key is
under Dramatiq's namespace for the bench, apart from workerpool's, Celery's and RQ's.
"""

from __future__ import annotations

import os
import subprocess
from typing import Any

import dramatiq
import redis
from dramatiq.brokers.redis import RedisBroker
from dramatiq.middleware import Middleware
from dramatiq.results import Results
from dramatiq.results.backends.redis import RedisBackend

from workerpool.core.children import die_with_parent

NAMESPACE = "workerpool-bench-dramatiq"
QUEUE = "workerpool-bench"
ACTOR = "workerpool_bench_run_bash"
READY_KEY = f"{NAMESPACE}:ready"  # a set of the pids of worker processes that run


def run_bash(script: str) -> None:
    """``bash -c SCRIPT`` through ``subprocess``, as every system of figure 9 runs it."""
    subprocess.run(["bash", "-c", script], check=True)


def connect(url: str) -> tuple[RedisBroker, RedisBackend, dramatiq.Actor[[str], None]]:
    """The broker (with the Results middleware on the Redis backend), the backend and the
    actor, as both the workers and the bench's caller use them."""
    # Prefixed result keys (Dramatiq's default is a bare MD5 of them), to keep them apart.
    backend = RedisBackend(url=url, namespace=f"{NAMESPACE}-results",  # type: ignore[no-untyped-call]
                           use_namespace_prefix_keys=True)
    broker = RedisBroker(url=url, namespace=NAMESPACE)  # type: ignore[no-untyped-call]
    broker.add_middleware(Results(backend=backend))  # type: ignore[no-untyped-call]
    declare = dramatiq.actor(actor_name=ACTOR, queue_name=QUEUE, broker=broker,
                             store_results=True, max_retries=0)
    actor: dramatiq.Actor[[str], None] = declare(run_bash)
    return broker, backend, actor


class Ready(Middleware):
    """Tells the bench a worker process consumes: its pid in :data:`READY_KEY`."""

    def __init__(self, url: str) -> None:
        self.url = url

    def after_worker_boot(self, broker: Any, worker: Any) -> None:
        client = redis.Redis.from_url(self.url)
        client.sadd(READY_KEY, os.getpid())
        client.close()


def serve() -> None:
    """Called by Dramatiq's CLI in each worker process: the broker it consumes from."""
    die_with_parent()  # a worker process ends with Dramatiq's main process, as that with the bench
    url = os.environ["WORKERPOOL_REDIS_URL"]
    broker, _, _ = connect(url)
    broker.add_middleware(Ready(url))
    dramatiq.set_broker(broker)
