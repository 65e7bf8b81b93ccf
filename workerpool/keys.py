"""Every Redis key workerpool uses, in one place.

Layout (``P`` is ``workerpool:``)::

    P pools                   hash   slug -> pool JSON {name, slug, description}
    P default-pool            string slug of the default pool
    P builtin:disabled        string present while the built-in worker is disabled
    P workers                 hash   worker name -> worker JSON {name, pool, instance, ...}
    P hb:<instance>           string heartbeat JSON {time, state, running, reason}, expiring
    P step:<id>               hash   step record: spec, state, pool, queue, worker, times
    P step:<id>:log           stream log entries {t, s, x} (time, stream, text) and one final {end}
    P pending                 zset   step id -> lease deadline (steps in state Queued)
    P running                 zset   step id -> start time (steps in state Running; their leases)
    P control:<instance>      pubsub cancel requests for the steps a worker instance runs
    workerpool.pool.<slug>    list   the pool's Celery queue (kombu's Redis layout)
    workerpool.builtin        list   the built-in worker's Celery queue
"""

from __future__ import annotations

PREFIX = "workerpool:"
POOLS = PREFIX + "pools"
DEFAULT_POOL = PREFIX + "default-pool"
BUILTIN_DISABLED = PREFIX + "builtin:disabled"
WORKERS = PREFIX + "workers"
PENDING = PREFIX + "pending"
RUNNING = PREFIX + "running"

BUILTIN_QUEUE = "workerpool.builtin"
BUILTIN_POOL = "builtin"
POOL_QUEUE_PREFIX = "workerpool.pool."


def pool_queue(slug: str) -> str:
    return POOL_QUEUE_PREFIX + slug


def heartbeat(instance: str) -> str:
    return f"{PREFIX}hb:{instance}"


def step(step_id: str) -> str:
    return f"{PREFIX}step:{step_id}"


def step_log(step_id: str) -> str:
    return f"{PREFIX}step:{step_id}:log"


def control(instance: str) -> str:
    return f"{PREFIX}control:{instance}"
