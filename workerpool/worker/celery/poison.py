"""What a worker does with an entry on its step queue that is not a step, or that crashes
Celery: it is dropped or dead-lettered, never taken again and again.

- A malformed entry (``messages.problem``: not JSON, a foreign task, a body of the wrong
  shape) is dropped before kombu or Celery unpack it: logged once with its queue and why, and
  counted in the pool's ``dropped`` key (``status --json``, the metrics). It was popped by
  BRPOP and never entered kombu's unacknowledged set, so it is gone.
- An entry that passes the check and still makes Celery's consumer raise is a crash. The
  consumer restarts and kombu gives the entry back to the queue; the crash is counted by
  delivery tag in the pool's ``crashes`` hash, and the second crash of the same delivery moves
  it to the pool's dead letters (``core/deadletters.py``) and acks it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

import redis

from workerpool.core import deadletters, keys, messages

log = logging.getLogger("workerpool.worker")

CRASHES_BEFORE_DEAD = 2
CRASHES_TTL = 86_400  # seconds a crash count is kept: a crashing entry comes back in seconds

Deliver = Callable[[Any], Any]


class MessageGuard:
    """Checks the entries a worker's channel takes from *pool*'s queue."""

    def __init__(self, client: Any, pool: str, worker: str, ack: Callable[[str], None],
                 passing: tuple[type[BaseException], ...]) -> None:
        self.client, self.pool, self.worker, self.ack = client, pool, worker, ack
        self.queue = keys.queue_of(pool)
        self.passing = passing  # connection errors: Celery reconnects, nothing was wrong

    def deliver(self, deliver: Deliver, raw: Any) -> None:
        """Hand *raw* to kombu and Celery (*deliver*) if it is a step message; else drop it."""
        why = messages.problem(raw)
        if why is not None:
            self.drop(why, raw)
            return
        try:
            deliver(raw)
        except self.passing:
            raise
        except Exception as exc:
            self._count_or_bury(raw, exc)
            raise  # Celery's consumer restarts: its state may hold the half-received task

    def drop(self, why: str, raw: Any = None) -> None:
        """Log and count a malformed entry; it was never acked-pending, so it is gone."""
        log.warning("dropped a malformed message from queue %s%s: %s; it was removed and will "
                    "not come back", self.queue, _which(raw), why)
        try:
            self.client.incr(keys.dropped(self.pool))
        except redis.RedisError as exc:
            log.warning("could not count the dropped message: %s", exc)

    def _count_or_bury(self, raw: dict[str, Any], exc: Exception) -> None:
        """Count a crash of the delivery; at its second, dead-letter and ack it, so the
        restarted consumer does not take it again."""
        tag = str(raw["properties"]["delivery_tag"])
        reason = f"{type(exc).__name__}: {exc}"[:500]
        try:
            crashes = self._count_crash(tag)
            if crashes < CRASHES_BEFORE_DEAD:
                log.error("message %s from queue %s crashed Celery's consumer (%s); the worker "
                          "restarts it, and a second crash dead-letters the message", tag,
                          self.queue, reason)
                return
            deadletters.add(self.client, self.pool, deadletters.DeadLetter.of(
                tag, self.queue, reason, self.worker, json.dumps(raw)))
            self.client.hdel(keys.crashes(self.pool), tag)
            self.ack(tag)
        except redis.RedisError as error:
            log.warning("could not count the crash of message %s: %s", tag, error)
            return
        log.error("dead-lettered message %s from queue %s: it crashed Celery's consumer twice "
                  "(%s); see `workerpool dead show %s`", tag, self.queue, reason, tag)

    def _count_crash(self, tag: str) -> int:
        pipe = self.client.pipeline(transaction=False)
        pipe.hincrby(keys.crashes(self.pool), tag, 1)
        pipe.expire(keys.crashes(self.pool), CRASHES_TTL)
        return int(pipe.execute()[0])


def _which(raw: Any) -> str:
    try:
        return f" (task id {str(raw['headers']['id'])[:100]!r})"
    except (TypeError, KeyError):
        return ""
