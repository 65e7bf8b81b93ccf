"""kombu's Redis transport, with one Redis client per channel instead of one per operation,
a prefetch slot that an ack lost with Redis does not keep (``QoS``), and a worker's step
queue guarded against malformed and crashing entries (``poison.MessageGuard``).

Stock kombu builds a new ``redis.Redis`` object for each message it publishes (a task event, a
message to a queue) and for each ack (``conn_or_acquire`` without a client). With redis-py 8
that costs about 50 µs of CPU a time, several times per step, all on the worker's consumer
thread. A ``redis.Redis`` object holds no connection of its own (it checks one out of the
channel's pool per command), so one object per channel and pool serves every thread. A pool
kombu drops (after a fork or a lost connection) gets a new client with the new pool.

Workers and ``Client.run``'s Celery app name it by ``broker_transport``; the URL stays a plain
``redis://`` or ``rediss://`` URL. With a ``sentinel://`` URL they name ``SentinelTransport``,
the same channel on kombu's Sentinel-managed connection pools.
"""

from __future__ import annotations

import json
from queue import Empty
from typing import Any

from kombu.transport import redis as kombu_redis
from kombu.transport import virtual

from workerpool.core import keys
from workerpool.worker.celery import internals
from workerpool.worker.celery.poison import MessageGuard

NAME = "workerpool.worker.celery.transport:Transport"
SENTINEL_NAME = "workerpool.worker.celery.transport:SentinelTransport"


class QoS(kombu_redis.QoS):
    """kombu's Redis QoS, which frees a message's prefetch slot even when its ack cannot reach
    Redis.

    Stock kombu forgets an acked message only once Redis has dropped it from the unacked index;
    with Redis down the ack raises first (Celery logs "Couldn't ack") and the message keeps its
    slot. A worker whose every slot is held so stops fetching: it never sends the BRPOP whose
    failure would make it reconnect, and takes nothing more even once Redis is back. The
    message is done with here either way: what Redis still holds of it comes back after the
    visibility timeout, and the claim refuses it, as its step has begun.
    """

    def ack(self, delivery_tag: Any) -> None:
        try:
            super().ack(delivery_tag)
        finally:
            virtual.QoS.ack(self, delivery_tag)  # forget it here (again, if Redis answered)

    def reject(self, delivery_tag: Any, requeue: bool = False) -> None:
        try:
            super().reject(delivery_tag, requeue)
        finally:
            virtual.QoS.ack(self, delivery_tag)


class Channel(kombu_redis.Channel):
    """kombu's Redis channel with one client, and, on a worker (transport options
    ``step_pool`` and ``step_worker``), its step queue's entries checked before delivery."""

    QoS = QoS
    from_transport_options = (*kombu_redis.Channel.from_transport_options, "step_pool",
                              "step_worker")
    step_pool: str | None = None
    step_worker = ""
    _shared_client: Any = None
    _guard: MessageGuard | None = None

    def basic_consume(self, queue: str, *args: Any, **kwargs: Any) -> Any:
        result = super().basic_consume(queue, *args, **kwargs)
        if self.step_pool is not None and queue == keys.queue_of(self.step_pool):
            internals.wrap_delivery(self, queue, self.guard().deliver)
        if keys.is_step_queue(queue):
            internals.deliver_lists_as(self, queue, keys.priority_lists(queue))
        return result

    def _q_for_pri(self, queue: str, pri: int) -> str:
        """A step queue's list for kombu's priority number *pri* (``keys.priority_list``:
        ``<queue>:high``, the queue itself, ``<queue>:low``). kombu's BRPOP asks them in
        ``priority_steps`` order, and a message it restores goes back to the list of its
        priority. Any other queue (a remote-control mailbox, a reply queue) is its one list,
        as the credentials name it: kombu then asks it once per step, which BRPOP allows."""
        if keys.is_step_queue(queue):
            return keys.priority_list(queue, keys.priority_of_number(self.priority(pri)))
        return queue

    def _brpop_read(self, **options: Any) -> Any:
        try:
            return super()._brpop_read(**options)  # type: ignore[misc]
        except json.JSONDecodeError as exc:  # kombu's decode of the entry it popped
            if self.step_pool is None:
                raise
            self.guard().drop(f"it is not JSON ({exc})")
            raise Empty() from None

    def guard(self) -> MessageGuard:
        if self._guard is None:
            assert self.step_pool is not None
            self._guard = MessageGuard(self.client, self.step_pool, self.step_worker,
                                       self.qos.ack, tuple(self.connection.connection_errors))
        return self._guard

    def _create_client(self, asynchronous: bool = False) -> Any:
        if asynchronous:  # the event loop's own client (BRPOP): kombu already keeps one
            return super()._create_client(asynchronous=True)  # type: ignore[misc]
        pool = self.pool
        client = self._shared_client
        if client is None or client.connection_pool is not pool:
            client = self._shared_client = super()._create_client()  # type: ignore[misc]
        return client


class Transport(kombu_redis.Transport):
    Channel = Channel


class SentinelChannel(Channel, kombu_redis.SentinelChannel):
    """``Channel`` whose connection pools are kombu's Sentinel-managed ones (transport option
    ``master_name``): each new connection goes to the master the sentinels name, so the
    channel follows a failover when kombu reconnects."""

    from_transport_options = tuple(dict.fromkeys(
        (*Channel.from_transport_options, *kombu_redis.SentinelChannel.from_transport_options)))


class SentinelTransport(kombu_redis.SentinelTransport):
    Channel = SentinelChannel
