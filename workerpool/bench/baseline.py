"""The bench's baseline: a plain Celery task that runs bash through ``subprocess``.

Its app is ``make_app`` (JSON, late ack, no prefetch) on kombu's stock Redis transport, plus the
Redis result backend, so callers can wait for a result; its worker is started exactly like a
workerpool worker (threads pool, no mingle, no gossip). Run as ``python -m
workerpool.bench.baseline URL CONCURRENCY NAME [QUEUE [tuned]]``; ``tuned`` gives the same
task workerpool's two Celery-level changes (its transport and its event batching), to show
how much of a comparison they account for.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import warnings
from typing import Any

from celery import Celery
from celery.exceptions import SecurityWarning
from celery.signals import worker_ready

from workerpool.core.connection import connect
from workerpool.worker.celery.app import make_app
from workerpool.worker.celery.consumer import batch_events

QUEUE = "workerpool.bench.baseline"
QUEUE_B = "workerpool.bench.baseline-b"  # a second queue, for the isolation comparison
QUEUE_TUNED = "workerpool.bench.baseline-tuned"  # the tuned baseline's workers consume this
TASK_NAME = "workerpool.bench.run_bash"
# Set by each baseline worker once it consumes; the bench's database is flushed afterwards.
READY_PREFIX = "workerpool:bench:baseline-ready:"
STAMP_SCRIPT = "echo $EPOCHREALTIME"


def ready_key(name: str) -> str:
    return READY_PREFIX + name


def run_bash(script: str, capture: bool) -> str | None:
    """``bash -c SCRIPT``; with *capture*, its output (as a workerpool step logs it)."""
    done = subprocess.run(["bash", "-c", script], check=True, capture_output=capture,
                          text=True)
    return done.stdout if capture else None


def make_baseline_app(url: str, tuned: bool = False) -> Celery:
    """Plain Celery: kombu's stock Redis transport (*tuned*: workerpool's)."""
    app = make_app(url) if tuned else make_app(url, transport=None)
    app.conf.update(result_backend=url, task_ignore_result=False, result_expires=3600)
    app.task(name=TASK_NAME, acks_late=True)(run_bash)
    return app


def serve(url: str, concurrency: int, name: str, queue: str = QUEUE, tuned: bool = False) -> int:
    app = make_baseline_app(url, tuned)
    if tuned:
        batch_events(app)

    def on_ready(**_: Any) -> None:
        connect(url).set(ready_key(name), os.getpid(), ex=3600)

    worker_ready.connect(on_ready, weak=False)
    warnings.filterwarnings("ignore", category=SecurityWarning)
    worker = app.Worker(hostname=f"{name}@{socket.gethostname()}", queues=[queue],
                        concurrency=concurrency, pool_cls="threads", without_mingle=True,
                        without_gossip=True, loglevel="WARNING", quiet=True, no_color=True)
    worker.start()
    return int(worker.exitcode or 0)


if __name__ == "__main__":
    sys.exit(serve(sys.argv[1], int(sys.argv[2]), sys.argv[3],
                   sys.argv[4] if len(sys.argv) > 4 else QUEUE, sys.argv[5:6] == ["tuned"]))
