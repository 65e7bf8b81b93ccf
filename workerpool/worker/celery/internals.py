"""The private parts of Celery and kombu that workerpool relies on, named in one place, and the
start-up check that they are still there.

- kombu's Redis ``Channel._in_poll``: the connection a BRPOP is in flight on, else False. The
  queue gate waits for it to clear before it publishes Unhealthy: cancelling a queue stops the
  next BRPOP, not the one Redis already holds.
- kombu's Redis ``Channel._create_client``: builds a redis-py client, by default for every
  publish and ack; ``transport.Channel`` overrides it to keep one per channel.
- kombu's virtual ``Transport._callbacks`` (queue -> the channel's delivery of a raw entry)
  and Redis ``Channel._brpop_read`` (pops and decodes an entry): ``transport.Channel`` wraps
  the one and overrides the other so a worker checks its step queue's entries first
  (``poison.py``).
- kombu's Redis ``Channel._q_for_pri`` (the list of a queue that holds a priority; BRPOP
  asks a queue's lists in ``priority_steps`` order): ``transport.Channel`` overrides it to
  name a step queue's ``<queue>:high`` and ``<queue>:low`` lists, which kombu then delivers
  from as if popped from the queue itself (``deliver_lists_as``).
- kombu's Redis ``SentinelChannel._sentinel_managed_pool`` (its pools, on the master the
  sentinels name): ``transport.SentinelChannel`` mixes it into ``transport.Channel``.
- Celery's ``Consumer._flush_events`` (publishes the buffered task events) and
  ``Consumer.on_send_event_buffered`` (called when an event is buffered):
  ``consumer.BatchingConsumer`` overrides the hook to publish once per 50 ms.

If one of them is renamed, a worker would silently lose what it gave (a fixed race would
reopen); ``check`` makes it refuse to start instead, naming what is missing.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from celery.worker.consumer import Consumer
from kombu.transport import redis as kombu_redis
from kombu.transport import virtual

from workerpool.core.errors import Incompatible

REQUIRED: tuple[tuple[type, str], ...] = (
    (kombu_redis.Channel, "_in_poll"),
    (kombu_redis.Channel, "_create_client"),
    (kombu_redis.Channel, "_brpop_read"),
    (kombu_redis.Channel, "_q_for_pri"),
    (kombu_redis.Channel, "priority_steps"),
    (kombu_redis.SentinelChannel, "_sentinel_managed_pool"),
    (virtual.Transport, "_deliver"),
    (virtual.Transport, "_callbacks"),
    (Consumer, "_flush_events"),
    (Consumer, "on_send_event_buffered"),
)


def check() -> None:
    """Incompatible (exit 2) naming the first private part the installed Celery or kombu lacks."""
    for owner, name in REQUIRED:
        if not hasattr(owner, name):
            module = owner.__module__.split(".")[0]
            raise Incompatible(
                f"the installed {module} has no {owner.__module__}.{owner.__name__}.{name}, "
                "which workerpool's worker relies on; install the celery and kombu versions "
                "pyproject.toml allows (pip install -e .)")


def brpop_in_flight(channel: Any) -> bool:
    """Whether *channel* (kombu's Redis channel) has a BRPOP in flight."""
    return bool(channel._in_poll)


def flush_events(consumer: Any) -> None:
    """Publish the task events *consumer* (Celery's) has buffered, now."""
    consumer._flush_events()


def wrap_delivery(channel: Any, queue: str, guard: Callable[[Callable[[Any], Any], Any], None]
                  ) -> None:
    """Make *channel*'s delivery of *queue*'s raw entries go through *guard* first."""
    callbacks = channel.connection._callbacks
    deliver = callbacks[queue]
    if not getattr(deliver, "guarded", False):  # kombu may consume a queue again
        def guarded(raw: Any) -> None:
            guard(deliver, raw)
        guarded.guarded = True  # type: ignore[attr-defined]
        callbacks[queue] = guarded


def deliver_lists_as(channel: Any, queue: str, lists: tuple[str, ...]) -> None:
    """Make an entry BRPOP took from any of *lists* reach *queue*'s consumer: kombu delivers
    it by the name of the list it came from, less a suffix of its own separator only."""
    callbacks = channel.connection._callbacks
    for name in lists:
        if name != queue:
            callbacks[name] = callbacks[queue]
