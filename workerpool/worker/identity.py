"""Who a worker is: its name in its pool, the queue it consumes, and its registration."""

from __future__ import annotations

import os
import socket
import time
import uuid
from dataclasses import dataclass

import redis

from workerpool.core import keys, workers
from workerpool.core.errors import WorkerConflict
from workerpool.core.pools import worker_type
from workerpool.core.settings import Settings
from workerpool.core.syntaxes import available_syntaxes
from workerpool.core.workers import STARTING, Heartbeat, WorkerInfo


@dataclass(frozen=True)
class Identity:
    name: str
    pool: str  # pool slug, or "builtin"
    instance: str

    @property
    def checks_health(self) -> bool:
        """Only pool workers: the built-in worker and target agents have no pool requirements."""
        return self.pool != keys.BUILTIN_POOL and not self.pool.startswith(keys.TARGET_POOL_PREFIX)

    @property
    def queue(self) -> str:
        return keys.queue_of(self.pool)


def register(client: redis.Redis, settings: Settings, pool: str, name: str | None,
             concurrency: int, syntaxes: tuple[str, ...] | None = None) -> Identity:
    """Reserve a worker name (``<type>-worker-NN`` unless given) and write the first heartbeat;
    the worker says it runs *syntaxes* (default: those this machine has)."""
    instance = uuid.uuid4().hex
    info = WorkerInfo(name="", pool=pool, instance=instance, host=socket.gethostname(),
                      pid=os.getpid(), concurrency=concurrency, started_at=time.time(),
                      syntaxes=available_syntaxes() if syntaxes is None else syntaxes)
    beat = Heartbeat(time=time.time(), state=STARTING)
    taken = workers.register(client, info, beat, name, f"{worker_type(pool)}-worker-",
                             settings.heartbeat_ttl)
    if taken is None:
        raise WorkerConflict(f"a worker named {name!r} is already online; pick another --name "
                             "or stop that worker first")
    return Identity(str(taken), pool, instance)
