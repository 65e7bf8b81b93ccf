"""kombu's Redis transport, with one Redis client per channel instead of one per operation,
and a prefetch slot that an ack lost with Redis does not keep (``QoS``).

Stock kombu builds a new ``redis.Redis`` object for each message it publishes (a task event, a
message to a queue) and for each ack (``conn_or_acquire`` without a client). With redis-py 8
that costs about 50 µs of CPU a time, several times per step, all on the worker's consumer
thread. A ``redis.Redis`` object holds no connection of its own (it checks one out of the
channel's pool per command), so one object per channel and pool serves every thread. A pool
kombu drops (after a fork or a lost connection) gets a new client with the new pool.

Workers and ``Client.run``'s Celery app name it by ``broker_transport``; the URL stays a plain
``redis://`` or ``rediss://`` URL.
"""

from __future__ import annotations

from typing import Any

from kombu.transport import redis as kombu_redis
from kombu.transport import virtual

NAME = "workerpool.worker.celery.transport:Transport"


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
    QoS = QoS
    _shared_client: Any = None

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
