"""A pool's dead letters: messages that crashed Celery's consumer twice, kept for a person.

They live in ``workerpool:dead:<pool>`` (``keys.dead``), newest first, at most
``MAX_DEAD_LETTERS`` of them; ``workerpool dead list|show|drop`` reads and drops them.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass

import redis

from workerpool.core import keys
from workerpool.core.errors import Refused

MAX_DEAD_LETTERS = 1000


class UnknownDeadLetter(Refused):
    """No dead letter of that pool has that delivery tag."""


@dataclass(frozen=True)
class DeadLetter:
    tag: str  # the message's delivery tag
    queue: str
    reason: str
    worker: str
    at: float
    message: str  # the entry as it was on the queue (kombu's JSON)

    @classmethod
    def of(cls, tag: str, queue: str, reason: str, worker: str, message: str) -> DeadLetter:
        return cls(tag, queue, reason, worker, time.time(), message)

    def to_json(self) -> dict[str, object]:
        return asdict(self)


def add(client: redis.Redis, pool: str, letter: DeadLetter) -> None:
    pipe = client.pipeline(transaction=False)
    pipe.lpush(keys.dead(pool), json.dumps(letter.to_json()))
    pipe.ltrim(keys.dead(pool), 0, MAX_DEAD_LETTERS - 1)
    pipe.execute()


def read(client: redis.Redis, pool: str) -> list[DeadLetter]:
    """The pool's dead letters, newest first (entries that are not one are skipped)."""
    return [letter for _, letter in _entries(client, pool)]


def find(client: redis.Redis, pool: str, tag: str) -> DeadLetter:
    return _entry(client, pool, tag)[1]


def drop(client: redis.Redis, pool: str, tag: str | None) -> int:
    """Remove the dead letter *tag* (every one if None); how many were removed."""
    if tag is None:
        pipe = client.pipeline()
        pipe.llen(keys.dead(pool))
        pipe.delete(keys.dead(pool))
        return int(pipe.execute()[0])
    raw, _ = _entry(client, pool, tag)
    return int(client.lrem(keys.dead(pool), 0, raw))


def _entry(client: redis.Redis, pool: str, tag: str) -> tuple[str, DeadLetter]:
    for raw, letter in _entries(client, pool):
        if letter.tag == tag:
            return raw, letter
    raise UnknownDeadLetter(f"pool {pool!r} has no dead letter {tag!r}; "
                            "`workerpool dead list` shows them")


def _entries(client: redis.Redis, pool: str) -> list[tuple[str, DeadLetter]]:
    found: list[tuple[str, DeadLetter]] = []
    for raw in client.lrange(keys.dead(pool), 0, -1):
        try:
            found.append((str(raw), DeadLetter(**json.loads(raw))))
        except (ValueError, TypeError):
            continue
    return found
