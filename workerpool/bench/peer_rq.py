"""Figure 9's RQ peer: one default RQ ``Worker`` (it forks a work horse for every job).

Run as ``python -m workerpool.bench.peer_rq URL NAME``; the bench starts four of them on its
Redis. The job is :func:`run_bash`, which the worker imports by name from this module. RQ keeps
its keys under its own ``rq:`` prefix, apart from workerpool's, Celery's and Dramatiq's.
"""

from __future__ import annotations

import subprocess
import sys

import redis
from rq import Queue, Worker

QUEUE = "workerpool-bench"


def run_bash(script: str) -> None:
    """``bash -c SCRIPT`` through ``subprocess``, as every system of figure 9 runs it."""
    subprocess.run(["bash", "-c", script], check=True)


def connect(url: str) -> redis.Redis:
    """RQ stores pickled bytes: its connection must not decode replies."""
    return redis.Redis.from_url(url)


def serve(url: str, name: str) -> int:
    connection = connect(url)
    worker = Worker([Queue(QUEUE, connection=connection)], connection=connection, name=name)
    # WARNING, as the Celery baseline's workers log: RQ's default (INFO) writes two lines a job.
    worker.work(logging_level="WARNING")
    return 0


if __name__ == "__main__":
    sys.exit(serve(sys.argv[1], sys.argv[2]))
